"""Writer processes of a backfill: the unsynced jobs of one ``sync`` shared out among several
processes, each with its own wandb-core, so that W&B writes (``wandb.init``, ``run.log``,
``finish``: Python bound by one interpreter lock, and one wandb-core) overlap.

The rule it keeps: a writer is a whole bridge (its own API reads, its own W&B sink, the same
store) restricted to its share of the jobs, so each job goes through exactly the code and the
cursor rules of one process (``bridge.engine``). Shares are disjoint and fixed before any
writer starts. Writers use the parent's replica id (its leases are theirs) and its store; on
SQLite the parent holds the lock file against a second daemon for all of them (WAL mode lets
them write one after another). A writer dies with its parent (``PR_SET_PDEATHSIG``): a kill of
the sync is a crash of every writer, repaired at the next start as any crash is.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from bridge.engine import CycleStats

log = structlog.get_logger(__name__)

#: Below this many jobs per writer, starting one (about 1.5 s of imports) does not pay.
MIN_JOBS_PER_WRITER = 10
_PR_SET_PDEATHSIG = 1


def writer_count(configured: int, jobs: int, cpus: int | None = None) -> int:
    """How many writers (the calling process included) share ``jobs``: the configured count,
    or with 0 one per core (at most 4); never more than ``jobs / MIN_JOBS_PER_WRITER``."""
    wanted = configured or min(4, cpus or os.cpu_count() or 1)
    return max(1, min(wanted, jobs // MIN_JOBS_PER_WRITER))


def share_out(job_ids: Sequence[str], writers: int) -> list[list[str]]:
    """Jobs dealt round-robin (in listing order) into ``writers`` disjoint shares."""
    return [list(job_ids[i::writers]) for i in range(max(1, writers))]


class WriterPool:
    """Writer subprocesses, one per share; ``wait`` collects their figures into ``stats``."""

    def __init__(
        self,
        shares: Sequence[Sequence[str]],
        *,
        replica_id: str,
        config: Path | None,
        shutdown_timeout: float,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        self._shares = [list(share) for share in shares if share]
        self._replica_id = replica_id
        self._config = config
        self._shutdown_timeout = shutdown_timeout
        # The parent's API request times: a writer lists nothing, and sizes its first reads
        # on these (without them it would start with the fewest reading threads).
        self._timings = dict(timings or {})
        self._tmp = tempfile.TemporaryDirectory(prefix="ftbridge-writers-")
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> Self:
        folder = Path(self._tmp.name)
        env = {**os.environ, "FTBRIDGE_REPLICA_ID": self._replica_id}
        for index, share in enumerate(self._shares):
            jobs = folder / f"jobs-{index}.json"
            jobs.write_text(json.dumps(share), encoding="utf-8")
            figures = folder / f"stats-{index}.json"
            command = [sys.executable, "-m", "bridge.writers", "--parent", str(os.getpid())]
            command += ["--jobs", str(jobs), "--stats", str(figures)]
            command += ["--timings", json.dumps(self._timings)]
            if self._config is not None:
                command += ["--config", str(self._config)]
            self._procs.append((subprocess.Popen(command, env=env), figures))
        shares = [len(share) for share in self._shares]
        log.info("sync.writers", processes=len(self._procs) + 1, jobs=shares)
        return self

    def wait(self, stats: CycleStats, stopping: threading.Event) -> None:
        """Wait for every writer; once ``stopping`` is set, ask them to stop
        (SIGTERM: they finish their open runs) and kill any still going after the shutdown
        timeout."""
        deadline: float | None = None
        for proc, _ in self._procs:
            while proc.poll() is None:
                if deadline is None and stopping.is_set():
                    self._terminate()
                    deadline = time.monotonic() + self._shutdown_timeout
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
        for proc, figures in self._procs:
            _add_figures(stats, figures, proc.returncode)

    def _terminate(self) -> None:
        for proc, _ in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._terminate()
        for proc, _ in self._procs:
            try:
                proc.wait(timeout=self._shutdown_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._tmp.cleanup()


def _add_figures(stats: CycleStats, path: Path, code: int | None) -> None:
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        figures = {}
    stats.events += int(figures.get("events", 0))
    stats.rows_logged += int(figures.get("rows_logged", 0))
    stats.runs_finished += int(figures.get("runs_finished", 0))
    stats.errors.extend(str(e) for e in figures.get("errors", []))
    if code != 0 and not figures.get("errors"):
        stats.errors.append(f"a writer process exited with code {code}")


# -- the writer process -------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """Be killed (SIGKILL) when the parent dies, as one process would die whole; exit at once
    if it is gone already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    from bridge.app import build_bridge, close_one_shot  # noqa: PLC0415 - the writer's start-up
    from bridge.daemon import install_signal_handlers  # noqa: PLC0415
    from bridge.logs import configure_logging  # noqa: PLC0415
    from bridge.settings import load_settings  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m bridge.writers")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--jobs", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--timings", type=json.loads, default={})
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    settings = load_settings(args.config)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    bridge = build_bridge(settings, claim_lock=False)
    install_signal_handlers(bridge.stopping)
    bridge.assume_timings(args.timings)
    only = set(json.loads(args.jobs.read_text(encoding="utf-8")))
    stats = CycleStats()
    try:
        bridge.sync_unsynced(stats, only=only)
    finally:
        bridge.close_runs()
        bridge.store.close()
        close_one_shot(bridge)
    args.stats.write_text(
        json.dumps(
            {
                "events": stats.events,
                "rows_logged": stats.rows_logged,
                "runs_finished": stats.runs_finished,
                "errors": stats.errors + (["interrupted"] if bridge.stopping.is_set() else []),
            }
        ),
        encoding="utf-8",
    )
    if bridge.stopping.is_set():
        return 130
    return 1 if stats.errors else 0


if __name__ == "__main__":
    from bridge.entry import leave

    sys.exit(leave(main()))
