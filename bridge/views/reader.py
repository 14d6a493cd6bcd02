"""Reads of the state store for the live views: a :class:`bridge.views.board.Snapshot` per
refresh, and every metric point and checkpoint of one job for ``ftbridge show``.

Read-only, on any engine the store runs on (SQLite beside a running daemon, PostgreSQL beside
several). A :class:`BoardReader` keeps the metric points it has parsed and reads only the
events stored since (events are only ever added, at increasing ``seq``), so a refresh each
second costs a few indexed aggregate queries, whatever the length of the jobs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bridge import mapping, schema
from bridge.views.board import JobRecord, Point, Pulse, Snapshot, TargetTrouble
from bridge.webhooks.outbox import webhook_deliveries, webhook_events, webhook_target_state

if TYPE_CHECKING:
    from bridge.metrics import BridgeMetrics

_CHECKPOINT_MESSAGE = re.compile(r"checkpoint created at step (\d+)", re.IGNORECASE)


@dataclass
class _Parsed:
    """What has been read of one job's events so far."""

    next_seq: int = 0
    points: dict[int, dict[str, float]] = field(default_factory=dict)
    total_steps: int | None = None
    checkpoints: set[int] = field(default_factory=set)


class BoardReader:
    """Snapshots of one store, each read in one connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._parsed: dict[str, _Parsed] = {}

    def snapshot(self) -> Snapshot:
        with self.engine.connect() as conn:
            jobs = conn.execute(sa.select(schema.jobs)).all()
            for job in jobs:
                self._catch_up(conn, job.job_id, int(job.next_seq or 0))
            counts = _event_counts(conn)
            hooks = _webhooks_by_job(conn)
            records = [self._record(job, counts, hooks) for job in jobs]
            deliveries = _deliveries(conn)
            targets = _target_trouble(conn)
            last_write = conn.execute(sa.select(sa.func.max(schema.jobs.c.updated_at))).scalar()
        return Snapshot(
            jobs=records,
            deliveries=deliveries,
            targets=targets,
            last_write_at=float(last_write) if last_write is not None else None,
        )

    def _catch_up(self, conn: Connection, job_id: str, next_seq: int) -> None:
        parsed = self._parsed.setdefault(job_id, _Parsed())
        if next_seq <= parsed.next_seq:
            return
        e = schema.events
        rows = conn.execute(
            sa.select(e.c.seq, e.c.payload)
            .where(e.c.job_id == job_id, e.c.seq >= parsed.next_seq)
            .order_by(e.c.seq)
        ).all()
        for row in rows:
            _parse_into(parsed, _json(row.payload))
            parsed.next_seq = max(parsed.next_seq, int(row.seq) + 1)

    def _record(
        self,
        job: sa.Row[Any],
        counts: Mapping[str, tuple[int, int | None, float | None, int, float | None]],
        hooks: Mapping[str, tuple[int, int]],
    ) -> JobRecord:
        parsed = self._parsed.get(job.job_id, _Parsed())
        logged, seen, last, waiting, oldest = counts.get(job.job_id, (0, None, None, 0, None))
        pending, failed = hooks.get(job.job_id, (0, 0))
        return JobRecord(
            job_id=job.job_id,
            source=job.source,
            status=job.status,
            job=_json(job.job_json),
            created_at=job.created_at,
            run_state=job.run_state,
            run_url=job.run_url,
            run_segment=job.run_segment,
            steps_logged=logged,
            steps_seen=seen,
            total_steps=parsed.total_steps,
            points=[Point(step, values) for step, values in sorted(parsed.points.items())],
            last_event_at=last,
            rows_waiting=waiting,
            oldest_waiting_at=oldest,
            webhooks_pending=pending,
            webhooks_failed=failed,
        )


def _parse_into(parsed: _Parsed, event: Mapping[str, Any]) -> None:
    row = mapping.metric_row(event)
    if row is not None:
        parsed.points.setdefault(row.step, {}).update(row.values)
        total = mapping.total_steps(event)
        if total is not None:
            parsed.total_steps = total
        return
    message = event.get("message")
    found = _CHECKPOINT_MESSAGE.search(message) if isinstance(message, str) else None
    if found:
        parsed.checkpoints.add(int(found.group(1)))


def _event_counts(
    conn: Connection,
) -> dict[str, tuple[int, int | None, float | None, int, float | None]]:
    """Per job: steps logged to W&B, highest step stored, newest event time, rows waiting
    for W&B and the creation time of the oldest of them."""
    e = schema.events
    logged = sa.func.count(sa.distinct(e.c.step)).filter(e.c.state.in_(("sent", "durable")))
    waiting = sa.func.count().filter(e.c.state == "new")
    oldest = sa.func.min(e.c.created_at).filter(e.c.state == "new")
    query = sa.select(
        e.c.job_id, logged, sa.func.max(e.c.step), sa.func.max(e.c.created_at), waiting, oldest
    ).group_by(e.c.job_id)
    return {
        row[0]: (
            int(row[1] or 0),
            int(row[2]) if row[2] is not None else None,
            float(row[3]) if row[3] is not None else None,
            int(row[4] or 0),
            float(row[5]) if row[5] is not None else None,
        )
        for row in conn.execute(query).all()
    }


def _webhooks_by_job(conn: Connection) -> dict[str, tuple[int, int]]:
    """Per job: deliveries waiting (pending or held) and given up (failed or disabled)."""
    d, ev = webhook_deliveries, webhook_events
    waiting = sa.func.count().filter(d.c.state.in_(("pending", "held")))
    failed = sa.func.count().filter(d.c.state.in_(("failed", "disabled")))
    query = (
        sa.select(ev.c.job_id, waiting, failed)
        .select_from(d.join(ev, ev.c.event_id == d.c.event_id))
        .group_by(ev.c.job_id)
    )
    return {str(r[0]): (int(r[1] or 0), int(r[2] or 0)) for r in conn.execute(query).all()}


def _deliveries(conn: Connection) -> dict[str, int]:
    d = webhook_deliveries
    query = sa.select(d.c.state, sa.func.count()).group_by(d.c.state)
    return {str(state): int(count) for state, count in conn.execute(query).all()}


def _target_trouble(conn: Connection) -> list[TargetTrouble]:
    """Targets with deliveries failed or retried, and disabled targets, by name."""
    d, s = webhook_deliveries, webhook_target_state
    failed = sa.func.count().filter(d.c.state.in_(("failed", "disabled")))
    retrying = sa.func.count().filter(d.c.state == "pending", d.c.attempts > 0)
    rows = conn.execute(
        sa.select(d.c.target, failed, retrying, sa.func.max(d.c.updated_at)).group_by(d.c.target)
    ).all()
    disabled = {str(r.target) for r in conn.execute(sa.select(s.c.target)).all()}
    statuses = _last_statuses(conn)
    found = {
        str(r[0]): TargetTrouble(
            str(r[0]), int(r[1] or 0), int(r[2] or 0), str(r[0]) in disabled, statuses.get(r[0])
        )
        for r in rows
    }
    for name in disabled - set(found):
        found[name] = TargetTrouble(name, 0, 0, True, None)
    return [t for _, t in sorted(found.items()) if t.failed or t.retrying or t.disabled]


def _last_statuses(conn: Connection) -> dict[str, int | None]:
    """The HTTP status of each target's most recently updated delivery that was attempted."""
    d = webhook_deliveries
    latest = (
        sa.select(d.c.target, sa.func.max(d.c.updated_at).label("at"))
        .where(d.c.attempts > 0)
        .group_by(d.c.target)
        .subquery()
    )
    query = sa.select(d.c.target, d.c.last_status).join(
        latest, sa.and_(d.c.target == latest.c.target, d.c.updated_at == latest.c.at)
    )
    return {str(t): (int(s) if s is not None else None) for t, s in conn.execute(query).all()}


