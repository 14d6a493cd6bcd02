"""What a job produces besides its metrics events: checkpoints, the result file, the model.

Each is given to W&B once per run segment: the store remembers which artifacts a segment
took, and a lost segment's artifacts are given again (see ``SqlStore.recover_segment``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from bridge import datasets, mapping, results
from bridge.errors import JobNotFound, RetryableError, SinkUnavailable, SourceRejected
from bridge.mapping import ArtifactSpec
from bridge.ports import JobSource, JobState, Json, RunSink, StateStore, StoredEvent

log = structlog.get_logger(__name__)

SpecOf = Callable[[Json], mapping.RunSpec]


def result_row_event(file_id: str, row: mapping.MetricRow) -> Json:
    """A row of the result file that the events missed, stored as if it were an event."""
    return {
        "id": f"result:{file_id}:{row.step}",
        "object": "fine_tuning.job.result_row",
        "type": "metrics",
        "created_at": None,
        "data": {"step": row.step, **row.values},
    }


def epoch_ended(events: Sequence[StoredEvent], job: Mapping[str, Any]) -> bool:
    """Whether these new metrics reach the end of an epoch, when a checkpoint is made."""
    return epoch_ends_in([event.event for event in events], job)


def epoch_ends_in(events: Sequence[Json], job: Mapping[str, Any]) -> bool:
    """:func:`epoch_ended` on events as the API gave them (not stored yet)."""
    for event in events:
        data = event.get("data")
        if isinstance(data, Mapping) and "full_valid_loss" in data:
            return True
        total = mapping.total_steps(event)
        hyper = job.get("hyperparameters")
        epochs = hyper.get("n_epochs") if isinstance(hyper, Mapping) else None
        step = mapping.step_of(event)
        if (
            total
            and isinstance(epochs, int)
            and epochs > 0
            and step
            and step % max(1, total // epochs) == 0
        ):
            return True
    return False


class Outputs:
    def __init__(self, source: JobSource, sink: RunSink, store: StateStore) -> None:
        self.source = source
        self.sink = sink
        self.store = store
        # Read ahead by ``prefetch`` (a worker thread), used once by the writer.
        self._files: dict[str, bytes] = {}
        self._checkpoints: dict[str, list[Json]] = {}
        self._lock = threading.Lock()

    def prefetch_checkpoints(self, job_id: str) -> None:
        """Read a job's checkpoints ahead of writing them (a running job at an epoch's end:
        in a reading thread, not on the thread that writes every job's rows)."""
        try:
            listed = self.source.checkpoints(job_id)
        except (JobNotFound, SourceRejected, RetryableError):
            return  # the writer asks again, and says why
        with self._lock:
            self._checkpoints[job_id] = listed

    def prefetch(self, state: JobState) -> None:
        """Read a finished job's checkpoints and result files ahead of writing its run. A
        read that fails here is left to the writer, which reads again (after the job's
        events are stored) and says why: failing the job's read would drop the events read
        with it, which a source that keeps its own cursor (Together's metrics) does not
        give again."""
        done = self.store.logged_artifacts(state.job_id)
        try:
            listed = self.source.checkpoints(state.job_id)
        except (JobNotFound, SourceRejected, RetryableError):
            listed = None
        files = state.job.get("result_files") if state.status == "succeeded" else None
        contents = {}
        for file_id in files if isinstance(files, list) else []:
            if isinstance(file_id, str) and f"results:{file_id}" not in done:
                with contextlib.suppress(JobNotFound, SourceRejected, RetryableError):
                    contents[file_id] = self.source.file_content(file_id)
        with self._lock:
            if listed is not None:
                self._checkpoints[state.job_id] = listed
            self._files.update(contents)

    def _file_content(self, file_id: str) -> bytes:
        with self._lock:
            cached = self._files.pop(file_id, None)
        return cached if cached is not None else self.source.file_content(file_id)

    def _checkpoint_list(self, job_id: str) -> list[Json]:
        with self._lock:
            cached = self._checkpoints.pop(job_id, None)
        return cached if cached is not None else self.source.checkpoints(job_id)

    def _give(self, state: JobState, spec: ArtifactSpec, done: set[str]) -> None:
        if spec.key in done:
            return
        self.sink.log_artifact(state.job_id, spec)
        self.store.mark_artifact(state.job_id, spec.key)
        done.add(spec.key)

    def checkpoints(self, state: JobState) -> int:
        done = self.store.logged_artifacts(state.job_id)
        before = len(done)
        try:
            listed = self._checkpoint_list(state.job_id)
        except (JobNotFound, SourceRejected) as error:
            # Some OpenAI-compatible endpoints have no checkpoints route.
            log.warning("checkpoints.unavailable", job_id=state.job_id, error=str(error))
            return 0
        for checkpoint in sorted(listed, key=lambda c: c.get("step_number") or 0):
            spec = mapping.checkpoint_artifact(
                state.job_id, checkpoint, mapping.provider_of(state.job)
            )
            if spec is not None:
                self._give(state, spec, done)
        return len(done) - before

    def datasets(self, state: JobState, max_rows: int, spec_of: SpecOf) -> None:
        """A ``dataset`` artifact with a sample table per training and validation file, one
        per provider and file id: the first run that meets the file logs it; every later run
        uses it (online; offline its config names it, see :func:`datasets.config_fields`)."""
        done = self.store.logged_artifacts(state.job_id)
        provider = mapping.provider_of(state.job)
        for role, file_id in datasets.files_of(state.job):
            name = datasets.artifact_name(provider, file_id)
            key = datasets.artifact_key(name)
            old_key = f"dataset:{role}:{file_id}"  # a per-job artifact of an earlier version
            if done & {key, datasets.use_key(name), old_key}:
                continue
            holder = self.store.artifact_holder(key)
            if holder is None or not self._use_dataset(state, holder, name, spec_of):
                self._log_dataset(state, provider, file_id, max_rows, done)
            else:
                done.add(datasets.use_key(name))

    def _log_dataset(
        self, state: JobState, provider: str, file_id: str, max_rows: int, done: set[str]
    ) -> None:
        try:
            content = self.source.file_content(file_id)
        except (JobNotFound, SourceRejected) as error:
            log.warning("dataset.unavailable", job_id=state.job_id, error=str(error))
            return
        method = state.job.get("method")
        kind = method.get("type") if isinstance(method, Mapping) else None
        spec = datasets.dataset_artifact(
            provider=provider,
            file_id=file_id,
            content=content,
            method=kind if isinstance(kind, str) else "supervised",
            max_rows=max_rows,
        )
        self._give(state, spec, done)

    def _use_dataset(self, state: JobState, holder: str, name: str, spec_of: SpecOf) -> bool:
        """Use the artifact the holder's run logged, in the holder's project; False when W&B
        does not have it (the holder's run was written offline and not synced, say): this
        run then logs it itself, and W&B, which keeps one version per content, makes no
        second version of a file already there."""
        logged_by = self.store.get_job(holder)
        where = spec_of(logged_by.job if logged_by is not None else state.job)
        path = mapping.artifact_path(where, f"{name}:latest")
        try:
            self.sink.use_artifact(state.job_id, path, "dataset")
        except SinkUnavailable as error:
            log.warning(
                "dataset.not_in_wandb", job_id=state.job_id, artifact=path, error=str(error)
            )
            return False
        self.store.mark_artifact(state.job_id, datasets.use_key(name))
        log.info("dataset.used", job_id=state.job_id, artifact=name, logged_by=holder)
        return True

    def model(self, state: JobState) -> None:
        spec = mapping.model_artifact(state.job)
        if spec is not None:
            self._give(state, spec, self.store.logged_artifacts(state.job_id))

    def result_files(self, state: JobState) -> None:
        """Read each result file once: store the rows the events missed (to be logged like
        the others) and attach the file to the run."""
        done = self.store.logged_artifacts(state.job_id)
        files = state.job.get("result_files")
        for file_id in files if isinstance(files, list) else []:
            if not isinstance(file_id, str) or f"results:{file_id}" in done:
                continue
            try:
                content = self._file_content(file_id)
            except JobNotFound:
                log.warning("results.missing", job_id=state.job_id, file_id=file_id)
                continue
            self._reconcile(state.job_id, file_id, content)
            self._give(state, mapping.results_artifact(state.job_id, file_id, content), done)

    def _reconcile(self, job_id: str, file_id: str, content: bytes) -> None:
        try:
            rows = results.parse(content)
        except results.ResultFileError as error:
            log.warning("results.unreadable", job_id=job_id, file_id=file_id, error=str(error))
            return
        seen = self.store.event_steps(job_id)
        missed = results.missed(rows, seen)
        if missed:
            self.store.add_events(job_id, [result_row_event(file_id, row) for row in missed])
            log.info("results.filled_in", job_id=job_id, steps=len(missed))
