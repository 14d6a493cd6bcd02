"""Nothing lost, nothing twice, as a W&B server sees it: ``ftbridge run`` online against the W&B
test server (the real SDK and wandb-core talking HTTP to it), with the whole process tree
killed again and again, W&B refusing connections for a minute, W&B restarting, and offline
runs uploaded afterwards by the real ``wandb sync``."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import mapping
from bridge.emulator import Emulator, JobScenario
from bridge.testing import RunRecord, WandbServer
from tests.conftest import BridgeProcess, new_bridge_process, wait_until
from tests.test_e2e import expected_rows, job_of
from tests.wandb_server import wandb_env, wandb_server_fixture
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

__all__ = ["wandb_server_fixture"]

PROJECT = "online"
StartEmulator = Callable[..., Emulator]


def live_jobs() -> list[JobScenario]:
    """Seven jobs training at once, of every ending."""
    jobs = [
        JobScenario(
            id=f"ftjob-live{i}",
            n_steps=14 + 2 * i,
            step_seconds=1.0,
            validate_seconds=1,
            queue_seconds=1 + i % 3,
            finalize_seconds=1,
            with_validation_file=i % 2 == 0,
        )
        for i in range(5)
    ]
    jobs.append(
        JobScenario(
            id="ftjob-fails", n_steps=20, step_seconds=1.0, outcome="failed", fail_at_step=12
        )
    )
    jobs.append(
        JobScenario(
            id="ftjob-cancel", n_steps=20, step_seconds=1.0, outcome="cancelled", cancel_at_step=9
        )
    )
    return jobs


@pytest.fixture
def online_bridge(
    tmp_path: Path, wandb_server: WandbServer
) -> Iterator[Callable[..., BridgeProcess]]:
    made: list[BridgeProcess] = []

    def make(emulator: Emulator, **extra: str) -> BridgeProcess:
        bridge = new_bridge_process(tmp_path, emulator, **extra)
        bridge.env = {
            **{k: v for k, v in bridge.env.items() if not k.startswith("WANDB_")},
            **wandb_env(tmp_path / "home", wandb_server),
            "WANDB_DIR": str(tmp_path),
            "WANDB_PROJECT": PROJECT,
            "WANDB_ENTITY": wandb_server.entity,
            "FTBRIDGE_WANDB_UPLOAD_INTERVAL": "1",
            "FTBRIDGE_WANDB_INIT_TIMEOUT": "20",
            "FTBRIDGE_WANDB_FINISH_TIMEOUT": "30",
            **extra,
        }
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.kill_all()


def assert_server_has_every_step_once(
    server: WandbServer, emulator: Emulator, job_id: str
) -> RunRecord:
    run = server.run(job_id, project=PROJECT)
    assert run is not None, f"{job_id}: no run on the server"
    expected = expected_rows(emulator, job_id)
    steps = run.steps("step")
    assert run.duplicates("step") == [], f"{job_id}: steps logged twice"
    assert run.duplicates("_step") == [], f"{job_id}: W&B steps logged twice"
    assert sorted(steps) == sorted(expected), f"{job_id}: steps missing on the server"
    for row in run.history:
        for key, value in expected[row["step"]].items():
            got = row[key]
            assert got == pytest.approx(value) or (math.isnan(got) and math.isnan(value)), key
    return run


def assert_final(run: RunRecord, job: dict[str, Any]) -> None:
    assert run.summary["status"] == job["status"]
    assert run.exit_code == mapping.exit_code(job["status"])
    assert run.state == ("finished" if job["status"] == "succeeded" else "failed")
    if job["status"] == "succeeded":
        assert run.summary["fine_tuned_model"] == job["fine_tuned_model"]
        assert run.artifact(f"{job['id']}-model") is not None


def test_ten_kills_of_the_whole_process_tree_lose_and_repeat_nothing_on_the_server(
    start_emulator: StartEmulator,
    online_bridge: Callable[..., BridgeProcess],
    wandb_server: WandbServer,
) -> None:
    emulator = start_emulator(live_jobs(), time_scale=2.0)
    # Uploads every 5 s: at each kill, the server lacks rows that the local file may hold.
    bridge = online_bridge(emulator, FTBRIDGE_WANDB_UPLOAD_INTERVAL="5")
    pace = random.Random(10)
    kills = 0
    while kills < 10:
        proc = bridge.start_and_wait("run")
        time.sleep(pace.uniform(1.5, 3.5))
        bridge.kill_tree(proc)
        kills += 1
    final = bridge.start_and_wait("run")
    wait_until(lambda: bridge.all_synced(7), 120, "every job synced after the kills")
    assert bridge.stop(final) == 0
    for scenario in live_jobs():
        assert scenario.id is not None
        run = assert_server_has_every_step_once(wandb_server, emulator, scenario.id)
        assert_final(run, job_of(emulator, scenario.id))
    resumed = [line for line in bridge.logs() if line.get("event") == "run.opened"]
    assert any(line.get("rows_to_resend") for line in resumed), "some rows were sent again"


def test_w_and_b_down_for_a_minute_then_restarting_loses_nothing(
    start_emulator: StartEmulator,
    online_bridge: Callable[..., BridgeProcess],
    wandb_server: WandbServer,
) -> None:
    jobs = [
        JobScenario(id=f"ftjob-out{i}", n_steps=40 + 5 * i, step_seconds=1.0, queue_seconds=i)
        for i in range(3)
    ]
    emulator = start_emulator(jobs, time_scale=1.0)
    bridge = online_bridge(emulator)
    proc = bridge.start_and_wait("run")
    wait_until(lambda: wandb_server.run("ftjob-out0", project=PROJECT) is not None, 60, "a run")
    wandb_server.refuse_connections()
    time.sleep(60)  # the jobs go on training while W&B refuses every connection
    wandb_server.accept_connections()
    time.sleep(5)
    wandb_server.restart()  # data kept
    wait_until(lambda: bridge.all_synced(3), 150, "every job synced once W&B is back")
    assert bridge.stop(proc) == 0
    for scenario in jobs:
        assert scenario.id is not None
        run = assert_server_has_every_step_once(wandb_server, emulator, scenario.id)
        assert_final(run, job_of(emulator, scenario.id))


def test_offline_segments_after_kills_upload_with_one_wandb_sync_call(
    start_emulator: StartEmulator, tmp_path: Path, wandb_server: WandbServer
) -> None:
    emulator = start_emulator(live_jobs()[:4], time_scale=2.0)
    bridge = new_bridge_process(tmp_path, emulator, WANDB_PROJECT=PROJECT)
    try:
        pace = random.Random(3)
        for _ in range(5):
            proc = bridge.start_and_wait("run")
            time.sleep(pace.uniform(1.0, 3.0))
            bridge.kill_tree(proc)
        final = bridge.start_and_wait("run")
        wait_until(lambda: bridge.all_synced(4), 120, "every job synced after the kills")
        assert bridge.stop(final) == 0
    finally:
        bridge.kill_all()
    folders = sorted(str(p) for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) > 4, "the kills left several segments"
    env = wandb_env(tmp_path / "home", wandb_server)
    synced = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "sync", "-p", PROJECT, *folders],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert "error getting next record" not in synced.stdout + synced.stderr
    for scenario in live_jobs()[:4]:
        assert scenario.id is not None
        run = assert_server_has_every_step_once(wandb_server, emulator, scenario.id)
        assert_final(run, job_of(emulator, scenario.id))


def test_a_storm_of_api_errors_then_sigterm_leaves_every_run_final(
    start_emulator: StartEmulator,
    online_bridge: Callable[..., BridgeProcess],
    wandb_server: WandbServer,
) -> None:
    """The API answers 25% of requests with 429 while the jobs end; SIGTERM comes right after
    the last one turns terminal. Each run is final when its notification goes out (or it was
    closed as preempted and is finalized at the next start)."""
    jobs = [
        JobScenario(id=f"ftjob-storm{i}", n_steps=8 + 3 * i, step_seconds=1.0, queue_seconds=0)
        for i in range(3)
    ]
    # The jobs start once the bridge is up: one seen first as already succeeded would be a
    # backfill, which notifies nobody.
    emulator = start_emulator([], time_scale=2.0)
    with Receiver([SECRET]) as receiver:
        bridge = online_bridge(
            emulator,
            FTBRIDGE_WEBHOOK_URLS=receiver.url,
            FTBRIDGE_WEBHOOK_SECRET=SECRET,
            FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
        )
        emulator.set_faults(error_rate=0.25, status=429)
        proc = bridge.start_and_wait("run")
        for scenario in jobs:
            emulator.add_job(scenario)

        def all_terminal() -> bool:
            store = bridge.store()
            try:
                states = store.all_jobs()
            finally:
                store.close()
            return len(states) == 3 and all(mapping.is_terminal(s.status) for s in states)

        # What the server shows of each job's run when its succeeded webhook arrives.
        seen_at_delivery: dict[str, RunRecord | None] = {}

        def ends() -> list[dict[str, Any]]:
            bodies = [json.loads(d.body) for d in list(receiver.received)]
            found = [b for b in bodies if b["type"] == "fine_tuning.job.succeeded"]
            for body in found:
                job_id = body["data"]["id"]
                if job_id not in seen_at_delivery:
                    seen_at_delivery[job_id] = wandb_server.run(job_id, project=PROJECT)
            return found

        def watched(predicate: Callable[[], bool]) -> Callable[[], bool]:
            def check() -> bool:
                ends()
                return predicate()

            return check

        wait_until(watched(all_terminal), 90, "every job terminal in the store")
        assert bridge.stop(proc, signal.SIGTERM) == 0
        emulator.set_faults()
        again = bridge.start_and_wait("run")
        wait_until(watched(lambda: bridge.all_synced(3)), 60, "every job synced again")
        wait_until(lambda: len(ends()) >= 3, 60, "every succeeded webhook")
        assert bridge.stop(again) == 0
    delivered = ends()
    assert sorted(e["data"]["id"] for e in delivered) == sorted(j.id for j in jobs if j.id)
    assert all(e["data"]["run_final"] is True for e in delivered)
    for job_id, run in seen_at_delivery.items():
        assert run is not None and run.state == "finished", f"{job_id} not final at its webhook"
    for scenario in jobs:
        assert scenario.id is not None
        run = assert_server_has_every_step_once(wandb_server, emulator, scenario.id)
        assert_final(run, job_of(emulator, scenario.id))


def test_an_online_backfill_shared_among_writers_is_all_on_the_server_when_sync_exits(
    start_emulator: StartEmulator,
    online_bridge: Callable[..., BridgeProcess],
    wandb_server: WandbServer,
) -> None:
    """``ftbridge sync`` and its writer processes exit without the interpreter's
    finalization once every run is finished: what W&B's server holds then is complete."""
    jobs = [
        JobScenario(id=f"ftjob-back{i}", n_steps=12, created_offset=-7200 - i * 60)
        for i in range(20)
    ]
    emulator = start_emulator(jobs, time_scale=1.0)
    bridge = online_bridge(emulator, FTBRIDGE_SYNC_WRITERS="2")
    result = bridge.run("sync", "--all", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"sync.writers"' in result.stdout + result.stderr
    for scenario in jobs:
        assert scenario.id is not None
        run = assert_server_has_every_step_once(wandb_server, emulator, scenario.id)
        assert_final(run, job_of(emulator, scenario.id))
