"""Pure mapping from the job model (plain JSON dicts, see :mod:`bridge.sources.model`) to what
W&B is given. A job without a ``provider`` is an OpenAI job.

No I/O here. Every function takes what a source produced, tolerates missing keys and wrong
types, and never raises on bad input: a field that cannot be read is left out, and a value the
store or W&B could not hold (a step of 10**30, a metric name of a megabyte, a job id W&B
refuses) is refused here, by the bounds of :mod:`bridge.limits`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge import limits

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_TAG_LENGTH = 64
DEFAULT_PROVIDER = "openai"

# Fields of the job that change while it runs: they go to the summary, not the config.
_VOLATILE_FIELDS = frozenset(
    {
        "status",
        "finished_at",
        "trained_tokens",
        "fine_tuned_model",
        "estimated_finish",
        "error",
        "result_files",
        "usage_metrics",
        "object",
        "provider_status",
        "cost_usd",
        "raw",
    }
)
_STRUCTURED_CONFIG = ("hyperparameters", "method", "metadata", "integrations")

NativeMode = Literal["skip", "mirror"]


@dataclass(frozen=True)
class WandbDefaults:
    """Where runs go when the job does not say."""

    project: str
    entity: str | None = None
    extra_tags: tuple[str, ...] = ()
    app_url: str = "https://wandb.ai"


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to open (or resume) the W&B run of one job."""

    run_id: str
    project: str
    entity: str | None
    name: str
    tags: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricRow:
    """One history row: W&B step and the metric values at that step."""

    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class ArtifactSpec:
    """A W&B artifact: a reference to something that has no bytes here (a model id), and/or
    files given with it."""

    key: str
    name: str
    type: str
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    # Tables by name: (columns, rows); cells are str, int, float, bool or None.
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)
    # Used by other runs too (a dataset): online, logging it waits until W&B has it, so
    # that the next run can use it at once.
    shared: bool = False


def _artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots, all ASCII
    (``str.isalnum`` alone lets "é" through, which ``wandb.Artifact`` refuses)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "-" for c in text)[:128]


def artifact_path(spec: RunSpec, artifact: str) -> str:
    """``<entity>/<project>/<artifact>`` of an artifact the run ``spec`` logged (``artifact``
    is ``name:alias``); ``<project>/...`` when the entity is not set: W&B takes the key's
    default entity."""
    where = f"{spec.entity}/{spec.project}" if spec.entity else spec.project
    return f"{where}/{artifact}"


def model_artifact_name(job_id: str) -> str:
    """The name of a job's fine-tuned model artifact."""
    return _artifact_name(f"{job_id}-model")


def checkpoint_artifact_name(job_id: str) -> str:
    """The name of a job's checkpoint artifact (one version per checkpoint, alias ``step-N``)."""
    return _artifact_name(f"{job_id}-checkpoint")


def checkpoint_artifact(
    job_id: str, checkpoint: Mapping[str, Any], provider: str = DEFAULT_PROVIDER
) -> ArtifactSpec | None:
    """A checkpoint as a ``model`` artifact referencing its model id (no weights exist to
    upload); its step and metrics in the metadata."""
    model = _str(checkpoint.get("fine_tuned_model_checkpoint"))
    step = checkpoint.get("step_number")
    if model is None or not isinstance(step, int) or isinstance(step, bool):
        return None
    metrics = checkpoint.get("metrics")
    numbers = dict(flatten_metrics(metrics)) if isinstance(metrics, Mapping) else {}
    numbers.pop("step", None)
    return ArtifactSpec(
        key=f"checkpoint:{checkpoint.get('id') or step}",
        name=checkpoint_artifact_name(job_id),
        type="model",
        aliases=(f"step-{step}",),
        metadata={
            "fine_tuned_model_checkpoint": model,
            "step": step,
            "checkpoint_id": checkpoint.get("id"),
            "created_at": checkpoint.get("created_at"),
            "metrics": numbers,
        },
        reference=f"{provider}://{model}",
    )


def provider_of(job: Mapping[str, Any]) -> str:
    """The job's provider (``openai``, ``together``, ``fireworks``)."""
    return _str(job.get("provider")) or DEFAULT_PROVIDER


def model_artifact(job: Mapping[str, Any]) -> ArtifactSpec | None:
    """The fine-tuned model as a ``model`` artifact, aliases ``latest`` and the job id."""
    model = _str(job.get("fine_tuned_model"))
    if model is None:
        return None
    job_id = str(job.get("id"))
    return ArtifactSpec(
        key="model",
        name=model_artifact_name(job_id),
        type="model",
        aliases=("latest", job_id),
        metadata={
            "fine_tuned_model": model,
            "base_model": job.get("model"),
            "job_id": job_id,
            "trained_tokens": job.get("trained_tokens"),
        },
        reference=f"{provider_of(job)}://{model}",
    )


