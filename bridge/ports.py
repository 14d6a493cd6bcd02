"""The edges of the bridge, as Protocols: where jobs come from, where runs go, where state lives.

Each has a real implementation in the package (``source_openai``, ``sink_wandb``, ``store``)
and an in-memory one (``memory``) that tests and the engine's unit tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bridge.mapping import ArtifactSpec, MetricRow, RunSpec

Json = dict[str, Any]
EventState = Literal["new", "sent", "durable", "none"]
RunState = Literal["pending", "open", "closed", "finished", "skipped"]


class JobSource(Protocol):
    """A fine-tuning API. Lists come in pages, newest first, as the API gives them; pages are
    fetched lazily, so a caller that stops iterating stops paging."""

    name: str

    def job_pages(self) -> Iterator[list[Json]]: ...

    def get_job(self, job_id: str) -> Json: ...

    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        """The job's events, newest first. ``first_page``: how many events the first page
        needs to hold (what was read before follows them), a hint for an API whose pages
        have a size; None: as many as a page holds."""
        ...

    def checkpoints(self, job_id: str) -> list[Json]:
        """The job's checkpoints (the API keeps those of the last three epochs)."""
        ...

    def file_content(self, file_id: str) -> bytes: ...


class RunSink(Protocol):
    """Where runs go (W&B). Run ids are job ids."""

    def open(self, spec: RunSpec) -> OpenedRun:
        """Open the run (a new segment of it when it was open before, resumed online); returns
        the segment's location, so that what reached disk can be read back after a crash, and
        online where the server's copy of the run ends."""
        ...

    def is_open(self, run_id: str) -> bool: ...

    def log(self, run_id: str, rows: Sequence[PlacedRow]) -> None:
        """Log rows at their W&B steps, in increasing order. On failure the segment is given
        up (the run is no longer open here), so that it is repaired like a crash."""
        ...

    def update_config(self, run_id: str, config: Json) -> None: ...

    def update_summary(self, run_id: str, summary: Json) -> None: ...

    def finish(self, run_id: str, exit_code: int, *, preempted: bool = False) -> None:
        """Close the run, flushing everything it was given."""
        ...

    def durable_steps(self, segment: str) -> set[int] | None:
        """Offline: the W&B steps a segment holds on disk (after a crash, a prefix of what
        was logged), once the file was cut back to its last whole record so that ``wandb
        sync`` can read it. None online, where the local file says nothing of the server."""
        ...

    def open_runs(self) -> list[str]: ...

    def alert(self, run_id: str, title: str, text: str) -> None:
        """Raise an alert on the run (W&B's own alert routing)."""
        ...

    def reachable(self) -> bool:
        """Whether W&B answers (always, offline)."""
        ...

    def blocked(self) -> set[str]:
        """Run ids that cannot open until :meth:`reset` (a failed init left them taken)."""
        ...

    def reset(self) -> None:
        """Release blocked run ids; only with no run open."""
        ...

    def new_pass(self) -> None:
        """A pass over the jobs begins, their leases held: what the sink listed of earlier
        runs' files before now may be stale (other processes may have held these jobs)."""
        ...

    def log_artifact(self, run_id: str, spec: ArtifactSpec) -> None: ...

    def use_artifact(self, run_id: str, path: str, kind: str) -> None:
        """Record that the run used the artifact ``<entity>/<project>/<name>:<alias>`` (W&B's
        lineage). Offline, where wandb cannot use artifacts, nothing is recorded."""
        ...


@dataclass(frozen=True)
class JobState:
    """What the store knows of one job."""

    job_id: str
    source: str
    status: str
    job: Json
    run_state: RunState = "pending"
    run_segment: str | None = None
    config: Json | None = None
    synced: bool = False
    run_url: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    job_id: str
    event_id: str
    seq: int
    step: int | None
    event: Json
    state: EventState = "new"
    # The W&B step its row was handed at (kept when the row is sent again), or None.
    wandb_step: int | None = None


@dataclass(frozen=True)
class PlacedRow:
    """A history row and the W&B step it goes to (its training step, or a later one for a
    row filled in after later rows: W&B drops steps lower than one already logged)."""

    at: int
    row: MetricRow


@dataclass(frozen=True)
class OpenedRun:
    """A run segment just opened. ``resumed_at`` is, online, where the server's history of
    the run ends (the next W&B step it takes: ``run.starting_step``); None offline, where the
    server knows nothing yet and the segment's file is what counts."""

    segment: str
    resumed_at: int | None = None


@dataclass(frozen=True)
class StatusChange:
    """A job's status as first seen, or changed. ``seq`` numbers the job's changes (0 for
    the first sight), so that whatever is derived from a change can have a stable id."""

    job_id: str
    previous: str | None
    current: str
    job: Json = field(default_factory=dict)
    seq: int = 0
    run_url: str | None = None
    source: str | None = None


