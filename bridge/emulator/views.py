"""API objects (jobs, events, checkpoints, files) as a job looks at a given emulated time."""

from __future__ import annotations

import base64
from typing import Any

from bridge.emulator import ids, metrics
from bridge.emulator.timeline import JobPlan, Timeline

CHECKPOINTS_KEPT = 3
NULL_ERROR: dict[str, str | None] = {"code": None, "message": None, "param": None}


def hyperparameters(plan: JobPlan, *, concrete: bool) -> dict[str, Any]:
    """The method's hyperparameters: "auto" for those not chosen until the job runs."""
    job = plan.job
    chosen: dict[str, Any] = {
        "n_epochs": job.n_epochs,
        "batch_size": job.batch_size,
        "learning_rate_multiplier": 1.8,
    }
    if job.method == "dpo":
        chosen["beta"] = 0.1
    if job.method == "reinforcement":
        chosen |= {
            "compute_multiplier": 1.0,
            "eval_interval": metrics.eval_interval(job),
            "eval_samples": 1,
            "reasoning_effort": "medium",
        }
    chosen |= {k: v for k, v in job.hyperparameters.items() if k in chosen}
    if concrete:
        return chosen
    return {k: job.hyperparameters.get(k, "auto") for k in chosen}


def _grader(name: str, kind: str) -> dict[str, Any]:
    if kind == "python":
        return {
            "type": "python",
            "name": name,
            "source": "def grade(sample, item):\n    return 1.0",
        }
    return {
        "type": "string_check",
        "name": name,
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_answer}}",
        "operation": "eq",
    }


def method_object(plan: JobPlan, *, concrete: bool) -> dict[str, Any]:
    """`job.method`: the type and, under it, hyperparameters (and the RFT grader)."""
    job = plan.job
    body: dict[str, Any] = {"hyperparameters": hyperparameters(plan, concrete=concrete)}
    if job.method == "reinforcement":
        graders = [
            _grader(name, metrics.GRADER_TYPES[i % len(metrics.GRADER_TYPES)])
            for i, name in enumerate(job.graders)
        ]
        body["grader"] = (
            graders[0]
            if len(graders) == 1
            else {
                "type": "multi",
                "name": "combined",
                "graders": {g["name"]: g for g in graders},
                "calculate_output": " + ".join(f"0.5 * {g['name']}" for g in graders),
            }
        )
    return {"type": job.method, job.method: body}


def _integrations(plan: JobPlan) -> list[dict[str, Any]]:
    result = []
    for integration in plan.job.integrations:
        item = dict(integration)
        if item.get("type") == "wandb" and isinstance(item.get("wandb"), dict):
            item["wandb"] = {"run_id": plan.id, **item["wandb"]}
        result.append(item)
    return result


def job_object(plan: JobPlan, timeline: Timeline, now: float) -> dict[str, Any]:
    """`fine_tuning.job` as it reads at `now`."""
    job = plan.job
    status = timeline.status_at(now) or "validating_files"
    succeeded = status == "succeeded"
    concrete = timeline.started_at is not None and timeline.started_at <= now
    running = status == "running"
    top = hyperparameters(plan, concrete=concrete)
    return {
        "id": plan.id,
        "object": "fine_tuning.job",
        "created_at": int(plan.created),
        "error": timeline.error if status == "failed" else dict(NULL_ERROR),
        "fine_tuned_model": plan.fine_tuned_model if succeeded else None,
        "finished_at": int(timeline.finished_at)
        if status in ("succeeded", "failed", "cancelled") and timeline.finished_at is not None
        else None,
        "hyperparameters": {
            k: top[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
        },
        "model": job.model,
        "organization_id": None if job.azure else plan.organization_id,
        "result_files": [plan.result_file] if succeeded else [],
        "seed": plan.seed,
        "status": status,
        "trained_tokens": job.n_steps * job.batch_size * 512 if succeeded else None,
        "training_file": plan.training_file,
        "validation_file": plan.validation_file,
        "estimated_finish": int(timeline.nominal_finish + timeline.delay_at(now))
        if running
        else None,
        "integrations": _integrations(plan) or None,
        "metadata": dict(job.metadata) or None,
        "method": method_object(plan, concrete=concrete),
        "suffix": job.suffix,
        "user_provided_suffix": job.suffix,
        "usage_metrics": None,
        "shared_with_openai": False,
        "eval_id": None,
    }


def events_newest_first(plan: JobPlan, timeline: Timeline, now: float) -> list[dict[str, Any]]:
    """The events whose time has passed, newest first."""
    visible = [(i, e) for i, e in enumerate(timeline.events) if e.time <= now]
    return [
        {
            "id": ids.event_id(plan.id, i),
            "object": "fine_tuning.job.event",
            "created_at": int(event.time),
            "level": event.level,
            "message": event.message,
            "data": event.data if event.data is not None else {},
            "type": event.type,
        }
        for i, event in reversed(visible)
    ]


def checkpoints_newest_first(plan: JobPlan, timeline: Timeline, now: float) -> list[dict[str, Any]]:
    """The checkpoints created by `now`, newest first, keeping only the last few epochs'."""
    visible = [c for c in timeline.checkpoints if c.time <= now][-CHECKPOINTS_KEPT:]
    return [
        {
            "id": ids.checkpoint_id(plan.id, c.step),
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(c.time),
            "fine_tuned_model_checkpoint": plan.checkpoint_model(c.step),
            "fine_tuning_job_id": plan.id,
            "metrics": metrics.checkpoint_metrics(plan.series[c.step - 1]),
            "step_number": c.step,
        }
        for c in reversed(visible)
    ]


def result_content(plan: JobPlan) -> bytes:
    """The result file's bytes: a CSV, base64-encoded when the scenario says so."""
    csv = metrics.result_csv(plan.series).encode()
    return base64.b64encode(csv) if plan.job.result_csv_base64 else csv


def training_content(plan: JobPlan, *, validation: bool = False) -> bytes:
    """A small stand-in for the uploaded JSONL file."""
    kind = "validation" if validation else "training"
    line = (
        '{"messages": [{"role": "user", "content": "%s example %d"}, '
        '{"role": "assistant", "content": "ok"}]}'
    )
    return "".join(line % (kind, i) + "\n" for i in range(10)).encode()


def file_object(
    file_id: str, filename: str, purpose: str, created: float, size: int
) -> dict[str, Any]:
    """`file` object."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(created),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
