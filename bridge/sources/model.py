"""The one job model every source produces, whatever its provider: what the mapping, the
engine, the store, the webhooks and the chat messages read.

A source (``bridge.sources.<provider>``) turns its API's objects into plain JSON dicts of the
shapes below, and only those: nothing after the source boundary reads a provider's own fields,
except through ``raw`` (the provider's object as it came), which the mapping copies into the
run's config as the job's other scalar fields.

A **job** (:class:`Job`, stored as its ``model_dump()``):
    ``id`` (the W&B run id too: letters, digits, ``-``, ``_``, ``.``), ``provider``
    (``openai``, ``together``, ``fireworks``), ``status`` (the bridge's vocabulary,
    :data:`STATUSES`), ``provider_status`` (the provider's own word), ``model`` (the base model),
    ``created_at`` / ``finished_at`` / ``estimated_finish`` (Unix seconds), ``fine_tuned_model``,
    ``trained_tokens``, ``error`` (``{code, message, param}``, or None), ``hyperparameters``,
    ``method`` (``{"type": "supervised"|"dpo"|"reinforcement", ...}``), ``seed``, ``suffix``,
    ``metadata`` (labels), ``integrations`` (the provider's own W&B integration, in OpenAI's
    ``[{"type": "wandb", "wandb": {project, entity, name, tags}}]`` shape), ``training_file``,
    ``validation_file``, ``result_files`` (file ids :meth:`JobSource.file_content` reads),
    ``cost_usd`` (what the provider reports, if it does), ``raw``.

An **event** (newest first in ``event_pages``; ids unique per job and stable across reads):
    a metric point ``{"id", "type": "metrics", "created_at", "data": {"step": int, <metric>:
    number, ...}}`` (nested data flattened by the mapping), or a message ``{"id", "type":
    "message", "level", "created_at", "message"}``.

A **checkpoint**: ``{"id", "step_number", "fine_tuned_model_checkpoint" (the model reference),
"metrics": {...}, "created_at"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

log = structlog.get_logger(__name__)

Json = dict[str, Any]
Provider = Literal["openai", "together", "fireworks"]

STATUSES = (
    "validating_files",
    "queued",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
)
"""The bridge's status vocabulary (OpenAI's words, which its webhooks also use)."""


class JobError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str | None = None
    message: str | None = None
    param: str | None = None


class Job(BaseModel):
    """A fine-tuning job as every source gives it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: Provider
    status: str
    provider_status: str
    model: str | None = None
    created_at: int | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    method: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    training_file: str | None = None
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    cost_usd: float | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> Json:
        return self.model_dump(mode="json")


_said: set[tuple[str, str]] = set()


def bridge_status(provider: str, word: object, table: Mapping[str, str]) -> str:
    """The bridge's status for a provider's status word (matched case-insensitively). An
    unknown word maps to ``running`` (a job the bridge keeps watching, never one it closes),
    said once per provider and word."""
    text = str(word or "").strip()
    found = table.get(text.lower())
    if found is not None:
        return found
    if (provider, text) not in _said:
        _said.add((provider, text))
        log.warning(
            "source.unknown_status",
            provider=provider,
            status=text,
            detail="kept as provider_status; watched as running until it changes",
        )
    return "running"
