"""Small builders of API-shaped jobs and events for the unit tests."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def job(job_id: str = "ftjob-1", status: str = "running", **extra: Any) -> Json:
    base: Json = {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "status": status,
        "training_file": "file-train",
        "validation_file": None,
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
        "seed": 42,
        "suffix": None,
        "metadata": None,
        "integrations": None,
        "error": {"code": None, "message": None, "param": None},
        "fine_tuned_model": None,
        "finished_at": None,
        "trained_tokens": None,
        "organization_id": "org-1",
        "result_files": [],
    }
    base.update(extra)
    return base


def metrics(event_id: str, step: int, created_at: int = 1_700_000_100, **data: Any) -> Json:
    payload: Json = {"step": step, "total_steps": 10, "train_loss": 1.0 / step, **data}
    return {
        "id": event_id,
        "object": "fine_tuning.job.event",
        "created_at": created_at,
        "level": "info",
        "type": "metrics",
        "message": f"Step {step}/10: training loss={1.0 / step:.2f}",
        "data": payload,
    }


def message(event_id: str, text: str, created_at: int = 1_700_000_050) -> Json:
    return {
        "id": event_id,
        "object": "fine_tuning.job.event",
        "created_at": created_at,
        "level": "info",
        "type": "message",
        "message": text,
        "data": {},
    }
