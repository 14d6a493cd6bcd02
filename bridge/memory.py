"""In-memory implementations of the edges, shipped for tests (the bridge's and its users').

For a store, use ``SqlStore("sqlite://")``: the real store on an in-memory database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bridge.errors import JobNotFound, SinkUnavailable
from bridge.mapping import ArtifactSpec, MetricRow, RunSpec
from bridge.ports import Json, OpenedRun, PlacedRow


def _pages(items: list[Json], size: int, first: int | None = None) -> Iterator[list[Json]]:
    """Pages of ``size`` items; the first of ``first`` items when that is fewer."""
    head = min(size, first) if first is not None else size
    yield items[:head]
    for start in range(head, len(items), size):
        yield items[start : start + size]


class MemorySource:
    """:class:`bridge.ports.JobSource` over jobs and events held in lists (oldest first)."""

    def __init__(self, name: str = "memory", page_size: int = 3) -> None:
        self.name = name
        self.page_size = page_size
        self.jobs: dict[str, Json] = {}
        self.events: dict[str, list[Json]] = {}
        self.checkpoint_lists: dict[str, list[Json]] = {}
        self.files: dict[str, bytes] = {}
        self.calls: Counter[str] = Counter()
        # The ``first_page`` hint of every events read, in order.
        self.first_pages: list[int | None] = []

    def put_job(self, job: Json) -> None:
        self.jobs[str(job["id"])] = job
        self.events.setdefault(str(job["id"]), [])

    def add_event(self, job_id: str, event: Json) -> None:
        self.events[job_id].append(event)

    def _counted(self, kind: str, pages: Iterator[list[Json]]) -> Iterator[list[Json]]:
        for page in pages:
            self.calls[kind] += 1
            yield page

    def job_pages(self) -> Iterator[list[Json]]:
        newest_first = sorted(
            self.jobs.values(), key=lambda j: (j.get("created_at") or 0, j["id"]), reverse=True
        )
        if not newest_first:
            self.calls["list_jobs"] += 1
            return iter([[]])
        return self._counted("list_jobs", _pages(newest_first, self.page_size))

    def get_job(self, job_id: str) -> Json:
        self.calls["get_job"] += 1
        if job_id not in self.jobs:
            raise JobNotFound(f"job {job_id}: not found")
        return self.jobs[job_id]

    def checkpoints(self, job_id: str) -> list[Json]:
        self.calls["list_checkpoints"] += 1
        return list(self.checkpoint_lists.get(job_id, []))

    def file_content(self, file_id: str) -> bytes:
        self.calls["file_content"] += 1
        if file_id not in self.files:
            raise JobNotFound(f"file {file_id}: not found")
        return self.files[file_id]

    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        newest_first = list(reversed(self.events.get(job_id, [])))
        if not newest_first:
            self.calls["list_events"] += 1
            return iter([[]])
        self.first_pages.append(first_page)
        return self._counted("list_events", _pages(newest_first, self.page_size, first_page))


@dataclass
class MemoryRun:
    spec: RunSpec
    rows: list[PlacedRow] = field(default_factory=list)
    config: Json = field(default_factory=dict)
    summary: Json = field(default_factory=dict)
    exit_code: int | None = None
    preempted: bool = False
    alerts: list[tuple[str, str]] = field(default_factory=list)
    artifacts: list[ArtifactSpec] = field(default_factory=list)
    used: list[str] = field(default_factory=list)


class MemorySink:
    """:class:`bridge.ports.RunSink` keeping runs in memory. ``crash()`` forgets the open
    segments as a kill -9 would, keeping only the first ``keep`` rows of each: offline, what
    reached the segment's file; ``online=True``, what reached the server, which a reopened
    run then resumes after (and, as wandb does, rows below that step are dropped)."""

    def __init__(self, *, online: bool = False) -> None:
        self.online = online
        self.segments: dict[str, MemoryRun] = {}
        self._open: dict[str, str] = {}
        self._next_at: dict[str, int] = {}
        self.fail_open = False
        self.fail_finish_keeping: int | None = None
        self.dropped: list[PlacedRow] = []

    def open(self, spec: RunSpec) -> OpenedRun:
        if spec.run_id in self._open:
            return OpenedRun(self._open[spec.run_id], self._resumed_at(spec.run_id))
        if self.fail_open:
            raise SinkUnavailable(f"W&B did not open run {spec.run_id}: unreachable")
        resumed_at = self._resumed_at(spec.run_id)
        segment = f"{spec.run_id}#{len(self.segments)}"
        self.segments[segment] = MemoryRun(spec, config=dict(spec.config))
        self._open[spec.run_id] = segment
        self._next_at[spec.run_id] = resumed_at or 0
        return OpenedRun(segment, resumed_at)

    def _resumed_at(self, run_id: str) -> int | None:
        if not self.online:
            return None
        kept = [p.at for s in self.segments.values() if s.spec.run_id == run_id for p in s.rows]
        return max(kept, default=-1) + 1

    def _current(self, run_id: str) -> MemoryRun:
        return self.segments[self._open[run_id]]

    def is_open(self, run_id: str) -> bool:
        return run_id in self._open

    def open_runs(self) -> list[str]:
        return list(self._open)

    def log(self, run_id: str, rows: Sequence[PlacedRow]) -> None:
        for placed in rows:
            if placed.at < self._next_at[run_id]:
                self.dropped.append(placed)  # wandb drops a step lower than the current one
                continue
            self._current(run_id).rows.append(placed)
            self._next_at[run_id] = placed.at + 1

    def update_config(self, run_id: str, config: Json) -> None:
        self._current(run_id).config.update(config)

    def update_summary(self, run_id: str, summary: Json) -> None:
        self._current(run_id).summary.update(summary)

    def finish(self, run_id: str, exit_code: int, *, preempted: bool = False) -> None:
        run = self._current(run_id)
        del self._open[run_id]
        if self.fail_finish_keeping is not None:
            del run.rows[self.fail_finish_keeping :]
            raise SinkUnavailable(f"run {run_id} is not confirmed on disk")
        run.exit_code = exit_code
        run.preempted = preempted

    def alert(self, run_id: str, title: str, text: str) -> None:
        self._current(run_id).alerts.append((title, text))

    def reachable(self) -> bool:
        return not self.fail_open

    def blocked(self) -> set[str]:
        return set()

    def reset(self) -> None:
        return None

    def new_pass(self) -> None:
        return None

    def log_artifact(self, run_id: str, spec: ArtifactSpec) -> None:
        self._current(run_id).artifacts.append(spec)

    def use_artifact(self, run_id: str, path: str, kind: str) -> None:
        self._current(run_id).used.append(path)

    def durable_steps(self, segment: str) -> set[int] | None:
        if self.online:
            return None
        run = self.segments.get(segment)
        return {placed.at for placed in run.rows} if run else set()

    def crash(self, keep: int = 0) -> None:
        """Lose the open segments' unflushed rows (all but the first ``keep``)."""
        for segment in self._open.values():
            del self.segments[segment].rows[keep:]
        self._open.clear()

    def rows_of(self, run_id: str) -> list[MetricRow]:
        """Every row of every segment of the run, in order (what ``wandb sync`` would merge)."""
        return [p.row for p in self.placed_of(run_id)]

    def placed_of(self, run_id: str) -> list[PlacedRow]:
        return [p for s in self.segments.values() if s.spec.run_id == run_id for p in s.rows]
