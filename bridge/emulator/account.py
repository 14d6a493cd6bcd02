"""The emulated account: its jobs and files, read at the emulated "now". Thread-safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.emulator import ids, views
from bridge.emulator.create_params import job_from_request
from bridge.emulator.errors import ApiError, not_found
from bridge.emulator.paging import page, parse_limit
from bridge.emulator.scenario import JobScenario, Scenario
from bridge.emulator.timeline import (
    TERMINAL,
    Intervention,
    InterventionKind,
    JobPlan,
    Timeline,
    build_timeline,
)

JOBS_PAGE = 20
EVENTS_PAGE = 20
CHECKPOINTS_PAGE = 10


class Clock:
    """Emulated Unix time: starts at `start` and runs `scale` times as fast as real time."""

    def __init__(self, start: float, scale: float) -> None:
        self.start = start
        self.scale = scale
        self._origin = time.monotonic()
        self._skipped = 0.0

    def now(self) -> float:
        return self.start + (time.monotonic() - self._origin) * self.scale + self._skipped

    def restart(self) -> None:
        """Emulated time restarts from `start` (plus any advance) now."""
        self._origin = time.monotonic()

    def advance(self, seconds: float) -> None:
        """Jump emulated time forward."""
        self._skipped += seconds


@dataclass
class _Entry:
    plan: JobPlan
    interventions: list[Intervention]
    timeline: Timeline


@dataclass(frozen=True)
class _File:
    entry: _Entry
    kind: str  # "train", "valid" or "result"


class Account:
    """Jobs and files; every public method takes the lock and reads the clock once."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.scenario = scenario
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._files: dict[str, _File] = {}
        for job in scenario.jobs:
            self._add(job, clock.start + job.created_offset)

    def add(self, job: JobScenario) -> str:
        """Add a job created now (plus its `created_offset`); returns its id."""
        with self._lock:
            return self._add(job, self.clock.now() + job.created_offset).plan.id

    def _add(self, job: JobScenario, created: float) -> _Entry:
        index = len(self._entries)
        seed = self.scenario.seed
        plan = JobPlan(
            job=job,
            id=job.id or ids.job_id(seed, index, azure=job.azure),
            index=index,
            created=created,
            seed=job.seed if job.seed is not None else ids.number("seed", seed, index),
            organization_id=self.scenario.organization_id,
            organization_name=self.scenario.organization_name,
        )
        if plan.id in self._entries:
            raise ValueError(f"duplicate job id {plan.id}")
        entry = _Entry(plan, [], build_timeline(plan, []))
        self._entries[plan.id] = entry
        self._files[plan.training_file] = _File(entry, "train")
        if plan.validation_file:
            self._files[plan.validation_file] = _File(entry, "valid")
        self._files[plan.result_file] = _File(entry, "result")
        return entry

    def _entry(self, job_id: str, now: float, provider: str = "openai") -> _Entry:
        entry = self._entries.get(job_id)
        if entry is None or entry.plan.created > now or entry.plan.job.provider != provider:
            raise not_found("fine_tuning_job", job_id, param="fine_tuning_job_id")
        return entry

    # For the other providers' APIs (``bridge.emulator.providers``): the same jobs and
    # timelines, read at one "now", each provider seeing only its own jobs.
    def jobs_of(self, provider: str) -> tuple[list[tuple[JobPlan, Timeline]], float]:
        """Every job of ``provider`` created by now (oldest first), and that now."""
        with self._lock:
            now = self.clock.now()
            found = [
                (e.plan, e.timeline)
                for e in self._entries.values()
                if e.plan.created <= now and e.plan.job.provider == provider
            ]
        found.sort(key=lambda item: (item[0].created, item[0].index))
        return found, now

    def job_of(self, provider: str, job_id: str) -> tuple[JobPlan, Timeline, float]:
        """One job of ``provider`` (404 when it has no such job yet), and the now it was read at."""
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now, provider)
            return entry.plan, entry.timeline, now

    def intervene_as(self, provider: str, job_id: str, kind: InterventionKind) -> None:
        """Cancel (or pause, resume) a job of ``provider`` now, whatever its status allows."""
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now, provider)
            entry.interventions.append(Intervention(now, kind))
            entry.timeline = build_timeline(entry.plan, entry.interventions)

    def create(self, body: Any) -> dict[str, Any]:
        """`POST /fine_tuning/jobs`."""
        job = job_from_request(body)
        with self._lock:
            now = self.clock.now()
            entry = self._add(job, now)
            return views.job_object(entry.plan, entry.timeline, now)

    def list_jobs(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /fine_tuning/jobs`: newest first, filtered by `metadata[k]=v`."""
        limit = parse_limit(query, JOBS_PAGE)
        wanted = {
            k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[")
        }
        only_null = query.get("metadata") == "null"
        with self._lock:
            now = self.clock.now()
            entries = [
                e
                for e in self._entries.values()
                if e.plan.created <= now and e.plan.job.provider == "openai"
            ]
            if only_null:
                entries = [e for e in entries if not e.plan.job.metadata]
            entries = [
                e
                for e in entries
                if all(e.plan.job.metadata.get(k) == v for k, v in wanted.items())
            ]
            entries.sort(key=lambda e: (int(e.plan.created), e.plan.index), reverse=True)
            jobs = [views.job_object(e.plan, e.timeline, now) for e in entries]
        return page(jobs, query.get("after"), limit)

    def retrieve(self, job_id: str) -> dict[str, Any]:
        """`GET /fine_tuning/jobs/{id}`."""
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now)
            return views.job_object(entry.plan, entry.timeline, now)

    def list_events(self, job_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /fine_tuning/jobs/{id}/events`: newest first."""
        limit = parse_limit(query, EVENTS_PAGE)
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now)
            events = views.events_newest_first(entry.plan, entry.timeline, now)
        return page(events, query.get("after"), limit)

    def list_checkpoints(self, job_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /fine_tuning/jobs/{id}/checkpoints`: newest first, last epochs only."""
        limit = parse_limit(query, CHECKPOINTS_PAGE)
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now)
            checkpoints = views.checkpoints_newest_first(entry.plan, entry.timeline, now)
        return page(checkpoints, query.get("after"), limit, with_ids=True)

    def intervene(self, job_id: str, kind: InterventionKind) -> dict[str, Any]:
        """`POST .../cancel`, `.../pause`, `.../resume`: 409 when the status does not allow it."""
        with self._lock:
            now = self.clock.now()
            entry = self._entry(job_id, now)
            status = entry.timeline.status_at(now) or "validating_files"
            allowed = {
                "cancel": status not in TERMINAL,
                "pause": status == "running",
                "resume": status == "paused",
            }[kind]
            if not allowed:
                raise ApiError(
                    409,
                    f"Cannot {kind} fine-tuning job {job_id}: its status is {status}.",
                    param="fine_tuning_job_id",
                    code="invalid_job_status",
                )
            entry.interventions.append(Intervention(now, kind))
            entry.timeline = build_timeline(entry.plan, entry.interventions)
            return views.job_object(entry.plan, entry.timeline, now)

    def _file(self, file_id: str, now: float) -> _File:
        found = self._files.get(file_id)
        if found is None or found.entry.plan.created > now:
            raise not_found("file", file_id, param="file_id")
        if found.kind == "result" and found.entry.timeline.status_at(now) != "succeeded":
            raise not_found("file", file_id, param="file_id")
        return found

    def _content(self, found: _File) -> bytes:
        if found.kind == "result":
            return views.result_content(found.entry.plan)
        return views.training_content(found.entry.plan, validation=found.kind == "valid")

    def file(self, file_id: str) -> dict[str, Any]:
        """`GET /files/{id}`."""
        with self._lock:
            now = self.clock.now()
            found = self._file(file_id, now)
            plan, timeline = found.entry.plan, found.entry.timeline
            size = len(self._content(found))
        if found.kind == "result":
            created = timeline.finished_at or now
            return views.file_object(
                file_id, "step_metrics.csv", "fine-tune-results", created, size
            )
        name = "validation.jsonl" if found.kind == "valid" else "train.jsonl"
        return views.file_object(file_id, name, "fine-tune", plan.created - 60, size)

    def file_content(self, file_id: str) -> bytes:
        """`GET /files/{id}/content`."""
        with self._lock:
            return self._content(self._file(file_id, self.clock.now()))

    def file_id_of(self, lowered: str) -> str:
        """The file whose id, lowercased, is ``lowered`` (Fireworks' dataset ids are the
        emulator's file ids in lower case)."""
        with self._lock:
            found = next((f for f in self._files if f.lower() == lowered), None)
        if found is None:
            raise not_found("file", lowered, param="file_id")
        return found

    def now(self) -> float:
        return self.clock.now()
