"""The state store's disk: a read-only state directory, a full disk, a corrupt file. Each is a
clear error (one line, no traceback), and nothing is lost or marked logged when it was not.

Tests run as root here, and root ignores ``chmod``: a read-only directory is a tmpfs mounted
read-only, and a full disk a tiny tmpfs. Where mounting is not permitted they skip, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import BridgeProcess, wait_until
from tests.test_e2e import assert_history_matches, expected_rows

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root/CAP_SYS_ADMIN"
        )


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def make_read_only(path: Path) -> None:
    _mount("-o", "remount,ro", str(path))


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    try:
        with filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        assert error.errno == errno.ENOSPC
    return filler


def synced(db: Path, n_jobs: int) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT synced FROM jobs").fetchall()
    return len(rows) >= n_jobs and all(bool(s) for (s,) in rows)


def one_clear_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("ftbridge:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_read_only_state_directory_is_one_clear_line(
    start_emulator: StartEmulator, bridge_process: MakeBridge, tmp_path: Path
) -> None:
    emulator = start_emulator([JobScenario(id="ftjob-ro", n_steps=5, created_offset=-3600)])
    with tmpfs(tmp_path / "ro-empty", "1m") as empty, tmpfs(tmp_path / "ro-db", "4m") as full:
        make_read_only(empty)
        bridge = bridge_process(emulator, FTBRIDGE_DATABASE_URL=f"sqlite:///{empty}/state.db")
        result = bridge.run("sync", "--all", timeout=60)
        assert result.returncode == 1, result.stderr
        one_clear_line(result.stderr, "state store", str(empty))

        # A state database that exists, in a directory that became read-only.
        bridge = bridge_process(emulator, FTBRIDGE_DATABASE_URL=f"sqlite:///{full}/state.db")
        assert bridge.run("sync", "--all", timeout=60).returncode == 0
        make_read_only(full)
        emulator.add_job(JobScenario(id="ftjob-ro2", n_steps=5))
        result = bridge.run("run", timeout=60)
        assert result.returncode == 1, result.stderr
        one_clear_line(result.stderr, "state store")


def test_a_full_disk_is_said_once_loses_nothing_and_recovers(
    start_emulator: StartEmulator, bridge_process: MakeBridge, tmp_path: Path
) -> None:
    emulator = start_emulator(
        [JobScenario(id="ftjob-before", n_steps=10, created_offset=-3600)], time_scale=5
    )
    with tmpfs(tmp_path / "small", "2m") as small:
        bridge = bridge_process(emulator, FTBRIDGE_DATABASE_URL=f"sqlite:///{small}/state.db")
        proc = bridge.start("run")
        wait_until(lambda: "run.finished" in bridge.raw_log(), 60, "the first job synced")
        filler = fill(small)
        emulator.add_job(
            JobScenario(id="ftjob-full", n_steps=30, validate_seconds=0, queue_seconds=0)
        )
        wait_until(lambda: "disk is full" in bridge.raw_log(), 60, "the full disk noticed")
        time.sleep(3)  # several more cycles meet the full disk
        assert proc.poll() is None, "the daemon stays up"

        # Nothing of the new job is marked logged while the store cannot record it: either
        # the store never took its events, or they are still "new".
        with sqlite3.connect(f"file:{small}/state.db?mode=ro", uri=True) as conn:
            states = conn.execute(
                "SELECT state FROM events WHERE job_id = 'ftjob-full' AND step IS NOT NULL"
            ).fetchall()
        assert {s for (s,) in states} <= {"new"}, states
        assert find_run_files(bridge.wandb_dir, "ftjob-full") == [] or all(
            not read_run(p).steps for p in find_run_files(bridge.wandb_dir, "ftjob-full")
        ), "no step reached W&B before the store recorded it"

        filler.unlink()
        wait_until(
            lambda: synced(small / "state.db", 2), 90, "every job synced once there is space"
        )
        assert bridge.stop(proc) == 0

    failed = [line for line in bridge.logs() if line.get("event") == "cycle.failed"]
    assert len(failed) == 1, failed
    assert "state store" in failed[0]["error"] and "disk is full" in failed[0]["error"]
    assert any(line.get("event") == "cycle.recovered" for line in bridge.logs())
    assert "Traceback" not in bridge.raw_log()
    for job_id in ("ftjob-before", "ftjob-full"):
        merged = read_merged(bridge.wandb_dir, job_id)
        assert_history_matches(merged.history, expected_rows(emulator, job_id))


def test_a_state_file_corrupt_in_the_middle_is_a_clear_error(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    """A file whose header is fine but whose pages are not (tests/test_bad_input.py covers a
    file that is not a database at all)."""
    emulator = start_emulator(
        [JobScenario(id=f"ftjob-c{i}", n_steps=20, created_offset=-3600) for i in range(2)]
    )
    bridge = bridge_process(emulator)
    assert bridge.run("sync", "--all", timeout=60).returncode == 0
    with sqlite3.connect(bridge.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    data = bytearray(bridge.db_path.read_bytes())
    assert len(data) > 4 * page
    data[2 * page :] = b"\xa5" * (len(data) - 2 * page)  # every page but the first two
    bridge.db_path.write_bytes(bytes(data))

    for command in (("sync", "--all"), ("status",)):
        result = bridge.run(*command, timeout=60)
        assert result.returncode != 0, (command, result.stdout)
        assert "Traceback" not in result.stderr, result.stderr
        assert "malformed" in result.stderr or "state store" in result.stderr, result.stderr
