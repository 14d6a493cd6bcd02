"""Writer processes of a backfill: the unsynced jobs of one ``sync`` shared out among several
processes, each with its own wandb-core, so that W&B writes (``wandb.init``, ``run.log``,
``finish``: Python bound by one interpreter lock, and one wandb-core) overlap.

The rule it keeps: a writer is a whole bridge (its own API reads, its own W&B sink, the same
store) restricted to its share of the jobs, so each job goes through exactly the code and the
cursor rules of one process (``bridge.engine``). Shares are disjoint and fixed before any
writer writes. Writers use the parent's replica id (its leases are theirs) and its store; on
SQLite the parent holds the lock file against a second daemon for all of them (WAL mode lets
them write one after another). A writer dies with its parent (``PR_SET_PDEATHSIG``): a kill of
the sync is a crash of every writer, repaired at the next start as any crash is.

Writers are forked by ``sync --all`` before it opens anything (no thread, store connection,
lock or wandb-core yet), once wandb, the SDKs and SQLAlchemy are imported: a writer starts
with them in memory instead of importing them again (about 2 s of CPU a process), waits for
its orders while the parent lists the jobs, then builds its bridge. Where fork is not
available, or a thread is already running, they are spawned (a fresh interpreter) with the
same orders.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import structlog

from bridge.engine import CycleStats

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from bridge.settings import Settings

log = structlog.get_logger(__name__)

#: Below this many jobs per writer, one more process does not pay.
MIN_JOBS_PER_WRITER = 10
_PR_SET_PDEATHSIG = 1


def writer_count(configured: int, jobs: int | None, cpus: int | None = None) -> int:
    """How many writers (the calling process included) share ``jobs``: the configured count,
    or with 0 one per core (at most 4); never more than ``jobs / MIN_JOBS_PER_WRITER``
    (``None``: not known yet)."""
    wanted = configured or min(4, cpus or os.cpu_count() or 1)
    if jobs is None:
        return max(1, wanted)
    return max(1, min(wanted, jobs // MIN_JOBS_PER_WRITER))


def share_out(job_ids: Sequence[str], writers: int) -> list[list[str]]:
    """Jobs dealt round-robin (in listing order) into ``writers`` disjoint shares."""
    return [list(job_ids[i::writers]) for i in range(max(1, writers))]


def start_method() -> str:
    """``fork`` where it is safe (POSIX, no thread running yet), else ``spawn``."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


class WriterPool:
    """Writer processes started before the parent builds its bridge; each is given its
    share (:meth:`deal`), :meth:`wait` collects their figures, :meth:`close` ends them."""

    def __init__(self, settings: Settings, processes: int, *, shutdown_timeout: float) -> None:
        self._shutdown_timeout = shutdown_timeout
        context = (
            multiprocessing.get_context("fork")
            if start_method() == "fork"
            else multiprocessing.get_context("spawn")
        )
        self._writers: list[tuple[BaseProcess, Connection]] = []
        for index in range(processes):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=writer_main,
                args=(settings, theirs, os.getpid()),
                name=f"ftbridge-writer-{index + 1}",
            )
            proc.start()
            theirs.close()
            self._writers.append((proc, ours))
        self._working: list[tuple[BaseProcess, Connection]] = []

    def __len__(self) -> int:
        return len(self._writers)

    def deal(
        self, shares: Sequence[Sequence[str]], *, replica_id: str, timings: Mapping[str, float]
    ) -> None:
        """One share to each writer, with the parent's replica id (its leases are theirs) and
        API request times (to size its first reads); writers without a share exit."""
        for index, (proc, conn) in enumerate(self._writers):
            share = list(shares[index]) if index < len(shares) else []
            if share:
                orders = {"jobs": share, "replica_id": replica_id, "timings": dict(timings)}
                _send(conn, orders)
                self._working.append((proc, conn))
            else:
                _send(conn, None)
        log.info("sync.writers", processes=len(self._working) + 1, jobs=[len(s) for s in shares])

    def wait(self, stats: CycleStats, stopping: threading.Event) -> None:
        """Wait for every writer at work, taking its figures as it sends them; once
        ``stopping`` is set, ask them to stop (SIGTERM: they finish their open runs) and kill
        any still going after the shutdown timeout."""
        deadline: float | None = None
        for proc, conn in self._working:
            figures: dict[str, Any] | None = None
            while figures is None:
                if deadline is None and stopping.is_set():
                    self._terminate()
                    deadline = time.monotonic() + self._shutdown_timeout
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                alive = proc.is_alive()
                figures = _figures(conn, 0.1 if alive else 0)
                if figures is None and not alive:
                    figures = {}  # it died without a word: its exit code tells
            proc.join()
            _add_figures(stats, figures, proc.exitcode)

    def _terminate(self) -> None:
        for proc, _ in self._writers:
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    proc.terminate()

    def close(self) -> None:
        """The end of the pool: writers still waiting for orders see the pipe closed and exit;
        any still going after the shutdown timeout are stopped (SIGTERM, then SIGKILL)."""
        for _, conn in self._writers:
            conn.close()
        deadline = time.monotonic() + self._shutdown_timeout
        for proc, _ in self._writers:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        self._terminate()
        for proc, _ in self._writers:
            proc.join(timeout=self._shutdown_timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _send(conn: Connection, message: object) -> None:
    with contextlib.suppress(OSError):  # the writer is gone: wait() reports its exit code
        conn.send(message)


def _figures(conn: Connection, timeout: float) -> dict[str, Any] | None:
    """A writer's figures once it has sent them (None before); {} for a closed pipe."""
    try:
        if conn.poll(timeout):
            figures = conn.recv()
            return figures if isinstance(figures, dict) else {}
    except (OSError, EOFError):
        return {}
    return None


def _add_figures(stats: CycleStats, figures: Mapping[str, Any], code: int | None) -> None:
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


def _receive(conn: Connection) -> Any:
    """The parent's message; None once it has closed the pipe."""
    try:
        return conn.recv()
    except (OSError, EOFError):
        return None


def writer_main(settings: Settings, conn: Connection, parent: int) -> None:
    """A writer process: wait for its orders (the parent has listed the jobs), build a bridge
    as the parent's replica, sync its share, send back the figures. Exits with 0, 1 (errors)
    or 130 (asked to stop)."""
    from bridge.app import build_bridge, close_one_shot  # noqa: PLC0415 - imported already
    from bridge.daemon import install_signal_handlers  # noqa: PLC0415

    die_with_parent(parent)
    # Until its bridge can stop cleanly, a writer leaves Ctrl-C to the parent (which stops
    # it with SIGTERM, whose default ends a process that holds nothing yet).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    orders = _receive(conn)
    if not orders:
        return
    bridge = build_bridge(
        settings.model_copy(update={"replica_id": orders["replica_id"]}), claim_lock=False
    )
    install_signal_handlers(bridge.stopping)
    bridge.assume_timings(orders["timings"])
    log.info("sync.writer", jobs=len(orders["jobs"]), timings=orders["timings"])
    stats = CycleStats()
    try:
        bridge.sync_unsynced(stats, only=set(orders["jobs"]))
    finally:
        bridge.close_runs()
        bridge.store.close()
        close_one_shot(bridge)
    stopped = bridge.stopping.is_set()
    errors = stats.errors + (["interrupted"] if stopped else [])
    _send(
        conn,
        {
            "events": stats.events,
            "rows_logged": stats.rows_logged,
            "runs_finished": stats.runs_finished,
            "errors": errors,
        },
    )
    sys.stdout.flush()
    sys.stderr.flush()
    if stopped:
        sys.exit(130)
    if errors:
        sys.exit(1)
