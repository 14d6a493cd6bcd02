"""Together AI's fine-tuning API (``/v1/fine-tunes``) over the emulator's account: the jobs
whose scenario says ``provider = "together"``, read from the same timelines as OpenAI's.

Everything is derived from the job's plan and timeline at the emulated "now", so two reads at
the same time give the same answer and the metric values are those of the plan's series:

- statuses in Together's words: ``pending`` (files being validated), ``queued``, ``running``,
  ``compressing`` then ``uploading`` (the finishing window of a job that succeeds),
  ``completed``, ``error``, ``cancel_requested`` (for ``CANCEL_SECONDS`` after a cancel), then
  ``cancelled``;
- the job list is every job, oldest first, in one answer (Together does not page it, nor does
  it say in which order it lists);
- ``/metrics``: records in chronological order, one ``train/*`` record per step and, at eval
  steps of a job with a validation file, an ``eval/loss`` record of the same step logged
  ``EVAL_DELAY`` of a step later; ``timestamp`` in nanoseconds; ``global_step_from`` and
  ``global_step_to`` filter by step;
- ``/events``: Together's event types (``job_pending``, ``job_start``, ``training_start``,
  ``checkpoint_save``, ``epoch_complete``, ``job_complete``, ``job_error``, ...), oldest first,
  with ISO-8601 ``created_at`` strings;
- ``/checkpoints``: the intermediate checkpoints of each epoch but the last, and the final one;
- chat completions at ``/v1/chat/completions``, the path OpenAI's API shares (served by
  :mod:`bridge.emulator.api`): a job's ``model_output_name`` answers as its fine-tuned model.

Jobs keep the ids their scenario gives (Together's are ``ft-`` and a UUID). The scenario's
``hyperparameters`` may set Together's own settings: ``learning_rate``, ``warmup_ratio``,
``lr_scheduler_type``, ``min_lr_ratio``, ``max_grad_norm``, ``weight_decay``, ``n_evals``,
``n_checkpoints``, ``train_on_inputs``, ``dpo_beta``, and ``lora_r`` (a LoRA job; with
``lora_alpha``, ``lora_dropout``, ``lora_trainable_modules``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.emulator import ids
from bridge.emulator.account import Account
from bridge.emulator.errors import ApiError, bad_param
from bridge.emulator.metrics import StepValues, epoch_end_steps
from bridge.emulator.timeline import JobPlan, Timeline
from bridge.httpserve import Request

PROVIDER = "together"
CANCEL_SECONDS = 2.0
EVAL_DELAY = 0.3
NANOS = 1_000_000_000
USER_ID = "user-emulator"

_JOB = r"/v1/fine-tunes/(?P<id>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern + r"\Z"), kind)
    for method, pattern, kind in [
        ("GET", r"/v1/fine-tunes", "together_list"),
        ("GET", _JOB, "together_retrieve"),
        ("GET", _JOB + "/events", "together_events"),
        ("GET", _JOB + "/checkpoints", "together_checkpoints"),
        ("GET", _JOB + "/metrics", "together_metrics"),
        ("POST", _JOB + "/cancel", "together_cancel"),
        ("GET", r"/v1/files/(?P<id>[^/]+)/content", "together_file_content"),
    ]
]

TERMINAL = frozenset({"completed", "error", "cancelled"})


def iso(seconds: float) -> str:
    """An emulated time as Together writes it: ISO 8601, milliseconds, ``Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def nanos(seconds: float) -> int:
    """A metrics record's ``timestamp``: nanoseconds (of a whole millisecond)."""
    return round(seconds * 1000) * (NANOS // 1000)


def _hyper(plan: JobPlan, name: str, default: Any) -> Any:
    return plan.job.hyperparameters.get(name, default)


def _is_lora(plan: JobPlan) -> bool:
    return "lora_r" in plan.job.hyperparameters


def _metric_times(timeline: Timeline) -> list[tuple[float, int]]:
    """(time, step) of each training step the timeline reaches."""
    return [
        (event.time, int(event.data["step"]))
        for event in timeline.events
        if event.type == "metrics" and event.data is not None
    ]


def _final_status(timeline: Timeline) -> str | None:
    statuses = [event.status for event in timeline.events if event.status]
    return statuses[-1] if statuses else None


def _finishing_window(timeline: Timeline) -> tuple[float, float] | None:
    """(last step, finish) of a job that succeeds: compressing, then uploading."""
    steps = _metric_times(timeline)
    if _final_status(timeline) != "succeeded" or not steps or timeline.finished_at is None:
        return None
    return steps[-1][0], timeline.finished_at


def status_at(timeline: Timeline, now: float) -> str:
    """The job's status in Together's words at ``now``."""
    status = timeline.status_at(now) or "validating_files"
    if status == "validating_files":
        return "pending"
    if status in ("running", "paused"):
        window = _finishing_window(timeline)
        if window is not None and window[0] <= now:
            return "compressing" if now < (window[0] + window[1]) / 2 else "uploading"
        return "running"
    if status == "cancelled":
        finished = timeline.finished_at or now
        return "cancel_requested" if now < finished + CANCEL_SECONDS else "cancelled"
    return {"succeeded": "completed", "failed": "error"}.get(status, status)


def model_output_name(plan: JobPlan) -> str:
    base = plan.job.model.rsplit("/", 1)[-1]
    suffix = f"-{plan.job.suffix}" if plan.job.suffix else ""
    return f"{plan.organization_name}/{base}{suffix}-{ids.token('model', plan.id, length=8)}"


def learning_rate_at(plan: JobPlan, step: int) -> float:
    """The scheduled learning rate: linear warmup, then linear (or cosine) decay."""
    n = plan.job.n_steps
    base = float(_hyper(plan, "learning_rate", 1e-5))
    warmup = round(float(_hyper(plan, "warmup_ratio", 0.0)) * n)
    floor = float(_hyper(plan, "min_lr_ratio", 0.0))
    if step <= warmup:
        return float(f"{base * step / warmup:.6g}")
    left = (n - step) / max(1, n - warmup)
    if _hyper(plan, "lr_scheduler_type", "linear") == "cosine":
        left = 0.5 * (1 + math.cos(math.pi * (1 - left)))
    return float(f"{base * (floor + (1 - floor) * left):.6g}")


def eval_steps(plan: JobPlan) -> set[int]:
    """The steps that log an ``eval/loss`` record (a job with a validation file only)."""
    if not plan.job.has_validation:
        return set()
    n = plan.job.n_steps
    n_evals = int(_hyper(plan, "n_evals", 3))
    if n_evals <= 0:
        return set()
    every = max(1, n // n_evals)
    return {step for step in range(every, n + 1, every)} | {n}


def _epoch(plan: JobPlan, step: int) -> float:
    return round(step * plan.job.n_epochs / plan.job.n_steps, 4)


def train_record(plan: JobPlan, values: StepValues, time: float) -> dict[str, Any]:
    grad_norm = 0.3 + 0.8 * values.train_loss / (1 + values.train_accuracy)
    return {
        "timestamp": nanos(time),
        "train/global_step": values.step,
        "train/epoch": _epoch(plan, values.step),
        "train/loss": values.train_loss,
        "train/grad_norm": round(grad_norm, 5),
        "train/learning_rate": learning_rate_at(plan, values.step),
    }


def eval_record(plan: JobPlan, values: StepValues, time: float) -> dict[str, Any]:
    return {
        "timestamp": nanos(time),
        "train/global_step": values.step,
        "train/epoch": _epoch(plan, values.step),
        "eval/loss": values.valid_loss,
    }


def metric_records(plan: JobPlan, timeline: Timeline) -> list[tuple[float, dict[str, Any]]]:
    """Every record the job will log, with its time, in chronological order."""
    evals = eval_steps(plan)
    end = timeline.finished_at
    records: list[tuple[float, dict[str, Any]]] = []
    for time, step in _metric_times(timeline):
        values = plan.series[step - 1]
        records.append((time, train_record(plan, values, time)))
        if step in evals and values.valid_loss is not None:
            at = time + EVAL_DELAY * plan.job.step_seconds
            at = min(at, end) if end is not None else at
            records.append((at, eval_record(plan, values, at)))
    records.sort(key=lambda item: item[0])
    return records


def _event(
    time: float, type_: str, message: str, level: str = "info", **fields: Any
) -> tuple[float, dict[str, Any]]:
    body: dict[str, Any] = {
        "object": "fine-tune-event",
        "created_at": iso(time),
        "level": level,
        "message": message,
        "type": type_,
        "param_count": 0,
        "token_count": 0,
        "total_steps": 0,
        "wandb_url": "",
        "step": 0,
        "checkpoint_path": "",
        "model_path": "",
        "hash": "",
    }
    body.update(fields)
    return time, body


def _wandb(plan: JobPlan) -> dict[str, Any] | None:
    for item in plan.job.integrations:
        if item.get("type") == "wandb" and isinstance(item.get("wandb"), dict):
            return dict(item["wandb"])
    return None


def wandb_url(plan: JobPlan) -> str | None:
    own = _wandb(plan)
    if own is None:
        return None
    entity = own.get("entity") or "emulator"
    return f"https://wandb.ai/{entity}/{own.get('project') or 'together'}/runs/{plan.id}"


def _start_events(plan: JobPlan, time: float) -> list[tuple[float, dict[str, Any]]]:
    job = plan.job
    found = [
        _event(time, "job_start", f"Job started at {iso(time)}"),
        _event(time, "model_downloading", f"Downloading model data for {job.model}"),
        _event(time, "model_download_complete", "Model data downloaded"),
        _event(time, "training_data_downloading", "Downloading training data"),
        _event(time, "training_data_download_complete", "Training data downloaded"),
    ]
    if job.has_validation:
        found.append(_event(time, "validation_data_downloading", "Downloading validation data"))
        found.append(
            _event(time, "validation_data_download_complete", "Validation data downloaded")
        )
    url = wandb_url(plan)
    if url is not None:
        found.append(_event(time, "wandb_init", f"W&B run initialized: {url}", wandb_url=url))
    found.append(
        _event(
            time,
            "training_start",
            f"Training started for model {job.model}",
            total_steps=job.n_steps,
        )
    )
    return found


def _end_events(
    plan: JobPlan, timeline: Timeline, time: float, status: str
) -> list[tuple[float, dict[str, Any]]]:
    if status == "failed":
        message = (timeline.error or {}).get("message") or "The job failed"
        return [_event(time, "job_error", message, level="error")]
    if status == "cancelled":
        return [
            _event(time, "cancel_requested", "Cancel requested"),
            _event(time + CANCEL_SECONDS, "job_stopped", "Job stopped"),
        ]
    window = _finishing_window(timeline)
    start = window[0] if window else time
    middle = (start + time) / 2
    name = model_output_name(plan)
    return [
        _event(start, "training_complete", "Training completed"),
        _event(start, "model_compressing", "Compressing output model"),
        _event(middle, "model_compression_complete", "Model compression complete"),
        _event(middle, "model_uploading", f"Uploading output model to {name}"),
        _event(time, "model_upload_complete", "Model upload complete", model_path=name),
        _event(time, "job_complete", f"Job finished at {iso(time)}"),
    ]


def events_of(plan: JobPlan, timeline: Timeline) -> list[tuple[float, dict[str, Any]]]:
    """Every event the job will have, with its time, oldest first."""
    found: list[tuple[float, dict[str, Any]]] = []
    ends = set(epoch_end_steps(plan.job))
    for event in timeline.events:
        if event.status == "validating_files":
            found.append(_event(event.time, "job_pending", "Fine-tune request created"))
        elif event.status == "queued":
            found.append(_event(event.time, "job_pending", "Job queued"))
        elif event.status == "running" and "resumed" not in event.message:
            found.extend(_start_events(plan, event.time))
        elif event.status in ("failed", "cancelled", "succeeded"):
            found.extend(_end_events(plan, timeline, event.time, event.status))
        elif event.type == "metrics" and event.data is not None:
            step = int(event.data["step"])
            if step in ends and step < plan.job.n_steps:
                found.append(
                    _event(
                        event.time,
                        "checkpoint_save",
                        f"New checkpoint saved at step {step}",
                        step=step,
                        checkpoint_path=_checkpoint_path(plan, step),
                    )
                )
            if step in ends:
                epoch = sorted(ends).index(step) + 1
                found.append(
                    _event(event.time, "epoch_complete", f"Epoch {epoch} completed", step=step)
                )
    found.sort(key=lambda item: item[0])
    return found


def _checkpoint_path(plan: JobPlan, step: int | None) -> str:
    tail = f"checkpoint-{step}" if step is not None else "final"
    return f"s3://together-emulator/finetune/{plan.id}/{tail}"


def checkpoints_of(plan: JobPlan, timeline: Timeline, now: float) -> list[dict[str, Any]]:
    """Intermediate checkpoints (each epoch but the last) and, once completed, the final one."""
    kind = "adapter" if _is_lora(plan) else "model"
    found = [
        {
            "checkpoint_type": f"Intermediate checkpoint step {c.step}",
            "created_at": iso(c.time),
            "path": _checkpoint_path(plan, c.step),
            "step": c.step,
            "checkpoint": kind,
            "object_name": f"{plan.organization_name}/{plan.id}-step-{c.step}",
        }
        for c in timeline.checkpoints
        if c.time <= now and c.step < plan.job.n_steps
    ]
    if status_at(timeline, now) == "completed" and timeline.finished_at is not None:
        found.append(
            {
                "checkpoint_type": "Final",
                "created_at": iso(timeline.finished_at),
                "path": _checkpoint_path(plan, None),
                "step": plan.job.n_steps,
                "checkpoint": kind,
                "object_name": model_output_name(plan),
            }
        )
    return found


def _training_type(plan: JobPlan) -> dict[str, Any]:
    if not _is_lora(plan):
        return {"type": "Full"}
    return {
        "type": "Lora",
        "lora_r": _hyper(plan, "lora_r", 8),
        "lora_alpha": _hyper(plan, "lora_alpha", 16),
        "lora_dropout": _hyper(plan, "lora_dropout", 0.0),
        "lora_trainable_modules": _hyper(plan, "lora_trainable_modules", "all-linear"),
    }


def _training_method(plan: JobPlan) -> dict[str, Any]:
    if plan.job.method == "dpo":
        return {"method": "dpo", "dpo_beta": _hyper(plan, "dpo_beta", 0.1)}
    return {"method": "sft", "train_on_inputs": _hyper(plan, "train_on_inputs", "auto")}


def job_object(
    plan: JobPlan, timeline: Timeline, now: float, *, with_events: bool = False
) -> dict[str, Any]:
    """A Together fine-tune job as it reads at ``now`` (``with_events``: as retrieved)."""
    job = plan.job
    status = status_at(timeline, now)
    visible = [time for time, _ in events_of(plan, timeline) if time <= now]
    done = status == "completed"
    steps_done = sum(1 for time, _ in _metric_times(timeline) if time <= now)
    own = _wandb(plan) or {}
    body: dict[str, Any] = {
        "id": plan.id,
        "object": "finetune",
        "created_at": iso(plan.created),
        "updated_at": iso(visible[-1] if visible else plan.created),
        "started_at": iso(timeline.started_at)
        if timeline.started_at is not None and timeline.started_at <= now
        else None,
        "status": status,
        "user_id": USER_ID,
        "owner_address": USER_ID,
        "model": job.model,
        "model_output_name": model_output_name(plan) if done else None,
        "model_output_path": _checkpoint_path(plan, None) if done else None,
        "training_file": plan.training_file,
        "validation_file": plan.validation_file or "",
        "n_epochs": job.n_epochs,
        "n_checkpoints": _hyper(plan, "n_checkpoints", 1),
        "n_evals": int(_hyper(plan, "n_evals", 3)) if job.has_validation else 0,
        "batch_size": job.batch_size,
        "learning_rate": float(_hyper(plan, "learning_rate", 1e-5)),
        "lr_scheduler": {
            "lr_scheduler_type": _hyper(plan, "lr_scheduler_type", "linear"),
            "lr_scheduler_args": {"min_lr_ratio": float(_hyper(plan, "min_lr_ratio", 0.0))},
        },
        "warmup_ratio": float(_hyper(plan, "warmup_ratio", 0.0)),
        "max_grad_norm": float(_hyper(plan, "max_grad_norm", 1.0)),
        "weight_decay": float(_hyper(plan, "weight_decay", 0.0)),
        "training_type": _training_type(plan),
        "training_method": _training_method(plan),
        "random_seed": job.seed,
        "suffix": job.suffix,
        "token_count": steps_done * job.batch_size * 512,
        "param_count": 8_030_261_248,
        "total_price": job.n_steps * job.batch_size * 512 * 3_000 if done else 0,
        "epochs_completed": sum(1 for s in epoch_end_steps(job) if s <= steps_done),
        "wandb_project_name": own.get("project"),
        "wandb_name": own.get("name"),
        "wandb_entity": own.get("entity"),
        "wandb_url": wandb_url(plan) if timeline.started_at is not None else None,
    }
    if with_events:
        body["events"] = [event for time, event in events_of(plan, timeline) if time <= now]
    return body


def _step_bound(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_param(name, f"{name} must be an integer, got {raw!r}") from None


class TogetherApi:
    """:class:`bridge.emulator.api.ProviderApi` for Together's fine-tuning paths."""

    routes: Sequence[tuple[str, re.Pattern[str], str]] = ROUTES

    def __init__(self, account: Account) -> None:
        self.account = account

    def tuned_models(self) -> set[str]:
        """``model_output_name`` of every Together job (its chat path is OpenAI's,
        ``/v1/chat/completions``, answered by :func:`bridge.emulator.chat.complete`)."""
        jobs, _ = self.account.jobs_of(PROVIDER)
        return {model_output_name(plan) for plan, _ in jobs}

    def dispatch(
        self, kind: str, params: dict[str, str], query: dict[str, str], request: Request
    ) -> Any:
        ident = params.get("id", "")
        if kind == "together_list":
            jobs, now = self.account.jobs_of(PROVIDER)
            return {"data": [job_object(plan, timeline, now) for plan, timeline in jobs]}
        if kind == "together_file_content":
            return self.account.file_content(ident)
        if kind == "together_cancel":
            return self._cancel(ident)
        plan, timeline, now = self.account.job_of(PROVIDER, ident)
        if kind == "together_retrieve":
            return job_object(plan, timeline, now, with_events=True)
        if kind == "together_events":
            return {"data": [event for time, event in events_of(plan, timeline) if time <= now]}
        if kind == "together_checkpoints":
            return {"data": checkpoints_of(plan, timeline, now)}
        return {"metrics": self._metrics(plan, timeline, now, query)}

    def _metrics(
        self, plan: JobPlan, timeline: Timeline, now: float, query: dict[str, str]
    ) -> list[dict[str, Any]]:
        low = _step_bound(query, "global_step_from")
        high = _step_bound(query, "global_step_to")
        return [
            record
            for time, record in metric_records(plan, timeline)
            if time <= now
            and (low is None or record["train/global_step"] >= low)
            and (high is None or record["train/global_step"] <= high)
        ]

    def _cancel(self, ident: str) -> dict[str, Any]:
        plan, timeline, now = self.account.job_of(PROVIDER, ident)
        status = status_at(timeline, now)
        if status in TERMINAL or status == "cancel_requested":
            raise ApiError(400, f"Fine-tune job {ident} cannot be cancelled: it is {status}")
        self.account.intervene_as(PROVIDER, ident, "cancel")
        plan, timeline, now = self.account.job_of(PROVIDER, ident)
        return job_object(plan, timeline, now)
