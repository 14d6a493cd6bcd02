"""Lineage links between runs: a job fine-tuned from a model another job made uses that job's
model (or checkpoint) artifact, so that W&B's lineage graph shows job -> model -> job.

The rule that makes a backfill in any order end with the same graph: a link is made once
both runs exist and the parent's run is finished (its artifacts are then in W&B), and the
store records it (artifact key ``parent:<job>:<step|model>`` of the child), so it is made
once. When the child is still open, the link goes into its current segment; when the child
finished before its parent was seen, the child's run is reopened briefly (a new segment,
resumed online) to take the link, its config, summary and tag, then finished again with its
job's exit code. Offline, wandb cannot use artifacts ("Cannot use artifact when in offline
mode"): the config, summary and tag carry the link, and the link counts as made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from bridge import lineage, mapping
from bridge.errors import SinkUnavailable
from bridge.lineage import ModelIndex, Parent
from bridge.mapping import RunSpec
from bridge.ports import JobState, Json, RunSink, StateStore

log = structlog.get_logger(__name__)

SpecOf = Callable[[Json], RunSpec]


class Links:
    """One source's side of lineage: indexes jobs as they are seen, links children."""

    def __init__(self, source: str, sink: RunSink, store: StateStore) -> None:
        self.source = source
        self.sink = sink
        self.store = store
        self._index: ModelIndex | None = None
        self._indexed_at = float("-inf")
        self.refresh_after = 60.0
        # The daemon's look at stale jobs calls ``saw`` from a thread of its own while the
        # cycle reads and re-indexes: additions to the index take turns.
        self._lock = threading.Lock()

    @property
    def index(self) -> ModelIndex:
        with self._lock:
            if self._index is None:
                self._index = ModelIndex(state.job for state in self.store.all_jobs())
                self._indexed_at = time.monotonic()
            return self._index

    def saw(self, job: Json) -> None:
        index = self.index
        with self._lock:
            index.add(job)

    def parent_of(self, job: Json) -> Parent | None:
        return self.index.parent_of(job)

    def annotate(self, spec: RunSpec, job: Json) -> RunSpec:
        return lineage.annotate(spec, self.parent_of(job))

    def summary(self, job: Json) -> Json:
        parent = self.parent_of(job)
        return lineage.fields(parent) if parent is not None else {}

    def link(self, state: JobState, spec_of: SpecOf) -> None:
        """Link an open run to its parent, if the parent's run is done and not linked yet."""
        parent = self._due(state)
        if parent is None:
            return
        self._use(state.job_id, parent, spec_of)

    def _due(self, state: JobState) -> Parent | None:
        parent = self.parent_of(state.job)
        if parent is None or lineage.link_key(parent) in self.store.logged_artifacts(state.job_id):
            return None
        made = self.store.get_job(parent.job_id)
        if made is None or made.run_state not in ("finished", "skipped"):
            return None  # its artifacts are not in W&B yet: linked once it finishes
        return parent

    def _use(self, run_id: str, parent: Parent, spec_of: SpecOf) -> None:
        made = self.store.get_job(parent.job_id)
        if made is not None and made.run_state == "finished":
            path = lineage.artifact_path(parent, spec_of(made.job))
            self.sink.use_artifact(run_id, path, "model")
        self.store.mark_artifact(run_id, lineage.link_key(parent))
        log.info("lineage.linked", job_id=run_id, parent=parent.job_id, artifact=parent.artifact)

    def link_children(self, parent_state: JobState, spec_of: SpecOf) -> None:
        """A parent's run just finished: link its children of this source whose runs
        finished before (reopened briefly); open children link in their next write."""
        model = parent_state.job.get("fine_tuned_model")
        if not isinstance(model, str):
            return
        for child_id in sorted(self.index.children_of(model)):
            child = self.store.get_job(child_id)
            if child is not None and child.source == self.source:
                self.relink(child, spec_of)

    def relink(self, child: JobState, spec_of: SpecOf) -> None:
        """Reopen a finished child's run to add its parent's link, config, summary and tag."""
        if child.run_state != "finished" or self.sink.is_open(child.job_id):
            return
        parent = self._due(child)
        if parent is None:
            return
        try:
            self.sink.open(spec_of(child.job))
            self.sink.update_config(child.job_id, lineage.fields(parent))
            self.sink.update_summary(child.job_id, lineage.fields(parent))
            self._use(child.job_id, parent, spec_of)
            self.sink.finish(child.job_id, mapping.exit_code(child.status))
        except SinkUnavailable as error:
            log.warning("lineage.link_later", job_id=child.job_id, error=str(error))
            if self.sink.is_open(child.job_id):
                self.sink.finish(child.job_id, mapping.exit_code(child.status))

    def sweep(self, spec_of: SpecOf) -> None:
        """Now and then (every ``refresh_after`` seconds): index the store again (jobs other
        sources and replicas recorded) and link this source's finished children whose parent
        is now known."""
        if time.monotonic() - self._indexed_at < self.refresh_after:
            return
        states = self.store.all_jobs()
        index = self.index
        with self._lock:
            # Added to, not rebuilt: a job seen meanwhile (stored after ``states`` was read)
            # stays indexed.
            for state in states:
                index.add(state.job)
            self._indexed_at = time.monotonic()
        for state in states:
            if state.source == self.source and state.run_state == "finished":
                self.relink(state, spec_of)
