"""End to end: the emulator, ``ftbridge`` as a subprocess, offline W&B read back from disk."""

from __future__ import annotations

import json
import math
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from bridge import mapping
from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import API_KEY, BridgeProcess, wait_until

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

NATIVE = [{"type": "wandb", "wandb": {"project": "openai-own", "tags": ["native"]}}]


def expected_rows(emulator: Emulator, job_id: str) -> dict[int, dict[str, float]]:
    """The metrics the API gives for a job, read with the real SDK: step -> values."""
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    rows: dict[int, dict[str, float]] = {}
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        row = mapping.metric_row(event.model_dump())
        if row is not None:
            rows[row.step] = row.values
    return rows


def job_of(emulator: Emulator, job_id: str) -> dict[str, Any]:
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    return client.fine_tuning.jobs.retrieve(job_id).model_dump()


def assert_history_matches(
    history: list[dict[str, Any]], expected: dict[int, dict[str, float]]
) -> None:
    steps = [row["_step"] for row in history]
    assert steps == sorted(expected), "every step once, in order"
    for row in history:
        want = expected[row["_step"]]
        assert row["step"] == row["_step"]
        for key, value in want.items():
            got = row[key]
            assert got == pytest.approx(value) or (math.isnan(got) and math.isnan(value)), key


def test_daemon_mirrors_every_job_onto_its_run(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [
            JobScenario(id="ftjob-done", n_steps=12, created_offset=-3600, suffix="old"),
            JobScenario(
                id="ftjob-ok",
                n_steps=40,
                with_validation_file=True,
                seed=3,
                step_seconds=0.5,
                metadata={"team": "nlp"},
            ),
            JobScenario(
                id="ftjob-bad",
                n_steps=30,
                step_seconds=0.5,
                outcome="failed",
                fail_at_step=10,
                error_code="quota",
                error_message="out of credits",
            ),
            JobScenario(
                id="ftjob-stop", n_steps=30, step_seconds=0.5, outcome="cancelled", cancel_at_step=8
            ),
            JobScenario(id="ftjob-native", n_steps=6, step_seconds=0.5, integrations=NATIVE),
        ],
        time_scale=8,
    )
    bridge = bridge_process(emulator)
    proc = bridge.start("run")
    wait_until(lambda: bridge.all_synced(5), 90, "every job synced")
    assert bridge.stop(proc) == 0

    ok = read_merged(bridge.wandb_dir, "ftjob-ok")
    job = job_of(emulator, "ftjob-ok")
    assert ok.run_id == "ftjob-ok" and ok.display_name == "ftjob-ok"
    assert ok.project == "e2e"
    assert set(ok.tags) >= {"openai/fine-tuning", "openai/ftjob-ok", f"openai/{job['model']}"}
    assert ok.config["model"] == job["model"]
    assert ok.config["training_file"] == job["training_file"]
    assert ok.config["validation_file"] == job["validation_file"]
    assert ok.config["seed"] == 3
    assert ok.config["metadata"] == {"team": "nlp"}
    assert isinstance(ok.config["hyperparameters"]["n_epochs"], int), "auto became a number"
    assert ok.config["method"]["type"] == "supervised"
    assert_history_matches(ok.history, expected_rows(emulator, "ftjob-ok"))
    assert len(ok.history) == 40
    assert {"valid_loss", "full_valid_loss"} <= set().union(*ok.history)
    assert ok.summary["status"] == "succeeded"
    assert ok.summary["fine_tuned_model"] == job["fine_tuned_model"]
    assert ok.summary["trained_tokens"] == job["trained_tokens"]
    assert ok.summary["finished_at"] == job["finished_at"]
    assert ok.exit_code == 0
    assert {"name": "*", "step_metric": "step"} in [
        {"name": m["name"], "step_metric": m["step_metric"]} for m in ok.metrics
    ]

    bad = read_merged(bridge.wandb_dir, "ftjob-bad")
    assert bad.exit_code == 1
    assert bad.summary["status"] == "failed"
    assert bad.summary["error_code"] == "quota"
    assert bad.summary["error_message"] == "out of credits"
    assert_history_matches(bad.history, expected_rows(emulator, "ftjob-bad"))

    stop = read_merged(bridge.wandb_dir, "ftjob-stop")
    assert stop.exit_code not in (None, 0)
    assert stop.summary["status"] == "cancelled"

    done = read_merged(bridge.wandb_dir, "ftjob-done")
    assert done.exit_code == 0 and len(done.history) == 12
    assert done.config["suffix"] == "old"

    assert find_run_files(bridge.wandb_dir, "ftjob-native") == [], "left to OpenAI"
    cycles = [line for line in bridge.logs() if line.get("event") == "cycle"]
    assert cycles and {"jobs_seen", "active", "events", "lag_s"} <= set(cycles[-1])


