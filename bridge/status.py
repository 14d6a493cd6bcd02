"""``ftbridge status``: what the state store says of every tracked job, for an operator.

Read-only queries on the store's tables (they also feed the live gauges of
:mod:`bridge.metrics`): jobs by status, outbox deliveries by state, and one row per job with
its steps logged, its last event, its W&B run and its pending webhooks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from bridge import mapping, schema
from bridge.errors import StoreError
from bridge.store import SqlStore
from bridge.webhooks.outbox import webhook_deliveries, webhook_events


@dataclass(frozen=True)
class JobRow:
    """One line of ``ftbridge status``."""

    job_id: str
    status: str
    model: str | None
    steps_logged: int
    total_steps: int | None
    last_event_at: float | None
    last_event_age_seconds: float | None
    run: str | None
    run_state: str
    synced: bool
    pending_webhooks: int
    # Why a job is never synced (a source refused it), or None.
    reason: str | None = None


def job_counts(engine: Engine) -> dict[str, int]:
    """Tracked jobs by status."""
    j = schema.jobs
    query = sa.select(j.c.status, sa.func.count()).group_by(j.c.status)
    with engine.connect() as conn:
        return {str(status): int(count) for status, count in conn.execute(query).all()}


def delivery_counts(engine: Engine) -> dict[str, int]:
    """Outbox deliveries by state (``pending``, ``delivered``, ``failed``, ``disabled``)."""
    d = webhook_deliveries
    query = sa.select(d.c.state, sa.func.count()).group_by(d.c.state)
    with engine.connect() as conn:
        return {str(state): int(count) for state, count in conn.execute(query).all()}


def job_rows(engine: Engine, *, now: float | None = None) -> list[JobRow]:
    """Every tracked job, newest first."""
    when = time.time() if now is None else now
    with engine.connect() as conn:
        jobs = conn.execute(
            sa.select(schema.jobs).order_by(
                schema.jobs.c.created_at.desc(), schema.jobs.c.job_id.desc()
            )
        ).all()
        steps = _steps_and_last_event(conn)
        totals = _total_steps(conn)
        pending = _pending_by_job(conn)
    return [
        _row(job, steps.get(job.job_id, (0, None)), totals.get(job.job_id), pending, when)
        for job in jobs
    ]


def _row(
    job: sa.Row[Any],
    steps: tuple[int, float | None],
    total: int | None,
    pending: dict[str, int],
    now: float,
) -> JobRow:
    logged, last_event = steps
    snapshot = _json(job.job_json)
    return JobRow(
        job_id=job.job_id,
        status=job.status,
        model=snapshot.get("model") if isinstance(snapshot.get("model"), str) else None,
        steps_logged=logged,
        total_steps=total,
        last_event_at=last_event,
        last_event_age_seconds=None if last_event is None else max(0.0, now - last_event),
        run=run_location(job.run_url, job.run_segment, job.run_state),
        run_state=job.run_state,
        synced=bool(job.synced),
        pending_webhooks=pending.get(job.job_id, 0),
    )


def _steps_and_last_event(conn: sa.Connection) -> dict[str, tuple[int, float | None]]:
    e = schema.events
    logged = sa.func.count(sa.distinct(e.c.step)).filter(e.c.state.in_(("sent", "durable")))
    query = sa.select(e.c.job_id, logged, sa.func.max(e.c.created_at)).group_by(e.c.job_id)
    return {
        job_id: (int(count or 0), float(last) if last is not None else None)
        for job_id, count, last in conn.execute(query).all()
    }


def _total_steps(conn: sa.Connection) -> dict[str, int]:
    """``total_steps`` of each job's latest metrics event."""
    e = schema.events
    latest = (
        sa.select(e.c.job_id, sa.func.max(e.c.seq).label("seq"))
        .where(e.c.step.is_not(None))
        .group_by(e.c.job_id)
        .subquery()
    )
    query = sa.select(e.c.job_id, e.c.payload).join(
        latest, sa.and_(e.c.job_id == latest.c.job_id, e.c.seq == latest.c.seq)
    )
    found: dict[str, int] = {}
    for job_id, payload in conn.execute(query).all():
        total = mapping.total_steps(_json(payload))
        if total is not None:
            found[job_id] = total
    return found


