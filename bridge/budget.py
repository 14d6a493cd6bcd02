"""A time budget per job for a cycle's API reads: one slow job cannot stretch every cycle.

The cycle's reads run in a thread pool (see ``Bridge.sync_unsynced``). :class:`JobBudget`
hands out their futures as they complete, and gives up waiting for a job whose reads have run
longer than the budget: that job is named in one log line (once while it stays slow) and left
for a later cycle, while its reads go on in the background (what they store is picked up then).
A job still being read is not submitted again (:meth:`JobBudget.busy`). The stop event ends the
wait at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: How often the wait looks at the stop event and the overdue jobs.
_TICK = 0.25


@dataclass
class ReadsInFlight:
    """What outlives a cycle: the jobs whose reads are still under way, and those already
    said to be slow."""

    running: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class JobBudget(Generic[T]):
    """Submit one job's reads at a time; iterate :meth:`completed` to get them back."""

    def __init__(
        self, seconds: float | None, stopping: threading.Event, reads: ReadsInFlight
    ) -> None:
        self.seconds = seconds
        self.stopping = stopping
        self._reads = reads
        self._lock = reads.lock
        self._started: dict[str, float] = {}
        self._keys: dict[Future[T], str] = {}
        self.abandoned: list[str] = []

    def busy(self, key: str) -> bool:
        with self._lock:
            return key in self._reads.running

    def submit(self, pool: Executor, key: str, work: Callable[[], T]) -> Future[T]:
        def run() -> T:
            with self._lock:
                self._started[key] = time.monotonic()
            try:
                return work()
            finally:
                with self._lock:
                    self._reads.running.discard(key)

        with self._lock:
            self._reads.running.add(key)
        future: Future[T] = pool.submit(run)
        self._keys[future] = key
        return future

    def completed(self, most: int = 1) -> Iterator[list[Future[T]]]:
        """Futures as they complete, in lists of up to ``most`` (those complete by the time
        the first is taken); overdue ones are dropped (logged once each).

        Completions arrive through a queue fed by the futures' callbacks, and the overdue
        jobs are looked for once a tick: the cost is the same for every completion however
        many reads are pending (``concurrent.futures.wait`` re-installs a waiter on every
        pending future on each call, quadratic in a cycle of 1,000 jobs)."""
        arrived: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
        pending = set(self._keys)
        for future in pending:
            future.add_done_callback(arrived.put)
        next_look = time.monotonic() + _TICK
        while pending and not self.stopping.is_set():
            ready: list[Future[T]] = []
            try:
                ready.append(arrived.get(timeout=max(0.0, next_look - time.monotonic())))
                while len(ready) < most:
                    ready.append(arrived.get_nowait())
            except queue.Empty:
                pass
            ready = [future for future in ready if future in pending]
            if ready:
                pending.difference_update(ready)
                with self._lock:
                    self._reads.slow.difference_update(self._keys[f] for f in ready)
                yield ready
            if time.monotonic() >= next_look:
                pending -= self._overdue(pending)
                next_look = time.monotonic() + _TICK

    def _overdue(self, pending: set[Future[T]]) -> set[Future[T]]:
        if self.seconds is None:
            return set()
        now = time.monotonic()
        with self._lock:
            late = {
                f
                for f in pending
                if (started := self._started.get(self._keys[f])) is not None
                and now - started > self.seconds
            }
        for future in late:
            key = self._keys[future]
            self.abandoned.append(key)
            with self._lock:
                said = key in self._reads.slow
                self._reads.slow.add(key)
            (log.debug if said else log.warning)(
                "job.slow",
                job_id=key,
                budget_s=self.seconds,
                detail="its API reads take longer than the budget; left for a later cycle",
            )
        return late


class Beside:
    """A read run in a thread of its own beside the caller's (one job's reads that do not
    depend on each other); :meth:`result` waits for it and raises what it raised. The thread
    is named as the reading threads are, so that an exit waits for it as for them."""

    def __init__(self, read: Callable[[], object]) -> None:
        self._read = read
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ftbridge-fetch-beside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as error:  # noqa: BLE001 - handed to the caller by result()
            self._error = error

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
