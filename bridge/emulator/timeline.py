"""The whole life of one job as timed events: a pure function of its plan and interventions.

Times are emulated Unix seconds (floats). Nothing here reads a clock: callers pick the events whose
time has passed. Interventions (pause, resume, cancel requested through the API) are inputs, so a
job's past never changes when one is added at "now".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from bridge.emulator import ids, metrics
from bridge.emulator.metrics import StepValues
from bridge.emulator.scenario import JobScenario

InterventionKind = Literal["pause", "resume", "cancel"]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Intervention:
    """A pause, resume or cancel at an emulated time; `by_scenario` marks the scripted pause."""

    time: float
    kind: InterventionKind
    by_scenario: bool = False


@dataclass(frozen=True)
class JobPlan:
    """A scenario job placed in time, with the names derived from it."""

    job: JobScenario
    id: str
    index: int
    created: float
    seed: int
    organization_id: str
    organization_name: str

    @cached_property
    def training_file(self) -> str:
        return self.job.training_file or ids.file_id("train", self.id)

    @cached_property
    def validation_file(self) -> str | None:
        if not self.job.has_validation:
            return None
        return self.job.validation_file or ids.file_id("valid", self.id)

    @cached_property
    def result_file(self) -> str:
        return ids.file_id("result", self.id)

    @cached_property
    def fine_tuned_model(self) -> str:
        if self.job.azure:
            return f"{self.job.model}.ft-{ids.token('model', self.id, length=32, alphabet=ids.HEX)}"
        suffix = self.job.suffix or ""
        jobhash = ids.token("model", self.id, length=8)
        return f"ft:{self.job.model}:{self.organization_name}:{suffix}:{jobhash}"

    def checkpoint_model(self, step: int) -> str:
        separator = "-" if self.job.azure else ":"
        return f"{self.fine_tuned_model}{separator}ckpt-step-{step}"

    @cached_property
    def series(self) -> list[StepValues]:
        return metrics.compute_series(self.job, self.seed)


@dataclass(frozen=True)
class TimedEvent:
    """An event and, when it changes it, the status the job enters."""

    time: float
    message: str
    level: str = "info"
    type: str = "message"
    data: dict[str, Any] | None = None
    status: str | None = None


@dataclass(frozen=True)
class TimedCheckpoint:
    time: float
    step: int


@dataclass
class Timeline:
    """Everything that will happen to a job, given the interventions known so far."""

    events: list[TimedEvent] = field(default_factory=list)
    checkpoints: list[TimedCheckpoint] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str | None] | None = None
    nominal_finish: float = 0.0
    delays: list[tuple[float, float]] = field(default_factory=list)

    def status_at(self, now: float) -> str | None:
        """The status at `now`, None before the job exists."""
        status = None
        for event in self.events:
            if event.time > now:
                break
            status = event.status or status
        return status

    def delay_at(self, now: float) -> float:
        """How far pauses have pushed the schedule back, as known at `now`."""
        return sum(delta for time, delta in self.delays if time <= now)


def build_timeline(plan: JobPlan, interventions: list[Intervention]) -> Timeline:
    """Play the job from creation to its end (or to an indefinite pause)."""
    builder = _Builder(plan, interventions)
    builder.play()
    return builder.timeline


class _Builder:
    def __init__(self, plan: JobPlan, interventions: list[Intervention]) -> None:
        self.plan = plan
        self.job = plan.job
        self.timeline = Timeline()
        self.pending = sorted(interventions, key=lambda i: i.time)
        self.shift = 0.0
        self.status = ""
        self.paused_since: float | None = None
        self.paused_by_scenario = False
        self.stopped = False

    def emit(self, time: float, message: str, **fields: Any) -> None:
        self.timeline.events.append(TimedEvent(time, message, **fields))
        self.status = fields.get("status") or self.status

    def at(self, nominal: float) -> float | None:
        """When a milestone nominally due at `nominal` happens; None if the job stopped first."""
        while not self.stopped:
            if self.paused_since is not None:
                self._wait_while_paused()
                continue
            due = nominal + self.shift
            if not self.pending or self.pending[0].time >= due:
                return due
            self._apply(self.pending.pop(0))
        return None

    def _apply(self, intervention: Intervention) -> None:
        if intervention.kind == "cancel":
            self.cancel(intervention.time)
        elif intervention.kind == "pause" and self.status == "running":
            self.pause(intervention.time, by_scenario=intervention.by_scenario)

    def _wait_while_paused(self) -> None:
        assert self.paused_since is not None
        while self.pending:
            intervention = self.pending.pop(0)
            if intervention.kind == "cancel":
                self.cancel(intervention.time)
                return
            if intervention.kind == "resume" and (
                not intervention.by_scenario or self.paused_by_scenario
            ):
                self.resume(intervention.time)
                return
        self.stopped = True  # paused until someone resumes it

    def pause(self, time: float, *, by_scenario: bool) -> None:
        self.emit(time, "Fine-tuning job paused", status="paused")
        self.paused_since, self.paused_by_scenario = time, by_scenario

    def resume(self, time: float) -> None:
        assert self.paused_since is not None
        self.emit(time, "Fine-tuning job resumed", status="running")
        delta = time - self.paused_since
        self.shift += delta
        self.timeline.delays.append((time, delta))
        self.paused_since = None

    def cancel(self, time: float) -> None:
        self.emit(time, "Job cancelled", status="cancelled")
        self.finish(time)

    def fail(self, time: float, *, in_validation: bool) -> None:
        job = self.job
        if in_validation:
            code = job.error_code or "invalid_training_file"
            message = job.error_message or (
                "The job failed due to an invalid training file. Expected file to have JSONL "
                "format, where every line is a valid JSON dictionary. Line 1 is not a dictionary."
            )
            param: str | None = "training_file"
        else:
            code = job.error_code or "server_error"
            message = job.error_message or (
                "The job failed due to an internal error. Please try again or contact support."
            )
            param = None
        self.timeline.error = {"code": code, "message": message, "param": param}
        self.emit(time, message, level="error", status="failed")
        self.finish(time)

    def finish(self, time: float) -> None:
        self.timeline.finished_at = time
        self.stopped = True

    def play(self) -> None:
        plan, job = self.plan, self.job
        nominal = plan.created
        self.timeline.nominal_finish = (
            nominal
            + job.validate_seconds
            + job.queue_seconds
            + job.n_steps * job.step_seconds
            + job.finalize_seconds
        )
        self.validate(nominal)
        nominal += job.validate_seconds
        if not self.queue(nominal):
            return
        nominal += job.queue_seconds
        if not self.start(nominal):
            return
        for values in plan.series:
            nominal += job.step_seconds
            if not self.train_step(nominal, values):
                return
        self.succeed(nominal + job.finalize_seconds)

    def validate(self, time: float) -> None:
        text = f"Validating training file: {self.plan.training_file}"
        if self.plan.validation_file:
            text += f" and validation file: {self.plan.validation_file}"
        self.emit(time, text, status="validating_files")
        if self.job.azure:
            self.emit(time, "Job submitted. Files are being validated.")

    def queue(self, nominal: float) -> bool:
        time = self.at(nominal)
        if time is None:
            return False
        if self.job.outcome == "failed" and self.job.fail_at_step == 0:
            self.fail(time, in_validation=True)
            return False
        self.emit(time, "Files validated, moving job to queued state", status="queued")
        if self.job.azure:
            self.emit(time, "Job enqueued. Waiting for jobs ahead to complete.")
        return True

    def start(self, nominal: float) -> bool:
        time = self.at(nominal)
        if time is None:
            return False
        if self.job.outcome == "cancelled" and self.job.cancel_at_step == 0:
            self.cancel(time)
            return False
        self.emit(time, "Fine-tuning job started", status="running")
        if self.job.azure:
            self.emit(time, "Training started.")
        self.timeline.started_at = time
        return True

    def train_step(self, nominal: float, values: StepValues) -> bool:
        time = self.at(nominal)
        if time is None:
            return False
        job, step = self.job, values.step
        data = metrics.event_data(job, values)
        if step not in job.events_missing_steps:  # the result file still has the step
            self.emit(time, metrics.step_message(job, values), type="metrics", data=data)
        if step in metrics.epoch_end_steps(job):
            self.timeline.checkpoints.append(TimedCheckpoint(time, step))
            name = self.plan.checkpoint_model(step)
            self.emit(time, f"Checkpoint created at step {step} with Snapshot ID: {name}")
        if job.outcome == "failed" and step == (job.fail_at_step or max(1, job.n_steps // 2)):
            self.fail(time, in_validation=False)
            return False
        if job.outcome == "cancelled" and step == (job.cancel_at_step or max(1, job.n_steps // 2)):
            self.cancel(time)
            return False
        if step == job.pause_at_step and step < job.n_steps:
            self.pause(time, by_scenario=True)
            resume = Intervention(time + job.pause_seconds, "resume", by_scenario=True)
            self.pending = sorted([*self.pending, resume], key=lambda i: i.time)
        return True

    def succeed(self, nominal: float) -> None:
        time = self.at(nominal)
        if time is None:
            return
        plan = self.plan
        if self.job.azure:
            self.emit(time, f"Completed results file: {plan.result_file}")
            self.emit(time, "Postprocessing started.")
            self.emit(time, "Model Evaluation Passed.")
            self.emit(time, "Training hours billed: 0.250")
            self.emit(time, "Job succeeded.", status="succeeded")
        else:
            self.emit(time, f"New fine-tuned model created: {plan.fine_tuned_model}")
            self.emit(time, "Evaluating model against our usage policies")
            self.emit(
                time,
                "Moderation checks passed",
                type="moderation_checks",
                data={"blocked": False, "checks": []},
            )
            self.emit(time, "Usage policy evaluations completed, model is now enabled for sampling")
            self.emit(time, "The job has successfully completed", status="succeeded")
        self.finish(time)
