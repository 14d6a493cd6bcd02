"""Which jobs a source takes (filters) and where their runs go (routes). Pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.evals.bounds import EvalOverrides
from bridge.mapping import WandbDefaults


def _matches_any(patterns: Sequence[str] | None, value: object) -> bool:
    if patterns is None:
        return True
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _metadata_matches(wanted: Mapping[str, str] | None, job: Mapping[str, Any]) -> bool:
    if not wanted:
        return True
    metadata = job.get("metadata")
    return isinstance(metadata, Mapping) and all(metadata.get(k) == v for k, v in wanted.items())


class JobFilter(BaseModel):
    """Jobs a source takes. ``metadata`` is also sent to the API as its list filter; model and
    suffix take globs (``gpt-4o-mini*``); ``created_after`` is a date or an ISO time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: dict[str, str] | None = None
    models: list[str] | None = None
    suffixes: list[str] | None = None
    created_after: datetime | None = None

    @field_validator("created_after", mode="before")
    @classmethod
    def _date_is_midnight_utc(cls, value: object) -> object:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value

    @property
    def created_after_ts(self) -> float | None:
        if self.created_after is None:
            return None
        moment = self.created_after
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    def too_old(self, job: Mapping[str, Any]) -> bool:
        """Older than ``created_after``: so is every job after it in a newest-first list."""
        limit = self.created_after_ts
        created = job.get("created_at")
        return limit is not None and isinstance(created, int | float) and created < limit

    def accepts(self, job: Mapping[str, Any]) -> bool:
        suffix = job.get("user_provided_suffix") or job.get("suffix")
        return (
            not self.too_old(job)
            and _metadata_matches(self.metadata, job)
            and _matches_any(self.models, job.get("model"))
            and _matches_any(self.suffixes, suffix)
        )


class Route(EvalOverrides):
    """Where the runs of matching jobs go (the first matching route wins; a job's own W&B
    integration settings win over any route), and the bounds of their samples when the route
    sets them (``eval_samples``, ...; see :mod:`bridge.evals.bounds`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: dict[str, str] | None = None
    models: list[str] | None = None
    project: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)

    def matches(self, job: Mapping[str, Any]) -> bool:
        return _metadata_matches(self.metadata, job) and _matches_any(self.models, job.get("model"))


def destination(
    job: Mapping[str, Any], defaults: WandbDefaults, routes: Sequence[Route]
) -> WandbDefaults:
    for route in routes:
        if route.matches(job):
            return WandbDefaults(
                project=route.project or defaults.project,
                entity=route.entity or defaults.entity,
                extra_tags=(*defaults.extra_tags, *route.tags),
                app_url=defaults.app_url,
            )
    return defaults