@dataclass(frozen=True)
class JobCurves:
    """Everything ``ftbridge show`` draws of one job."""

    job_id: str
    status: str
    job: Mapping[str, Any]
    config: Mapping[str, Any]
    points: tuple[Point, ...]
    total_steps: int | None
    checkpoints: tuple[int, ...]


def job_curves(engine: Engine, job_id: str) -> JobCurves | None:
    """Every metric point of ``job_id`` by step, its checkpoints' steps (from the checkpoint
    messages and the checkpoint artifacts logged); None when the store has no such job."""
    with engine.connect() as conn:
        job = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.job_id == job_id)).first()
        if job is None:
            return None
        parsed = _Parsed()
        e = schema.events
        payloads = conn.execute(
            sa.select(e.c.payload).where(e.c.job_id == job_id).order_by(e.c.seq)
        ).scalars()
        for payload in payloads:
            _parse_into(parsed, _json(payload))
        keys = conn.execute(
            sa.select(schema.artifacts.c.key).where(schema.artifacts.c.job_id == job_id)
        ).scalars()
        parsed.checkpoints |= set(_checkpoint_steps(keys))
    return JobCurves(
        job_id=job.job_id,
        status=job.status,
        job=_json(job.job_json),
        config=_json(job.config_json),
        points=tuple(Point(step, values) for step, values in sorted(parsed.points.items())),
        total_steps=parsed.total_steps,
        checkpoints=tuple(sorted(parsed.checkpoints)),
    )


def _checkpoint_steps(keys: Iterable[str]) -> Iterable[int]:
    """Steps named by checkpoint artifact keys (``checkpoint:<step>`` when the checkpoint
    had no id; keys with an id say no step)."""
    for key in keys:
        head, _, rest = str(key).partition(":")
        if head == "checkpoint" and rest.isdigit():
            yield int(rest)


def pulse_of(metrics: BridgeMetrics) -> Pulse:
    """The daemon's own counters (poll cycles, their mean duration, API and W&B errors)."""
    samples = {
        (s.name, s.labels.get("outcome", "")): s.value
        for metric in (metrics.cycles, metrics.cycle_duration, metrics.wandb_errors)
        for family in metric.collect()
        for s in family.samples
    }
    api = sum(
        s.value
        for f in metrics.api_errors.collect()
        for s in f.samples
        if s.name.endswith("_total")
    )
    count = samples.get(("ftbridge_poll_cycle_duration_seconds_count", ""), 0.0)
    total = samples.get(("ftbridge_poll_cycle_duration_seconds_sum", ""), 0.0)
    return Pulse(
        cycles_ok=int(samples.get(("ftbridge_poll_cycles_total", "ok"), 0)),
        cycles_failed=int(samples.get(("ftbridge_poll_cycles_total", "failed"), 0)),
        mean_cycle_seconds=total / count if count else None,
        api_errors=int(api),
        wandb_errors=int(samples.get(("ftbridge_wandb_errors_total", ""), 0)),
    )


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["BoardReader", "JobCurves", "job_curves", "pulse_of"]
