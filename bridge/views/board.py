"""The view model of the live status (``ftbridge status --watch`` and the status page): store
rows in, a :class:`Board` out. Pure: no I/O, no clock, no rendering.

What the store holds gives each job its progress (steps logged to W&B / total steps), its
latest train and valid loss (or reward, for RFT jobs) with the curve so far, how far W&B is
behind the API (rows stored but not logged yet, and the age of the oldest), its W&B run and its
webhook deliveries. The header adds what the store says of the whole bridge (jobs, open runs,
failing webhook targets, when the daemon last wrote) and, only when the view runs in the
daemon's own process, its :class:`Pulse` (poll cycle time and API errors, which live in the
process's metrics, not in the store).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge import mapping
from bridge.status import age

#: Eighths of a cell, lowest to highest.
SPARK_CHARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24

#: Names of a training loss, in the order tried (OpenAI's, then Together's and others').
TRAIN_LOSS_KEYS = ("train_loss", "train/loss", "loss", "training_loss")
VALID_LOSS_KEYS = (
    "valid_loss",
    "valid/loss",
    "eval_loss",
    "eval/loss",
    "validation_loss",
    "full_valid_loss",
)
#: What RFT jobs report in place of a loss.
TRAIN_REWARD_KEYS = ("train_reward_mean", "scores/train_reward_mean", "train_mean_reward")
VALID_REWARD_KEYS = ("valid_reward_mean", "scores/valid_reward_mean")

ACTIVE_ORDER = ("running", "paused", "queued", "validating_files")


@dataclass(frozen=True)
class Point:
    """A metrics row as stored: its training step and flattened values."""

    step: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class JobRecord:
    """What the store holds of one job (read by :mod:`bridge.views.reader`)."""

    job_id: str
    source: str
    status: str
    job: Mapping[str, object]
    created_at: int | None
    run_state: str
    run_url: str | None
    run_segment: str | None
    steps_logged: int = 0
    steps_seen: int | None = None
    total_steps: int | None = None
    points: Sequence[Point] = ()
    last_event_at: float | None = None
    rows_waiting: int = 0
    oldest_waiting_at: float | None = None
    webhooks_pending: int = 0
    webhooks_failed: int = 0


@dataclass(frozen=True)
class TargetTrouble:
    """A webhook target with deliveries failed, disabled or being retried."""

    target: str
    failed: int
    retrying: int
    disabled: bool
    last_status: int | None


@dataclass(frozen=True)
class Pulse:
    """What only the daemon's process knows (its metrics), when the view runs inside it."""

    cycles_ok: int
    cycles_failed: int
    mean_cycle_seconds: float | None
    api_errors: int
    wandb_errors: int


@dataclass(frozen=True)
class Snapshot:
    """Everything read from the store for one refresh."""

    jobs: Sequence[JobRecord]
    deliveries: Mapping[str, int] = field(default_factory=dict)
    targets: Sequence[TargetTrouble] = ()
    last_write_at: float | None = None


@dataclass(frozen=True)
class JobView:
    """One row of the live view."""

    job_id: str
    source: str
    provider: str
    model: str
    status: str
    active: bool
    steps_done: int
    total_steps: int | None
    progress: float | None
    steps_text: str
    metric: str
    train: float | None
    valid: float | None
    curve: tuple[float, ...]
    sparkline: str
    last_event_age: float | None
    lag_text: str
    run: str | None
    run_link: str | None
    webhooks_pending: int
    webhooks_failed: int


@dataclass(frozen=True)
class Header:
    jobs: int
    active: int
    by_status: Mapping[str, int]
    runs_open: int
    rows_waiting: int
    deliveries: Mapping[str, int]
    targets: Sequence[TargetTrouble]
    last_write_age: float | None
    pulse: Pulse | None


@dataclass(frozen=True)
class Board:
    header: Header
    jobs: tuple[JobView, ...]


def board(snapshot: Snapshot, *, now: float, pulse: Pulse | None = None) -> Board:
    """The view of ``snapshot`` at ``now``: active jobs first, then newest first."""
    rows = sorted(
        snapshot.jobs, key=lambda j: (_activity_rank(j.status), -(j.created_at or 0), j.job_id)
    )
    views = tuple(job_view(job, now=now) for job in rows)
    return Board(header=_header(snapshot, views, now, pulse), jobs=views)


def _activity_rank(status: str) -> int:
    if status in ACTIVE_ORDER:
        return ACTIVE_ORDER.index(status)
    return len(ACTIVE_ORDER) + (0 if not mapping.is_terminal(status) else 1)


def _header(
    snapshot: Snapshot, views: Sequence[JobView], now: float, pulse: Pulse | None
) -> Header:
    by_status: dict[str, int] = {}
    for view in views:
        by_status[view.status] = by_status.get(view.status, 0) + 1
    return Header(
        jobs=len(views),
        active=sum(1 for v in views if v.active),
        by_status=by_status,
        runs_open=sum(1 for j in snapshot.jobs if j.run_state == "open"),
        rows_waiting=sum(j.rows_waiting for j in snapshot.jobs if j.run_state != "skipped"),
        deliveries=dict(snapshot.deliveries),
        targets=tuple(snapshot.targets),
        last_write_age=_age(snapshot.last_write_at, now),
        pulse=pulse,
    )