def test_sync_all_backfills_finished_jobs_and_exits(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [JobScenario(n_steps=15, created_offset=-7200 - i * 60) for i in range(4)]
        + [JobScenario(id="ftjob-f", n_steps=15, created_offset=-9000, outcome="failed")],
        time_scale=1,
    )
    bridge = bridge_process(emulator)
    result = bridge.run("sync", "--all")
    assert result.returncode == 0, result.stderr
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    ids = [job.id for job in client.fine_tuning.jobs.list(limit=100)]
    assert len(ids) == 5
    for job_id in ids:
        run = read_merged(bridge.wandb_dir, job_id)
        assert_history_matches(run.history, expected_rows(emulator, job_id))
        assert run.exit_code == (1 if job_id == "ftjob-f" else 0)
    again = bridge.run("sync", "--all")
    assert again.returncode == 0
    assert all(len(find_run_files(bridge.wandb_dir, i)) == 1 for i in ids), "nothing redone"


def test_sync_named_jobs_and_an_unknown_one(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [JobScenario(id=f"ftjob-{i}", n_steps=5, created_offset=-3600) for i in range(3)]
    )
    bridge = bridge_process(emulator)
    result = bridge.run("sync", "ftjob-1", "ftjob-nope")
    assert result.returncode == 1
    assert "ftjob-nope" in result.stderr and "Traceback" not in result.stderr
    assert len(read_merged(bridge.wandb_dir, "ftjob-1").history) == 5
    assert find_run_files(bridge.wandb_dir, "ftjob-0") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_restart_mid_job_loses_and_repeats_nothing(
    start_emulator: StartEmulator, bridge_process: MakeBridge, sig: int
) -> None:
    emulator = start_emulator(
        [
            JobScenario(
                id="ftjob-long", n_steps=120, step_seconds=1.0, validate_seconds=0, queue_seconds=0
            )
        ],
        time_scale=10,
    )
    bridge = bridge_process(emulator)
    proc = bridge.start("run")

    def some_steps_sent() -> bool:
        if not bridge.started():
            return False
        store = bridge.store()
        try:
            return sum(e.state != "new" for e in store.events("ftjob-long") if e.step) >= 30
        finally:
            store.close()

    wait_until(some_steps_sent, 60, "30 steps handed to W&B")
    code = bridge.stop(proc, sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    second = bridge.start("run")
    wait_until(lambda: bridge.all_synced(1), 90, "the job synced after the restart")
    assert bridge.stop(second) == 0

    recovered = [line for line in bridge.logs() if line.get("event") == "run.recovered"]
    if sig == signal.SIGKILL:
        # The first segment's file is read back; whatever it lacks is sent again.
        assert len(recovered) == 1
        assert recovered[0]["steps_on_disk"] + recovered[0]["rows_to_resend"] >= 30
    else:
        assert recovered == [], "a graceful stop leaves nothing to repair"
    segments = [read_run(path) for path in find_run_files(bridge.wandb_dir, "ftjob-long")]
    # A segment killed before its run record reached the file holds nothing and is removed.
    emptied = sig == signal.SIGKILL and recovered[0]["steps_on_disk"] == 0
    assert len(segments) >= (1 if emptied else 2)
    all_steps = [step for segment in segments for step in segment.steps]
    assert len(all_steps) == len(set(all_steps)), "no step written twice"
    merged = read_merged(bridge.wandb_dir, "ftjob-long")
    assert_history_matches(merged.history, expected_rows(emulator, "ftjob-long"))
    assert len(merged.history) == 120
    assert merged.exit_code == 0


def test_sync_shows_a_progress_bar_on_a_terminal(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator([JobScenario(n_steps=3, created_offset=-3600) for _ in range(3)])
    bridge = bridge_process(emulator)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "sync", "--all"],
        env={**bridge.env, "COLUMNS": "120"},
        cwd=bridge.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    assert b"syncing" in screen and b"3/3" in screen, screen[-500:]


def test_sync_off_a_terminal_logs_a_line_per_job(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator([JobScenario(n_steps=3, created_offset=-3600) for _ in range(3)])
    bridge = bridge_process(emulator)
    result = bridge.run("sync", "--all")
    assert result.returncode == 0
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert [line["n"] for line in lines if line["event"] == "sync.job"] == [1, 2, 3]


def test_demo_runs_to_the_end_and_prints_a_sync_command_that_works(tmp_path: Path) -> None:
    """On a terminal: the live view of the jobs of three providers, logs in a file, then the
    summary and a ``wandb sync`` command that works."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "demo", "--dir", "d", "--time-scale", "30"],
        cwd=tmp_path,
        env={**env, "COLUMNS": "160", "LINES": "40"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    raw = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:] if proc.stderr else ""
    os.close(leader)
    screen = re.sub(
        r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", raw.decode("utf-8", "replace")
    )
    for job_id in ("ft-demo-llama", "fw-sft.emulator.demo-qwen"):
        assert job_id in screen, "every provider's job in the live view and the summary"
    assert "succeeded" in screen
    assert "left to OpenAI" in screen
    log = (tmp_path / "d" / "ftbridge.log").read_text()
    assert '"cycle"' in log or "cycle" in log, "the logs went to the file the demo named"
    command = screen.strip().splitlines()[-1].strip()
    assert command.startswith("wandb login && wandb sync ")
    paths = sorted(tmp_path.glob("d/wandb/offline-run-*"))
    assert len(paths) == 9, "every demo job but the one with its own W&B integration"
    dry = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, paths)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dry.returncode == 0 and "Would sync 9 run(s)" in dry.stdout + dry.stderr
