"""The outbox: events to send and one delivery per (event, target), in the state store.

The tables live on the shared :data:`bridge.schema.metadata`, so the store creates them once
this module is imported. :func:`enqueue` writes through the caller's connection, inside the
transaction that records the status change: the event is kept exactly when the change is.

A delivery is ``held`` (a terminal status whose run is not final in W&B yet: see
:func:`release`; ``next_attempt_at`` is then when the wait runs out), ``pending`` (due at
``next_attempt_at``), ``delivered``, ``failed`` (given up, or refused by the SSRF guard) or
``disabled`` (its target answered 410 Gone). ``lease_owner`` and
``lease_until`` say which replica is attempting a delivery (see :func:`due`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bridge import mapping
from bridge.ports import StatusChange
from bridge.schema import jobs, metadata, replicas
from bridge.webhooks.events import WebhookEvent, should_notify, status_event
from bridge.webhooks.targets import Targets

DeliveryState = Literal["held", "pending", "delivered", "failed", "disabled"]

FINAL_WAIT = 120.0
"""Seconds a terminal status's notifications wait for the run to be final in W&B."""

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("type", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.UniqueConstraint("event_id", "target", name="uq_webhook_deliveries_event_target"),
)
sa.Index(
    "ix_webhook_deliveries_state_due",
    webhook_deliveries.c.state,
    webhook_deliveries.c.next_attempt_at,
)

