"""Several sources in one bridge: one ``Bridge`` per source, sharing the store, the W&B sink,
the dispatcher and the stop flag; polled one after another in each cycle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence

import structlog

from bridge.engine import Bridge, CycleStats
from bridge.errors import JobNotFound, RetryableError
from bridge.leases import Leases
from bridge.ports import JobState, RunSink, StateStore
from bridge.webhooks import Dispatcher

log = structlog.get_logger(__name__)


class BridgeGroup:
    def __init__(self, bridges: Sequence[Bridge]) -> None:
        if not bridges:
            raise ValueError("a group needs at least one bridge")
        self.bridges = list(bridges)
        first = self.bridges[0]
        self.store: StateStore = first.store
        self.sink: RunSink = first.sink
        self.stopping: threading.Event = first.stopping
        for bridge in self.bridges:
            bridge.stopping = self.stopping

    @property
    def leases(self) -> Leases | None:
        return self.bridges[0].leases

    @leases.setter
    def leases(self, value: Leases | None) -> None:
        for bridge in self.bridges:
            bridge.leases = value

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.bridges[0].dispatcher

    @dispatcher.setter
    def dispatcher(self, value: Dispatcher | None) -> None:
        for bridge in self.bridges:
            bridge.dispatcher = value

    def recover(self) -> int:
        return self.bridges[0].recover()  # runs of every source: store and sink are shared

    def close_runs(self, deadline: float | None = None) -> None:
        """Each source's bridge closes (and finalizes) its own jobs' runs; any left over
        (a source since removed from the configuration) are closed by the first."""
        for bridge in self.bridges:
            bridge.close_runs(deadline)
        self.bridges[0].close_runs(deadline, every=True)

    def poll(self) -> CycleStats:
        """One cycle over every source. A source in trouble does not stop the others; the
        cycle fails (and backs off) only when every source failed."""
        total = CycleStats()
        failures: list[RetryableError] = []
        for bridge in self.bridges:
            try:
                stats = bridge.poll()
            except RetryableError as error:
                failures.append(error)
                total.errors.append(f"source {bridge.source.name}: {error}")
                log.warning("source.failed", source=bridge.source.name, error=str(error))
                continue
            _add(total, stats)
        if len(failures) == len(self.bridges):
            raise failures[0]
        return total

    def discover(self, *, full: bool = False) -> int:
        return sum(bridge.discover(full=full) for bridge in self.bridges)

    def sync_unsynced(
        self,
        stats: CycleStats,
        on_job: Callable[[JobState], object] | None = None,
        *,
        only: Collection[str] | None = None,
    ) -> None:
        for bridge in self.bridges:
            bridge.sync_unsynced(stats, on_job, only=only)

    def settle(self, timeout: float) -> None:
        for bridge in self.bridges:
            bridge.settle(timeout)

    def timings(self) -> dict[str, float]:
        return {name: s for bridge in self.bridges for name, s in bridge.timings().items()}

    def assume_timings(self, timings: Mapping[str, float]) -> None:
        for bridge in self.bridges:
            bridge.assume_timings(timings)

    def sync_one(self, job_id: str, stats: CycleStats) -> None:
        for bridge in self.bridges:
            try:
                bridge.sync_one(job_id, stats)
            except JobNotFound:
                continue
            return
        raise JobNotFound(f"job {job_id}: not found in any source")


def _add(total: CycleStats, part: CycleStats) -> None:
    total.jobs_seen += part.jobs_seen
    total.active += part.active
    total.events += part.events
    total.rows_logged += part.rows_logged
    total.runs_finished += part.runs_finished
    total.errors.extend(part.errors)
    total.failures.extend(part.failures)
    if part.lag_seconds is not None:
        total.lag_seconds = max(total.lag_seconds or 0.0, part.lag_seconds)
