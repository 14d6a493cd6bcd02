"""Per-step metric values (plausible, noisy, deterministic) and the `data` of metrics events."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from bridge.emulator.scenario import JobScenario

GRADER_TYPES = ("string_check", "python", "score_model", "text_similarity")


@dataclass(frozen=True)
class GraderScore:
    """One grader's rewards at one step."""

    name: str
    type: str
    train: float
    valid: float | None


@dataclass(frozen=True)
class StepValues:
    """Every metric the emulator knows for one step; what is shown depends on the method."""

    step: int
    train_loss: float
    train_accuracy: float
    valid_loss: float | None
    valid_accuracy: float | None
    full_valid_loss: float | None
    full_valid_accuracy: float | None
    dpo_margin: float
    chosen_logprob: float
    rejected_logprob: float
    graders: tuple[GraderScore, ...]


def epoch_end_steps(job: JobScenario) -> list[int]:
    """The step that closes each epoch."""
    return [round(job.n_steps * epoch / job.n_epochs) for epoch in range(1, job.n_epochs + 1)]


def eval_interval(job: JobScenario) -> int:
    """How often (in steps) an RFT job evaluates on its validation set."""
    value = job.hyperparameters.get("eval_interval")
    return value if isinstance(value, int) and value > 0 else max(1, job.n_steps // 10)


def _r(value: float) -> float:
    return round(value, 5)


def _curve(progress: float, start: float, end: float, speed: float) -> float:
    return end + (start - end) * math.exp(-speed * progress)


def compute_series(job: JobScenario, seed: int) -> list[StepValues]:
    """Values for steps 1..n_steps; the same job and seed always give the same values."""
    rng = random.Random(seed)
    start, floor, speed = 2.2 + rng.random() * 0.6, 0.15 + rng.random() * 0.2, 3 + rng.random() * 2
    ends = set(epoch_end_steps(job))
    interval = eval_interval(job)
    grader_ends = [0.6 + rng.random() * 0.35 for _ in job.graders]
    margin_end = 3.5 + rng.random()
    series = []
    for step in range(1, job.n_steps + 1):
        p = step / job.n_steps
        loss = max(0.01, _curve(p, start, floor, speed) * (1 + rng.gauss(0, 0.06)))
        acc = min(0.999, max(0.0, 0.3 + 0.65 * (1 - math.exp(-speed * p)) + rng.gauss(0, 0.02)))
        valid = job.has_validation
        v_loss = _r(loss * (1.04 + rng.gauss(0, 0.04))) if valid else None
        v_acc = _r(min(0.999, acc * (0.98 + rng.gauss(0, 0.01)))) if valid else None
        at_end = valid and step in ends
        margin = _curve(p, 0.0, margin_end, speed) * (1 + rng.gauss(0, 0.05))
        chosen = -60 + 25 * p + rng.gauss(0, 2)
        evaluate = valid and (step % interval == 0 or step == job.n_steps)
        graders = tuple(
            GraderScore(
                name=name,
                type=GRADER_TYPES[i % len(GRADER_TYPES)],
                train=_r(_clamp01(_curve(p, 0.2, end, speed) + rng.gauss(0, 0.03))),
                valid=_r(_clamp01(_curve(p, 0.2, end, speed) + rng.gauss(0, 0.03)))
                if evaluate
                else None,
            )
            for i, (name, end) in enumerate(zip(job.graders, grader_ends, strict=True))
        )
        series.append(
            StepValues(
                step=step,
                train_loss=_r(loss),
                train_accuracy=_r(acc),
                valid_loss=v_loss,
                valid_accuracy=v_acc,
                full_valid_loss=_r(loss * 1.06) if at_end else None,
                full_valid_accuracy=_r(acc * 0.97) if at_end else None,
                dpo_margin=_r(margin),
                chosen_logprob=_r(chosen),
                rejected_logprob=_r(chosen - margin),
                graders=graders,
            )
        )
    return series


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _mean(values: list[float]) -> float:
    return _r(sum(values) / len(values))


def event_data(job: JobScenario, values: StepValues) -> dict[str, Any]:
    """The `data` of the metrics event for one step, shaped as the API shapes it per method."""
    if job.method == "reinforcement":
        return _reinforcement_data(job, values)
    data: dict[str, Any] = {"step": values.step}
    if not job.azure:
        data["total_steps"] = job.n_steps
    data["train_loss"] = values.train_loss
    data["train_mean_token_accuracy"] = values.train_accuracy
    if job.method == "dpo":
        data["train_dpo_margin"] = values.dpo_margin
        data["train_chosen_logprob"] = values.chosen_logprob
        data["train_rejected_logprob"] = values.rejected_logprob
    if values.valid_loss is not None:
        data["valid_loss"] = values.valid_loss
        data["valid_mean_token_accuracy"] = values.valid_accuracy
        if job.method == "dpo":
            data["valid_dpo_margin"] = _r(values.dpo_margin * 0.95)
    if values.full_valid_loss is not None:
        data["full_valid_loss"] = values.full_valid_loss
        data["full_valid_mean_token_accuracy"] = values.full_valid_accuracy
    return data


def _reinforcement_data(job: JobScenario, values: StepValues) -> dict[str, Any]:
    train = _mean([g.train for g in values.graders])
    valids = [g.valid for g in values.graders if g.valid is not None]
    valid = _mean(valids) if valids else None
    data: dict[str, Any] = {"step": values.step}
    if not job.azure:
        data["total_steps"] = job.n_steps
    data["scores"] = {
        "train_reward_mean": train,
        "valid_reward_mean": valid,
        "graders": [
            {
                "name": g.name,
                "type": g.type,
                "train_reward_mean": g.train,
                "valid_reward_mean": g.valid,
            }
            for g in values.graders
        ],
    }
    data["usage"] = {
        "completion_tokens_mean": _r(400 + 300 * values.train_accuracy),
        "reasoning_tokens_mean": _r(900 + 500 * values.train_accuracy),
        "prompt_tokens_mean": 512.0,
    }
    data["errors"] = {
        "sample_parse_error_rate": 0.0,
        "grader_error_rate": _r(0.02 * values.train_loss),
    }
    data["timing"] = {
        "step_seconds": job.step_seconds,
        "sampling_seconds": _r(job.step_seconds * 0.6),
        "grading_seconds": _r(job.step_seconds * 0.3),
    }
    data["train_reward_mean"] = train
    data["valid_reward_mean"] = valid
    data["train_mean_reward"] = train
    return data


def step_message(job: JobScenario, values: StepValues) -> str:
    """The human text of a metrics event."""
    if job.method == "reinforcement":
        train = _mean([g.train for g in values.graders])
        return f"Step {values.step}/{job.n_steps}: training reward={train:.4f}"
    text = f"Step {values.step}/{job.n_steps}: training loss={values.train_loss:.2f}"
    if values.valid_loss is not None:
        text += f", validation loss={values.valid_loss:.2f}"
    return text


def checkpoint_metrics(values: StepValues) -> dict[str, float | None]:
    """The `metrics` of a checkpoint object."""
    return {
        "step": float(values.step),
        "train_loss": values.train_loss,
        "train_mean_token_accuracy": values.train_accuracy,
        "valid_loss": values.valid_loss,
        "valid_mean_token_accuracy": values.valid_accuracy,
        "full_valid_loss": values.full_valid_loss,
        "full_valid_mean_token_accuracy": values.full_valid_accuracy,
    }


def result_csv(series: list[StepValues]) -> str:
    """The result file: one row per step."""
    lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    for v in series:
        cells = [v.step, v.train_loss, v.train_accuracy, v.valid_loss, v.valid_accuracy]
        lines.append(",".join("" if c is None else str(c) for c in cells))
    return "\n".join(lines) + "\n"
