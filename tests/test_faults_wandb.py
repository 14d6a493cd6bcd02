"""W&B unreachable: online mode against an address where nothing listens. The daemon does not
hang beyond its timeouts, does not crash or spin, keeps every event in the store as not yet
logged, and once W&B is back every step lands exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import BridgeProcess, wait_until
from tests.test_e2e import assert_history_matches, expected_rows
from tests.webhook_receiver import free_port

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

INIT_TIMEOUT = 3.0
SHUTDOWN_TIMEOUT = 10.0
JOBS = ["ftjob-done", "ftjob-live"]


def failed_opens(bridge: BridgeProcess) -> list[str]:
    return [
        line["error"]
        for line in bridge.logs()
        if line.get("event") == "job.retry_later" and "did not open" in line.get("error", "")
    ]


def test_wandb_unreachable_at_start_then_back(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [
            JobScenario(id="ftjob-done", n_steps=8, created_offset=-3600),
            JobScenario(id="ftjob-live", n_steps=20, validate_seconds=0, queue_seconds=0),
        ],
        time_scale=5,
    )
    bridge = bridge_process(
        emulator,
        WANDB_MODE="online",
        WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        WANDB_API_KEY="f" * 40,
        FTBRIDGE_WANDB_INIT_TIMEOUT=str(INIT_TIMEOUT),
        FTBRIDGE_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        # A job that keeps failing is a warning once, then debug: count every attempt.
        FTBRIDGE_LOG_LEVEL="debug",
    )
    proc = bridge.start("run")
    started = time.monotonic()

    def every_event_stored() -> bool:
        if not bridge.started():
            return False
        store = bridge.store()
        try:
            live = store.get_job("ftjob-live")
            return (live is not None and live.status == "succeeded") and all(
                sum(e.step is not None for e in store.events(job_id))
                == len(expected_rows(emulator, job_id))
                for job_id in JOBS
            )
        finally:
            store.close()

    wait_until(lambda: len(failed_opens(bridge)) >= 4, 60, "several attempts to open runs")
    # The live job ends after 4 s; its events are stored although W&B cannot take them.
    wait_until(every_event_stored, 60, "every event stored")
    assert proc.poll() is None, "still up: no crash, no crash loop"

    store = bridge.store()
    try:
        for job_id in JOBS:
            state = store.get_job(job_id)
            assert state is not None and not state.synced and state.run_state != "open"
            events = [e for e in store.events(job_id) if e.step is not None]
            # The cursor stays put: nothing is "sent", let alone "durable".
            assert events and {e.state for e in events} == {"new"}, job_id
    finally:
        store.close()

    proc.send_signal(signal.SIGTERM)
    try:
        # A cycle may be inside wandb.init (up to FTBRIDGE_WANDB_INIT_TIMEOUT): the exit comes
        # within FTBRIDGE_SHUTDOWN_TIMEOUT (plus the interpreter's own exit).
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {SHUTDOWN_TIMEOUT} s of SIGTERM")
    assert code == 0
    elapsed = time.monotonic() - started

    errors = failed_opens(bridge)
    # The first attempt waits for FTBRIDGE_WANDB_INIT_TIMEOUT; later ones ask W&B first
    # whether it answers at all, and give up at once while it does not.
    assert "CommError" in errors[0], errors
    assert all("CommError" in e or "W&B is unreachable" in e for e in errors), errors
    # Never "run ID ... is in use" (wandb-core keeps the id of a failed init until
    # wandb.teardown()), and no spin: at most one attempt per job and poll interval.
    assert not any("is in use" in e for e in errors), errors
    assert len(errors) <= len(JOBS) * (1 + elapsed / 0.5), (len(errors), elapsed)
    assert "Traceback" not in bridge.raw_log()
    warned = [
        line
        for line in bridge.logs()
        if line.get("event") == "job.retry_later" and line.get("level") == "warning"
    ]
    assert len(warned) <= len(JOBS), "a failing job is a warning once, not every cycle"

    # W&B back. No W&B server exists in the test environment, so "back" is the same state
    # database opened by a bridge writing offline runs: what matters is that the store kept
    # every event as not yet logged, whichever W&B the next attempt reaches.
    for name in ("WANDB_BASE_URL", "WANDB_API_KEY"):
        bridge.env.pop(name)
    bridge.env["WANDB_MODE"] = "offline"
    second = bridge.start("run")
    wait_until(lambda: bridge.all_synced(2), 60, "both jobs synced once W&B is back")
    assert bridge.stop(second) == 0

    for job_id in JOBS:
        merged = read_merged(bridge.wandb_dir, job_id)
        assert_history_matches(merged.history, expected_rows(emulator, job_id))
        assert merged.exit_code == 0
        segments = [read_run(path) for path in find_run_files(bridge.wandb_dir, job_id)]
        steps = [step for segment in segments for step in segment.steps]
        assert len(steps) == len(set(steps)), "every step exactly once"
        # The failed online inits left no folder behind.
        assert len(segments) == 1
    assert not list((bridge.wandb_dir / "wandb").glob("run-*"))
