"""OpenAI's (and Azure OpenAI's, and compatible APIs') fine-tuning job JSON to the job model.
Pure: no I/O. OpenAI's words are the model's, so this mostly keeps fields and checks types;
what Azure's older API versions say (``pending``, ``notRunning``...) maps to the vocabulary.
Events and checkpoints are in the model's shapes already and pass through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.sources.model import STATUSES, Job, JobError, Json, Provider, bridge_status

PROVIDER: Provider = "openai"

STATUS_WORDS: dict[str, str] = {
    **{status: status for status in STATUSES},
    # Azure OpenAI's dated API versions, and spellings seen from compatible servers.
    "pending": "queued",
    "notrunning": "queued",
    "created": "validating_files",
    "validating": "validating_files",
    "canceled": "cancelled",
    "canceling": "running",
    "cancelling": "running",
    "completed": "succeeded",
    "error": "failed",
}


def job_model(raw: Mapping[str, Any]) -> Json:
    """The job model of one job object (``raw`` keeps the object as it came)."""
    job = Job(
        id=str(raw.get("id")),
        provider=PROVIDER,
        status=bridge_status(PROVIDER, raw.get("status"), STATUS_WORDS),
        provider_status=str(raw.get("status") or "")[:64],
        model=_text(raw.get("model")),
        created_at=_int(raw.get("created_at")),
        finished_at=_int(raw.get("finished_at")),
        estimated_finish=_int(raw.get("estimated_finish")),
        fine_tuned_model=_text(raw.get("fine_tuned_model")),
        trained_tokens=_int(raw.get("trained_tokens")),
        error=_error(raw.get("error")),
        hyperparameters=_dict(raw.get("hyperparameters")),
        method=_dict(raw.get("method")),
        seed=_int(raw.get("seed")),
        suffix=_text(raw.get("suffix")),
        metadata=_labels(raw.get("metadata")),
        integrations=_integrations(raw.get("integrations")),
        training_file=_text(raw.get("training_file")),
        validation_file=_text(raw.get("validation_file")),
        result_files=[f for f in _list(raw.get("result_files")) if isinstance(f, str)],
        raw=dict(raw),
    )
    return job.to_json()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return int(value)
    except (OverflowError, ValueError):  # inf, nan
        return None


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _labels(value: object) -> dict[str, str] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    return {str(k): str(v) for k, v in value.items()}


def _integrations(value: object) -> list[dict[str, Any]] | None:
    items = [dict(item) for item in _list(value) if isinstance(item, Mapping)]
    return items or None


def _error(value: object) -> JobError | None:
    if not isinstance(value, Mapping):
        return None
    return JobError(
        code=_text(value.get("code")),
        message=_text(value.get("message")),
        param=_text(value.get("param")),
    )