def _pending_by_job(conn: sa.Connection) -> dict[str, int]:
    d, ev = webhook_deliveries, webhook_events
    query = (
        sa.select(ev.c.job_id, sa.func.count())
        .select_from(d.join(ev, ev.c.event_id == d.c.event_id))
        .where(d.c.state.in_(("pending", "held")))
        .group_by(ev.c.job_id)
    )
    return {str(job_id): int(count) for job_id, count in conn.execute(query).all()}


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_location(run_url: str | None, segment: str | None, run_state: str) -> str | None:
    """The run's page when known; else the folder of its last segment (offline runs);
    ``skipped`` for jobs whose run OpenAI's own integration writes."""
    if run_url:
        return run_url
    if run_state == "skipped":
        return "skipped (OpenAI's W&B integration writes it)"
    if segment:
        return str(Path(segment).parent)
    return None


def open_store(database_url: str) -> SqlStore:
    """The store, without creating a SQLite file that is not there (a wrong path would
    otherwise show an empty, healthy-looking bridge)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        if not path.exists():
            raise StoreError(
                f"no state store at {path}: has `ftbridge run` or `ftbridge sync` used this "
                "FTBRIDGE_DATABASE_URL?"
            )
    return SqlStore(database_url)


# Output
def age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _steps(row: JobRow) -> str:
    if row.run_state == "skipped":
        return "-"
    return f"{row.steps_logged}/{row.total_steps if row.total_steps is not None else '?'}"


def quarantined_row(source: str, job_id: str, reason: str) -> JobRow:
    """A job its source refused, as a row of ``ftbridge status`` (its reason in place of a
    run)."""
    return JobRow(
        job_id=job_id,
        status="quarantined",
        model=None,
        steps_logged=0,
        total_steps=None,
        last_event_at=None,
        last_event_age_seconds=None,
        run=f"refused by source {source}: {reason}",
        run_state="none",
        synced=False,
        pending_webhooks=0,
        reason=reason,
    )


def table(rows: list[JobRow]) -> Table:
    out = Table(title=f"ftbridge: {len(rows)} tracked job(s)", title_justify="left")
    for name, justify in (
        ("job", "left"),
        ("status", "left"),
        ("steps", "right"),
        ("last event", "right"),
        ("W&B run", "left"),
        ("webhooks pending", "right"),
    ):
        out.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        out.add_row(
            row.job_id,
            _status_text(row.status),
            _steps(row),
            age(row.last_event_age_seconds),
            row.run or "-",
            str(row.pending_webhooks),
        )
    return out


_STATUS_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "quarantined": "magenta",
}


def _status_text(status: str) -> str:
    style = _STATUS_STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def render(rows: list[JobRow], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
        return
    console = Console(file=out, soft_wrap=False)
    if not rows:
        console.print("ftbridge: no jobs tracked yet")
        return
    console.print(table(rows))


def run_status(
    database_url: str,
    *,
    as_json: bool,
    out: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    """``ftbridge status``: 0, or raises StoreError (one line) when the store cannot be read."""
    store = open_store(database_url)
    try:
        rows = job_rows(store.engine, now=clock())
        rows += [quarantined_row(*entry) for entry in store.quarantined()]
    except sa.exc.SQLAlchemyError as error:
        raise StoreError(f"state store cannot be read: {str(error).splitlines()[0]}") from None
    finally:
        store.close()
    render(rows, as_json=as_json, out=out)
    return 0


__all__ = [
    "JobRow",
    "age",
    "delivery_counts",
    "job_counts",
    "job_rows",
    "open_store",
    "run_location",
    "run_status",
]