def job_view(job: JobRecord, *, now: float) -> JobView:
    metric, train_key, valid_key = headline_keys(job.points)
    curve = tuple(p.values[train_key] for p in job.points if train_key and train_key in p.values)
    skipped = job.run_state == "skipped"
    # A run OpenAI's own integration writes logs nothing here: its progress is the training's.
    done = (job.steps_seen or 0) if skipped else job.steps_logged
    total = job.total_steps or _total_of(job.job)
    return JobView(
        job_id=job.job_id,
        source=job.source,
        provider=mapping.provider_of(job.job),
        model=_text(job.job.get("model")) or "-",
        status=job.status,
        active=not mapping.is_terminal(job.status),
        steps_done=done,
        total_steps=total,
        progress=progress(done, total),
        steps_text=steps_text(done, total),
        metric=metric,
        train=latest(job.points, train_key),
        valid=latest(job.points, valid_key),
        curve=curve,
        sparkline=sparkline(curve),
        last_event_age=_age(job.last_event_at, now),
        lag_text=lag_text(job, now),
        run=run_location(job),
        run_link=run_link(job),
        webhooks_pending=job.webhooks_pending,
        webhooks_failed=job.webhooks_failed,
    )


def headline_keys(points: Sequence[Point]) -> tuple[str, str | None, str | None]:
    """``("loss", train key, valid key)``, or ``("reward", ...)`` for jobs that report a reward
    and no loss; keys are None when no row has one."""
    names = {name for p in points for name in p.values}
    train = _first(TRAIN_LOSS_KEYS, names)
    if train is None and _first(TRAIN_REWARD_KEYS, names) is not None:
        return "reward", _first(TRAIN_REWARD_KEYS, names), _first(VALID_REWARD_KEYS, names)
    return "loss", train, _first(VALID_LOSS_KEYS, names)


def _first(keys: Sequence[str], names: set[str]) -> str | None:
    return next((key for key in keys if key in names), None)


def latest(points: Sequence[Point], key: str | None) -> float | None:
    """The value of ``key`` at the highest step that has it."""
    if key is None:
        return None
    found = [(p.step, p.values[key]) for p in points if key in p.values]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """``values`` as at most ``width`` block characters (each the mean of its share of the
    values), scaled between their minimum and maximum; non-finite values are left out."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite or width <= 0:
        return ""
    buckets = _buckets(finite, width)
    low, high = min(buckets), max(buckets)
    if high - low < 1e-12:
        return SPARK_CHARS[len(SPARK_CHARS) // 2 - 1] * len(buckets)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((v - low) / (high - low) * top)] for v in buckets)


def _buckets(values: Sequence[float], width: int) -> list[float]:
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        share = values[i * len(values) // width : (i + 1) * len(values) // width]
        out.append(sum(share) / len(share))
    return out


def progress(done: int, total: int | None) -> float | None:
    """The share done, in [0, 1]; None when the total is not known."""
    if not total or total <= 0:
        return None
    return min(1.0, max(0.0, done / total))


def steps_text(done: int, total: int | None) -> str:
    return f"{done}/{total if total else '?'}"


def lag_text(job: JobRecord, now: float) -> str:
    """How far W&B is behind the API: ``in sync``, or rows waiting and the oldest one's age."""
    if job.run_state == "skipped":
        return "-"
    if job.rows_waiting <= 0:
        return "in sync"
    return f"{job.rows_waiting} rows, {age(_age(job.oldest_waiting_at, now))}"


def run_location(job: JobRecord) -> str | None:
    """The run's page, its offline folder, or why there is none."""
    if job.run_url:
        return job.run_url
    if job.run_state == "skipped":
        return "OpenAI's W&B integration"
    if job.run_segment:
        return job.run_segment.rsplit("/", 1)[0] if "/" in job.run_segment else job.run_segment
    return None


def run_link(job: JobRecord) -> str | None:
    """A link for the run: its page, or ``file://`` for an offline folder."""
    if job.run_url and job.run_url.startswith(("https://", "http://")):
        return job.run_url
    location = run_location(job)
    if job.run_segment and location and location.startswith("/"):
        return "file://" + location
    return None


def number(value: float | None) -> str:
    """A metric value in four significant digits; ``-`` when there is none."""
    if value is None:
        return "-"
    return f"{value:.4g}"


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, now - at)


def _total_of(job: Mapping[str, object]) -> int | None:
    raw = job.get("raw")
    for where in (job, raw if isinstance(raw, Mapping) else {}):
        value = where.get("total_steps")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = [
    "Board",
    "Header",
    "JobRecord",
    "JobView",
    "Point",
    "Pulse",
    "Snapshot",
    "TargetTrouble",
    "age",
    "board",
    "headline_keys",
    "job_view",
    "latest",
    "number",
    "progress",
    "sparkline",
    "steps_text",
]
