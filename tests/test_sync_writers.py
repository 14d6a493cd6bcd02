"""A backfill shared out among writer processes (``bridge.writers``): every run complete and
written once, and a kill of the sync kills its writers too, repaired by the next sync."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.ports import JobState
from bridge.wandbfile import find_run_files, read_merged
from bridge.writers import share_out, writer_count
from tests.conftest import BridgeProcess, wait_until

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

N_JOBS, N_STEPS = 24, 30


def test_writer_count_follows_setting_cores_and_jobs() -> None:
    assert writer_count(0, 100, cpus=2) == 2
    assert writer_count(0, 100, cpus=16) == 4, "one per core, at most 4"
    assert writer_count(3, 100) == 3
    assert writer_count(3, 25) == 2, "at least 10 jobs per writer"
    assert writer_count(3, 5) == 1


def test_shares_are_disjoint_and_cover_every_job() -> None:
    ids = [f"j{i}" for i in range(7)]
    shares = share_out(ids, 3)
    assert shares == [["j0", "j3", "j6"], ["j1", "j4"], ["j2", "j5"]]
    assert sorted(i for share in shares for i in share) == sorted(ids)


def _finished(emulator_jobs: int) -> list[JobScenario]:
    return [
        JobScenario(n_steps=N_STEPS, created_offset=-7200 - i * 60) for i in range(emulator_jobs)
    ]


def _writer_pids(parent: int) -> list[int]:
    """Live writer processes of ``parent``: its children forked from it (their command line
    is the parent's; its wandb-core's is not)."""
    argv = Path(f"/proc/{parent}/cmdline").read_bytes()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            same = (entry / "cmdline").read_bytes() == argv
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and same:
            found.append(int(entry.name))
    return found


def _writer_timings(log: str) -> list[dict[str, float]]:
    """The API request times each writer was given (its ``sync.writer`` line)."""
    lines = [json.loads(line) for line in log.splitlines() if '"sync.writer"' in line]
    return [line["timings"] for line in lines]


@pytest.mark.e2e
def test_writers_backfill_every_run_once(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(_finished(N_JOBS), time_scale=1)
    bridge = bridge_process(emulator, FTBRIDGE_SYNC_WRITERS="2")
    result = bridge.run("sync", "--all", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"sync.writers"' in result.stdout + result.stderr
    jobs = _all_jobs(bridge)
    assert len(jobs) == N_JOBS and all(j.synced and j.run_state == "finished" for j in jobs)
    for job in jobs:
        history = read_merged(bridge.wandb_dir, job.job_id).history
        assert [row["_step"] for row in history] == list(range(1, N_STEPS + 1))
    again = bridge.run("sync", "--all", timeout=120)
    assert again.returncode == 0
    assert all(len(find_run_files(bridge.wandb_dir, j.job_id)) == 1 for j in jobs), "nothing redone"


@pytest.mark.e2e
def test_a_killed_sync_takes_its_writers_and_the_next_one_completes(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(_finished(N_JOBS), time_scale=1)
    bridge = bridge_process(emulator, FTBRIDGE_SYNC_WRITERS="2")
    proc = bridge.start("sync", "--all")
    wait_until(lambda: bool(_writer_pids(proc.pid)), 60, "a writer started")
    wait_until(lambda: bridge.raw_log().count('"run.opened"') >= 4, 120, "runs opened")
    # The writer says its orders once its bridge is built, maybe after the parent's runs.
    wait_until(lambda: bool(_writer_timings(bridge.raw_log())), 60, "the writer's orders")
    writers = _writer_pids(proc.pid)
    assert len(writers) == 1, "one writer besides the parent"
    [timings] = _writer_timings(bridge.raw_log())
    assert set(timings) == {"openai"} and timings["openai"] > 0, "the parent's request time"
    proc.send_signal(signal.SIGKILL)  # the parent alone, as the OOM killer would
    proc.wait(timeout=30)
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in writers), 30, "writers gone")
    result = bridge.run("sync", "--all", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = _all_jobs(bridge)
    assert len(jobs) == N_JOBS and all(j.synced for j in jobs)
    for job in jobs:
        history = read_merged(bridge.wandb_dir, job.job_id).history
        assert [row["_step"] for row in history] == list(range(1, N_STEPS + 1)), job.job_id


@pytest.mark.e2e
def test_writers_left_without_a_share_exit_cleanly(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    """Writers are forked before the listing; with too few jobs to share they get none and
    exit at once, their store closed (no write-ahead log left behind by a killed one)."""
    emulator = start_emulator(_finished(5), time_scale=1)
    bridge = bridge_process(emulator, FTBRIDGE_SYNC_WRITERS="3")
    result = bridge.run("sync", "--all", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [json.loads(x) for x in result.stderr.splitlines() if '"sync.writers"' in x]
    assert line["processes"] == 1 and line["jobs"] == []
    assert '"sync.writer"' not in result.stderr
    assert not bridge.db_path.with_name(bridge.db_path.name + "-wal").exists()
    for job in _all_jobs(bridge):
        assert job.synced and job.run_state == "finished"


def _all_jobs(bridge: BridgeProcess) -> list[JobState]:
    store = bridge.store()
    try:
        return store.all_jobs()
    finally:
        store.close()