webhook_target_state = sa.Table(
    "webhook_target_state",
    metadata,
    sa.Column("target", sa.String(128), primary_key=True),
    sa.Column("disabled_at", sa.Float, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
)


@dataclass(frozen=True)
class Delivery:
    """One row of ``ftbridge webhooks list``."""

    id: int
    event_id: str
    job_id: str
    type: str
    target: str
    kind: str
    state: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class DueDelivery:
    id: int
    event_id: str
    target: str
    kind: str
    attempts: int
    body: bytes


def enqueue(
    conn: Connection,
    event: WebhookEvent,
    targets: Targets,
    *,
    now: float | None = None,
    hold_until: float | None = None,
) -> int:
    """Store the event and a delivery for each matching target, in the caller's transaction:
    pending, or held until ``hold_until`` (or an earlier :func:`release`). Idempotent: the
    same event again adds nothing. Returns deliveries added."""
    matching = targets.matching(event)
    if not matching:
        return 0
    when = time.time() if now is None else now
    _insert_missing(
        conn,
        webhook_events,
        [
            {
                "event_id": event.id,
                "job_id": str(event.data.get("id", "")),
                "type": event.type,
                "created_at": event.created_at,
                "body": event.body().decode("ascii"),
            }
        ],
        ("event_id",),
    )
    disabled = disabled_targets(conn)
    waiting = "pending" if hold_until is None else "held"
    rows = [
        {
            "event_id": event.id,
            "target": target.name,
            "kind": target.kind,
            "state": "disabled" if target.name in disabled else waiting,
            "attempts": 0,
            "next_attempt_at": when if hold_until is None else hold_until,
            "last_error": "target disabled" if target.name in disabled else None,
            "created_at": when,
            "updated_at": when,
        }
        for target in matching
    ]
    return _insert_missing(conn, webhook_deliveries, rows, ("event_id", "target"))


def enqueue_change(
    conn: Connection,
    change: StatusChange,
    targets: Targets,
    *,
    seq: int,
    run_url: str | None,
    notify_backfill: bool = False,
    source: str | None = None,
    now: float | None = None,
    final_wait: float = FINAL_WAIT,
) -> WebhookEvent | None:
    """The engine's one call, inside the transaction that records the change: build the event
    (``seq`` numbers the job's status changes) and enqueue it, unless it is a backfill that
    nobody asked for or no target wants it. A terminal status is held until its run is final
    (at most ``final_wait`` seconds). Returns the event enqueued."""
    if not targets or not should_notify(change, notify_backfill=notify_backfill):
        return None
    when = time.time() if now is None else now
    event = status_event(change, seq=seq, run_url=run_url, created_at=int(when), source=source)
    hold = when + final_wait if mapping.is_terminal(change.current) else None
    return event if enqueue(conn, event, targets, now=when, hold_until=hold) else None


def release(engine: Engine, job_id: str, *, final: bool = True, now: float | None = None) -> int:
    """The job's held notifications go out now; their ``data.run_final`` says whether the
    run showed the final state in W&B by then. The body is set once, before any attempt, so
    every attempt sends the same bytes. Returns the deliveries released."""
    d, e = webhook_deliveries, webhook_events
    when = time.time() if now is None else now
    with engine.begin() as conn:
        held = conn.execute(
            sa.select(d.c.id, e.c.event_id, e.c.body)
            .join(e, e.c.event_id == d.c.event_id)
            .where(d.c.state == "held", e.c.job_id == job_id)
        ).all()
        for event_id, body in {(r.event_id, r.body) for r in held}:
            conn.execute(
                e.update().where(e.c.event_id == event_id).values(body=_with_final(body, final))
            )
        if held:
            conn.execute(
                d.update()
                .where(d.c.id.in_([r.id for r in held]))
                .values(state="pending", next_attempt_at=when, updated_at=when)
            )
    return len(held)


def drop_claims(conn: Connection) -> int:
    """Forget every replica's claim on a delivery (a single process starting over: nobody
    else can be attempting one). Returns the claims dropped."""
    d = webhook_deliveries
    result = conn.execute(
        d.update().where(d.c.lease_owner.is_not(None)).values(lease_owner=None, lease_until=None)
    )
    return max(result.rowcount, 0)


def release_settled(engine: Engine, now: float) -> int:
    """Held notifications of jobs the bridge is done with go out: a crash between a run's
    finish and the release of its job's notifications would otherwise leave them waiting
    for the whole hold. ``run_final`` says whether the run was finished (or needs none)."""
    d, e = webhook_deliveries, webhook_events
    with engine.connect() as conn:
        settled = conn.execute(
            sa.select(e.c.job_id, jobs.c.run_state)
            .join(d, e.c.event_id == d.c.event_id)
            .join(jobs, jobs.c.job_id == e.c.job_id)
            .where(d.c.state == "held", jobs.c.synced.is_(True))
            .distinct()
        ).all()
    return sum(
        release(engine, row.job_id, final=row.run_state in ("finished", "skipped"), now=now)
        for row in settled
    )


def release_expired(engine: Engine, now: float) -> int:
    """Held notifications whose wait ran out go out saying the run is not final yet."""
    d, e = webhook_deliveries, webhook_events
    with engine.connect() as conn:
        jobs = conn.execute(
            sa.select(e.c.job_id)
            .join(d, e.c.event_id == d.c.event_id)
            .where(d.c.state == "held", d.c.next_attempt_at <= now)
            .distinct()
        ).all()
    return sum(release(engine, row.job_id, final=False, now=now) for row in jobs)


def _with_final(body: str, final: bool) -> str:
    event = WebhookEvent.from_body(body)
    return (
        WebhookEvent(event.id, event.type, event.created_at, {**event.data, "run_final": final})
        .body()
        .decode("ascii")
    )


def _insert_missing(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL; returns rows inserted."""
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        added = 0
        for row in rows:
            result = conn.execute(insert(table).values(**row).on_conflict_do_nothing())
            added += max(result.rowcount, 0)
        return added
    fresh = [row for row in rows if not _exists(conn, table, row, keys)]
    if fresh:
        conn.execute(table.insert(), fresh)
    return len(fresh)


def _exists(conn: Connection, table: sa.Table, row: dict[str, Any], keys: Sequence[str]) -> bool:
    query = sa.select(sa.literal(1)).select_from(table)
    for key in keys:
        query = query.where(table.c[key] == row[key])
    return conn.execute(query).first() is not None


def due(
    engine: Engine,
    now: float,
    limit: int = 100,
    *,
    skip_targets: Collection[str] = (),
    owner: str | None = None,
    lease: float = 120.0,
    dead_before: float | None = None,
) -> list[DueDelivery]:
    """Pending deliveries whose time has come, oldest first, claimed for ``owner``.

    With several replicas on one database each delivery is claimed by one of them at a time
    (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, then a lease until ``now + lease``);
    a replica that dies mid-attempt leaves a lease that expires, and another one delivers the
    same delivery, with the same webhook-id. A claim also lapses as soon as its replica's
    heartbeat is older than ``dead_before``: a killed replica's deliveries need not wait for
    the whole lease."""
    d, e = webhook_deliveries, webhook_events
    query = (
        sa.select(d.c.id, d.c.event_id, d.c.target, d.c.kind, d.c.attempts, e.c.body)
        .join(e, e.c.event_id == d.c.event_id)
        .where(d.c.state == "pending", d.c.next_attempt_at <= now)
        .order_by(d.c.next_attempt_at, d.c.id)
        .limit(limit)
    )
    if skip_targets:
        query = query.where(d.c.target.not_in(list(skip_targets)))
    if owner is not None:
        free = [d.c.lease_owner.is_(None), d.c.lease_until < now, d.c.lease_owner == owner]
        if dead_before is not None:
            dead = sa.select(replicas.c.replica_id).where(replicas.c.seen_at < dead_before)
            free.append(d.c.lease_owner.in_(dead))
        query = query.where(sa.or_(*free)).with_for_update(skip_locked=True, of=d)
    with engine.begin() as conn:
        rows = conn.execute(query).all()
        if owner is not None and rows:
            conn.execute(
                d.update()
                .where(d.c.id.in_([r.id for r in rows]))
                .values(lease_owner=owner, lease_until=now + lease)
            )
    return [
        DueDelivery(r.id, r.event_id, r.target, r.kind, r.attempts, r.body.encode("utf-8"))
        for r in rows
    ]


def record_attempt(
    engine: Engine,
    delivery_id: int,
    *,
    state: DeliveryState,
    attempts: int,
    next_attempt_at: float | None,
    status: int | None,
    error: str | None,
    now: float,
) -> None:
    values: dict[str, Any] = {
        "state": state,
        "attempts": attempts,
        "last_status": status,
        "last_error": error[:500] if error else None,
        "updated_at": now,
        "lease_owner": None,
        "lease_until": None,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    with engine.begin() as conn:
        conn.execute(
            webhook_deliveries.update().where(webhook_deliveries.c.id == delivery_id).values(values)
        )


def recent(engine: Engine, limit: int = 50, *, state: str | None = None) -> list[Delivery]:
    """The latest deliveries, newest first (``state`` narrows to one state)."""
    d, e = webhook_deliveries, webhook_events
    query = (
        sa.select(d, e.c.job_id, e.c.type)
        .join(e, e.c.event_id == d.c.event_id)
        .order_by(d.c.updated_at.desc(), d.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(d.c.state == state)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        Delivery(
            id=r.id,
            event_id=r.event_id,
            job_id=r.job_id,
            type=r.type,
            target=r.target,
            kind=r.kind,
            state=r.state,
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at,
            last_status=r.last_status,
            last_error=r.last_error,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def replay(engine: Engine, ident: str | int, *, now: float | None = None) -> int:
    """Send again: a delivery id, or an ``evt_...`` id (all its deliveries). The event keeps
    its id and body; the schedule starts over. Returns how many deliveries were re-queued."""
    d = webhook_deliveries
    text = str(ident).strip()
    if text.startswith("evt_"):
        where = d.c.event_id == text
    elif text.isdigit():
        where = d.c.id == int(text)
    else:
        return 0
    when = time.time() if now is None else now
    with engine.begin() as conn:
        result = conn.execute(
            d.update()
            .where(where)
            .values(state="pending", attempts=0, next_attempt_at=when, updated_at=when)
        )
    return max(result.rowcount, 0)


def pending_count(engine: Engine) -> int:
    d = webhook_deliveries
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(d).where(d.c.state.in_(("pending", "held")))
        ).scalar_one()
    return int(count)


def disabled_targets(conn: Connection) -> set[str]:
    s = webhook_target_state
    rows = conn.execute(sa.select(s.c.target).where(s.c.disabled_at.is_not(None))).all()
    return {r.target for r in rows}


def disable_target(engine: Engine, name: str, *, reason: str, now: float) -> int:
    """Mark the target disabled (it answered 410 Gone): its pending deliveries stop, and new
    events are stored for it as ``disabled``. Returns the deliveries stopped."""
    s, d = webhook_target_state, webhook_deliveries
    with engine.begin() as conn:
        conn.execute(s.delete().where(s.c.target == name))
        conn.execute(s.insert().values(target=name, disabled_at=now, reason=reason[:500]))
        result = conn.execute(
            d.update()
            .where(d.c.target == name, d.c.state == "pending")
            .values(state="disabled", last_error=reason[:500], updated_at=now)
        )
    return max(result.rowcount, 0)


def enable_target(engine: Engine, name: str, *, now: float | None = None) -> int:
    """Enable a disabled target again and re-queue its disabled deliveries."""
    s, d = webhook_target_state, webhook_deliveries
    when = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(s.delete().where(s.c.target == name))
        result = conn.execute(
            d.update()
            .where(d.c.target == name, d.c.state == "disabled")
            .values(state="pending", attempts=0, next_attempt_at=when, updated_at=when)
        )
    return max(result.rowcount, 0)