class StateStore(Protocol):
    """Durable state: per job, the last snapshot and status, its events and which of them
    W&B has taken, and the run's segment."""

    def get_job(self, job_id: str) -> JobState | None: ...

    def has_job(self, job_id: str) -> bool: ...

    def record_job(
        self, source: str, job: Json, *, run_url: str | None = None
    ) -> StatusChange | None:
        """Save the snapshot; return the status change it makes, if any. A change is handed
        to the store's change hook inside the same transaction (the webhook outbox)."""
        ...

    def unsynced_jobs(self, source: str | None = None) -> list[JobState]: ...

    def unsynced_ids(self, source: str) -> set[str]:
        """The ids of the source's unsynced jobs (their snapshots not read)."""
        ...

    def all_jobs(self) -> list[JobState]: ...

    def job_count(self) -> int:
        """How many jobs :meth:`all_jobs` would return (their snapshots not read)."""
        ...

    def known_event_ids(self, job_id: str, event_ids: Sequence[str]) -> set[str]:
        """Which of the ids the job has stored; called from the API-reading threads while
        another thread writes, so it must not wait for the writer."""
        ...

    def add_events(self, job_id: str, events: Sequence[Json]) -> int:
        """Append events, oldest first; those with a metrics step start as ``new``."""
        ...

    def add_events_many(self, batch: Sequence[tuple[str, Sequence[Json]]]) -> int:
        """:meth:`add_events` for several jobs (id, events) in one transaction."""
        ...

    def pending_events(self, job_id: str) -> list[StoredEvent]: ...

    def last_wandb_step(self, job_id: str) -> int:
        """The highest W&B step any of the job's rows was handed at, or -1."""
        ...

    def mark_sent(self, job_id: str, placed: Mapping[str, int]) -> None:
        """Events (by id) handed to W&B at these W&B steps; written before the rows are
        logged, so that a crash in between sends them again at the same steps."""
        ...

    def send_pending(
        self, job_id: str, place: Callable[[list[StoredEvent], int], Mapping[str, int]]
    ) -> list[StoredEvent]:
        """:meth:`pending_events`, :meth:`last_wandb_step` and :meth:`mark_sent` in one
        transaction: ``place`` gets the pending events and the last W&B step and returns
        each event's W&B step, which is committed before this returns (and so before the
        rows are logged). Returns the pending events."""
        ...

    def send_pending_many(
        self,
        job_ids: Sequence[str],
        place: Callable[[str, list[StoredEvent], int], Mapping[str, int]],
    ) -> dict[str, list[StoredEvent]]:
        """:meth:`send_pending` for several jobs in one transaction; ``place`` gets the job's
        id first. Returns each job's pending events."""
        ...

    def close_run(self, job_id: str, run_state: RunState) -> None:
        """The run segment was finished: everything sent so far is on disk, and the run is
        in ``run_state`` (``closed`` or ``finished``); one transaction."""
        ...

    def recover_segment(self, job_id: str, durable_steps: set[int]) -> int:
        """After a crash, offline: keep as durable what the segment's file holds (by W&B
        step), send the rest again. Returns how many events go back to ``new``."""
        ...

    def recover_from_server(self, job_id: str, resumed_at: int, lost_segment: str | None) -> int:
        """Online, at each open: the server holds every row below W&B step ``resumed_at``
        (an in-order prefix of what was logged): those are durable, every row from there on
        is sent again at its step. ``lost_segment`` (a crashed segment) has its artifacts
        given again. Returns how many events go back to ``new``."""
        ...

    def set_run(
        self,
        job_id: str,
        run_state: RunState,
        segment: str | None = None,
        config: Json | None = None,
    ) -> None: ...

    def mark_synced(self, job_id: str) -> None: ...

    def logged_artifacts(self, job_id: str) -> set[str]: ...

    def mark_artifact(self, job_id: str, key: str, *, in_segment: bool = True) -> None:
        """Artifact ``key`` given for the job: in its current run segment (given again if
        that segment is lost), or for good (``in_segment=False``)."""
        ...

    def artifact_holder(self, key: str) -> str | None:
        """The job whose run logged the artifact ``key`` first (of any job), or None."""
        ...

    def sample_answers(self, job_id: str) -> dict[tuple[int, str], Json]:
        """The job's sample answers kept so far, by (prompt index, ``base`` | ``tuned``)."""
        ...

    def save_sample_answer(self, job_id: str, prompt: int, model: str, answer: Json) -> None:
        """Keep one answer as soon as it arrives (it was billed: it is never asked again)."""
        ...

    def events(self, job_id: str) -> list[StoredEvent]: ...

    def event_steps(self, job_id: str) -> set[int]:
        """The training steps of the job's stored events (none of their payloads read)."""
        ...

    def jobs_with_open_runs(self) -> list[JobState]: ...

    def quarantine(self, source: str, job_id: str, reason: str) -> None:
        """Keep a job the source refused (its id cannot be a W&B run id), with the reason."""
        ...

    def close(self) -> None: ...