def results_artifact(job_id: str, file_id: str, csv_text: bytes) -> ArtifactSpec:
    return ArtifactSpec(
        key=f"results:{file_id}",
        name=_artifact_name(f"{job_id}-results"),
        type="results",
        metadata={"file_id": file_id},
        files={"results.csv": csv_text},
    )


def is_terminal(status: object) -> bool:
    return status in TERMINAL_STATUSES


PREEMPTED_EXIT_CODE = 143
"""A segment closed while its job goes on (shutdown, a lease handed over): 128 + SIGTERM, with
``mark_preempting``, the convention W&B reads as preempted rather than finished."""


def exit_code(status: object) -> int:
    """0 for a job that succeeded; non-zero otherwise, so that W&B shows the state truly."""
    return {"succeeded": 0, "failed": 1, "cancelled": 130}.get(str(status), 1)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def wandb_integration(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The job's own W&B integration settings (``integrations[].wandb``), if any."""
    integrations = job.get("integrations")
    if not isinstance(integrations, list):
        return None
    for item in integrations:
        if isinstance(item, dict) and item.get("type") == "wandb":
            settings = item.get("wandb")
            return settings if isinstance(settings, dict) else {}
    return None


def clean_tags(tags: list[object] | tuple[object, ...]) -> tuple[str, ...]:
    """Strings only, cut to W&B's 64 characters, first occurrence kept."""
    seen: dict[str, None] = {}
    for tag in tags:
        if isinstance(tag, str) and tag.strip():
            seen.setdefault(tag.strip()[:MAX_TAG_LENGTH], None)
    return tuple(seen)


def run_config(job: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """The job's settings: model, files, hyperparameters, method, seed, suffix, metadata, and
    the other scalar fields that do not change while the job runs."""
    config: dict[str, Any] = {}
    raw = job.get("raw")
    # The provider's other scalar fields first (``organization_id``, ``user_provided_suffix``,
    # Together's ``n_checkpoints``...); the model's own fields win over them.
    items = [*(raw.items() if isinstance(raw, Mapping) else ()), *job.items()]
    for key, value in items:
        if key in _VOLATILE_FIELDS or key == "id":
            continue
        if key in _STRUCTURED_CONFIG:
            if isinstance(value, dict | list):
                config[key] = value
        elif value is None or isinstance(value, str | int | float | bool):
            config[key] = value
    config["job_id"] = job.get("id")
    method = job.get("method")
    if isinstance(method, dict) and isinstance(method.get("type"), str):
        config["method_type"] = method["type"]
        # One place for every hyperparameter: the method's own (DPO's beta, RFT's
        # compute_multiplier...) beside the supervised-shaped ``hyperparameters``.
        own = method.get(method["type"])
        extra = own.get("hyperparameters") if isinstance(own, dict) else None
        if isinstance(extra, dict):
            base = config.get("hyperparameters")
            merged = dict(base) if isinstance(base, dict) else {}
            for key, value in extra.items():
                if value != "auto" or key not in merged:  # a number beats "auto"
                    merged[key] = value
            config["hyperparameters"] = merged
    if source is not None:
        config["source"] = source
    return config


def run_spec(job: Mapping[str, Any], defaults: WandbDefaults, source: str | None = None) -> RunSpec:
    """The run of a job: id = job id; name, project, entity and tags from the job's own W&B
    integration when it has one, else from the defaults."""
    job_id = str(job.get("id"))
    integration = wandb_integration(job) or {}
    model = _str(job.get("model"))
    own_tags = integration.get("tags")
    provider = provider_of(job)
    tags: list[object] = [f"{provider}/fine-tuning", f"{provider}/{job_id}"]
    if model:
        tags.append(f"{provider}/{model}")
    if source:
        tags.append(f"source/{source}")
    tags.extend(defaults.extra_tags)
    if isinstance(own_tags, list):
        tags.extend(own_tags)
    return RunSpec(
        run_id=job_id,
        project=_str(integration.get("project")) or defaults.project,
        entity=_str(integration.get("entity")) or defaults.entity,
        name=_str(integration.get("name")) or job_id,
        tags=clean_tags(tags),
        config=run_config(job, source),
    )


def run_url(spec: RunSpec, app_url: str) -> str | None:
    """The run's page, when its entity is known (W&B's URL needs it)."""
    if not spec.entity:
        return None
    return f"{app_url.rstrip('/')}/{spec.entity}/{spec.project}/runs/{spec.run_id}"


def app_url(base_url: str | None) -> str:
    """W&B's web address from its API address (``api.wandb.ai`` serves ``wandb.ai``)."""
    if not base_url:
        return "https://wandb.ai"
    return base_url.rstrip("/").replace("://api.wandb.ai", "://wandb.ai")


def alert_text(job: Mapping[str, Any]) -> tuple[str, str]:
    """Title and text of the W&B alert raised when a job fails."""
    summary = run_summary(job)
    title = f"Fine-tuning job {job.get('id')} {summary.get('status')}"
    reason = summary.get("error_message") or "no error message"
    code = summary.get("error_code")
    text = f"{job.get('model')}: {reason}" + (f" ({code})" if code else "")
    return title, text


def should_write_run(job: Mapping[str, Any], native_mode: NativeMode) -> bool:
    """Jobs with their own W&B integration are written by OpenAI itself unless mirroring; a
    job whose id cannot be a W&B run id is never written."""
    if limits.run_id_problem(job.get("id")) is not None:
        return False
    return native_mode == "mirror" or wandb_integration(job) is None


def flatten_metrics(
    data: Mapping[str, Any], prefix: str = "", depth: int = 0
) -> Iterator[tuple[str, float]]:
    """Numeric leaves of ``data`` as ``a/b/c`` keys; lists of dicts keyed by their ``name``.
    Names W&B keeps for itself (``_step``, ``_runtime``: a leading underscore) or longer than
    ``limits.MAX_METRIC_NAME`` are left out, and so is nesting deeper than ``limits.MAX_DEPTH``."""
    if depth >= limits.MAX_DEPTH:
        return
    for key, value in data.items():
        name = f"{prefix}{key}"
        if len(name) > limits.MAX_METRIC_NAME or str(key).startswith("_"):
            continue
        number = limits.metric_value(value)
        if number is not None:
            yield name, number
        elif isinstance(value, Mapping):
            yield from flatten_metrics(value, f"{name}/", depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    # Named items (RFT graders) are keyed by their name in place of the list's.
                    label = _str(item.get("name"))
                    rest = {k: v for k, v in item.items() if k != "name"}
                    where = f"{prefix}{label}/" if label else f"{name}/{index}/"
                    yield from flatten_metrics(rest, where, depth + 1)


def step_of(event: Mapping[str, Any]) -> int | None:
    """The training step a metrics event reports, or None when it has none."""
    if event.get("type") != "metrics":
        return None
    data = event.get("data")
    if not isinstance(data, Mapping):
        return None
    return limits.step(data.get("step"))


def step_problem(event: Mapping[str, Any]) -> str | None:
    """Why a metrics event gives no history row, or None when it gives one (or is no
    metrics event)."""
    if event.get("type") != "metrics":
        return None
    data = event.get("data")
    if not isinstance(data, Mapping):
        return "its data is not an object"
    if step_of(event) is None:
        shown = limits.truncate(repr(data.get("step")), 40)
        return f"step {shown} is not an int in [0, {limits.MAX_STEP})"
    return None


_NOT_METRICS = frozenset({"step", "total_steps"})


def metric_row(event: Mapping[str, Any]) -> MetricRow | None:
    """The history row of a metrics event; None for other events or ones without a step."""
    step = step_of(event)
    if step is None:
        return None
    data = event["data"]
    values: dict[str, float] = {}
    for key, value in flatten_metrics(data):
        if key not in _NOT_METRICS:
            values[key] = value
            if len(values) >= limits.MAX_ROW_KEYS:
                break
    return MetricRow(step=step, values=values)


def merge_rows(rows: list[MetricRow]) -> list[MetricRow]:
    """Rows of the same step merged (later values win), in order of first appearance."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        merged.setdefault(row.step, {}).update(row.values)
    return [MetricRow(step, values) for step, values in merged.items()]


def total_steps(event: Mapping[str, Any]) -> int | None:
    data = event.get("data")
    if isinstance(data, Mapping):
        value = data.get("total_steps")
        if isinstance(value, int):
            return limits.step(value)
    return None


def run_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the run's summary says of the job: status, model, tokens, end, and any error.
    Strings are cut to ``limits.MAX_OUT_TEXT`` characters (a 2 MB error message too)."""
    summary: dict[str, Any] = {"status": job.get("status")}
    keys = ("provider_status", "fine_tuned_model", "trained_tokens", "finished_at")
    for key in (*keys, "estimated_finish", "cost_usd"):
        value = job.get(key)
        if value is not None:
            summary[key] = value
    error = job.get("error")
    # A job that has not failed may carry an error object whose fields are all null.
    if isinstance(error, Mapping) and (error.get("code") or error.get("message")):
        summary["error_code"] = error.get("code")
        summary["error_message"] = error.get("message")
        if error.get("param"):
            summary["error_param"] = error.get("param")
    return {key: _summary_value(value) for key, value in summary.items()}


def _summary_value(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -limits.MAX_INT64 <= value < limits.MAX_INT64 else None
    if isinstance(value, str | int | float | bool) or value is None:
        return limits.cap_text(value)
    # Only scalars belong in the summary: anything else is shown as (capped) text.
    return limits.truncate(str(value), limits.MAX_OUT_TEXT)
