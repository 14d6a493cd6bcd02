"""The state store on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bridge import mapping, migrate, schema, statements
from bridge.bulk import execute_many
from bridge.errors import StoreError, StoreUnavailable
from bridge.ports import (
    EventState,
    JobState,
    Json,
    RunState,
    StatusChange,
    StoredEvent,
)
from bridge.webhooks import outbox

#: SQLite's page cache per connection, in KiB.
SQLITE_CACHE_KIB = 512


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL survives a killed process; only an OS crash or power cut can lose the
    # last commits, and what they held is read again from the API.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Each pooled connection keeps its own page cache (2 MB by default; up to 15 connections
    # with the reading threads); the OS caches the file for all of them.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url in ("sqlite://", "sqlite:///:memory:"):
        # One shared connection, or every connection would see its own empty database.
        return sa.create_engine(
            url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    if sa.make_url(url).get_backend_name() == "sqlite":
        # A file has no connection to lose: no ping before every transaction.
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True, default=str)


def _job_state(row: sa.Row[Any]) -> JobState:
    return JobState(
        job_id=row.job_id,
        source=row.source,
        status=row.status,
        job=json.loads(row.job_json),
        run_state=cast(RunState, row.run_state),
        run_segment=row.run_segment,
        config=json.loads(row.config_json) if row.config_json else None,
        synced=bool(row.synced),
        run_url=row.run_url,
    )


ChangeHook = Callable[[Connection, StatusChange], object]
#: Jobs bound in one statement of a batch (``b_jobs``, expanding).
BATCH_JOBS = 100
#: Given a job's pending events and its last W&B step: the W&B step of each (by event id).
Placer = Callable[[list[StoredEvent], int], Mapping[str, int]]
#: The same, given the job's id first.
JobPlacer = Callable[[str, list[StoredEvent], int], Mapping[str, int]]


class SqlStore:
    """:class:`bridge.ports.StateStore` on a SQL database.

    ``on_change`` is called with the open transaction for every status change, so that what
    it writes (the webhook outbox) commits or rolls back with the change itself."""

    def __init__(self, url: str, *, on_change: ChangeHook | None = None) -> None:
        self.on_change = on_change
        self._lock_handle: object | None = None
        self._url_shown = sa.make_url(url).render_as_string(hide_password=True)
        try:
            self._engine = create_db_engine(url)
            migrate.upgrade(self._engine, self._url_shown)
        except sa.exc.SQLAlchemyError as error:
            raise store_error(
                self._engine, error, f"state store {self._url_shown} cannot be used"
            ) from None
        # SQLite has one writer at a time and makes the others sleep and retry (its busy
        # handler backs off up to 100 ms a try): with dozens of reading threads storing
        # events, a cycle spent most of its time asleep. They take turns here instead.
        self._turn: AbstractContextManager[object] = (
            threading.RLock() if self._engine.dialect.name == "sqlite" else nullcontext()
        )

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._failures(), self._turn, self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads only, outside the writers' turn."""
        with self._failures(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """SQLAlchemy's errors as the store's (retryable or not, the URL without password)."""
        try:
            yield
        except sa.exc.SQLAlchemyError as error:
            raise store_error(
                self._engine, error, f"state store {self._url_shown} failed"
            ) from None

    def claim_single_process(self) -> None:
        """SQLite serves one process: take an exclusive lock beside the file (held until the
        process ends), or refuse clearly. Leases left by an earlier run of this one process
        and their claims on webhook deliveries are cleared, since nobody else can hold them."""
        url = self._engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return
        lock_path = Path(url.database).with_name(Path(url.database).name + ".lock")
        try:
            handle = lock_path.open("a")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"state store {self._url_shown} is in use by another ftbridge process; SQLite "
                "cannot be shared: run one process, or use PostgreSQL for several replicas"
            ) from None
        except OSError as error:
            raise StoreError(f"cannot lock {lock_path}: {error.strerror}") from None
        self._lock_handle = handle
        with self._tx() as conn:
            conn.execute(schema.leases.delete())
            conn.execute(schema.replicas.delete())
            outbox.drop_claims(conn)

    @property
    def engine(self) -> Engine:
        return self._engine

    # Jobs
    def get_job(self, job_id: str) -> JobState | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.job_id == job_id)).first()
        return _job_state(row) if row else None

    def has_job(self, job_id: str) -> bool:
        with self._tx() as conn:
            found = conn.execute(
                sa.select(schema.jobs.c.job_id).where(schema.jobs.c.job_id == job_id)
            ).first()
        return found is not None

    def record_job(
        self, source: str, job: Json, *, run_url: str | None = None
    ) -> StatusChange | None:
        job_id = str(job["id"])
        status = str(job.get("status") or "unknown")
        created = job.get("created_at") if isinstance(job.get("created_at"), int) else None
        snapshot = _dumps(job)

        def unchanged(row: Any) -> bool:  # a row of SNAPSHOT_OF, or None
            return row is not None and row.job_json == snapshot and run_url in (None, row.run_url)

        # Most snapshots are seen unchanged (a listing of every page now and then): read
        # outside the writers' turn, and take it only for a change (read again inside it).
        with self._read() as conn:
            if unchanged(conn.execute(statements.SNAPSHOT_OF, {"b_job": job_id}).first()):
                return None
        with self._tx() as conn:
            row = conn.execute(statements.SNAPSHOT_OF, {"b_job": job_id}).first()
            if unchanged(row):
                return None  # nothing new: no write
            values: dict[str, Any] = {
                "status": status,
                "job_json": snapshot,
                "updated_at": time.time(),
            }
            if run_url is not None:
                values["run_url"] = run_url
            if row is None:
                conn.execute(
                    schema.jobs.insert().values(
                        job_id=job_id,
                        source=source,
                        created_at=created,
                        run_state="pending",
                        synced=False,
                        next_seq=0,
                        status_seq=0,
                        **values,
                    )
                )
                change = StatusChange(job_id, None, status, job, 0, run_url, source)
            elif row.status != status:
                # A job seen again after it was synced (resumed, say) is synced again.
                values["synced"] = bool(row.synced) and mapping.is_terminal(status)
                values["status_seq"] = row.status_seq + 1
                conn.execute(
                    schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(**values)
                )
                url = run_url or row.run_url
                change = StatusChange(
                    job_id, row.status, status, job, row.status_seq + 1, url, source
                )
            else:
                conn.execute(
                    schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(**values)
                )
                return None
            if self.on_change is not None:
                self.on_change(conn, change)
        return change

    def unsynced_jobs(self, source: str | None = None) -> list[JobState]:
        query = sa.select(schema.jobs).where(schema.jobs.c.synced.is_(False))
        if source is not None:
            query = query.where(schema.jobs.c.source == source)
        with self._tx() as conn:
            rows = conn.execute(
                query.order_by(schema.jobs.c.created_at, schema.jobs.c.job_id)
            ).all()
        return [_job_state(r) for r in rows]

    def unsynced_ids(self, source: str) -> set[str]:
        """The ids of :meth:`unsynced_jobs` (without reading their snapshots)."""
        with self._read() as conn:
            return set(conn.execute(statements.UNSYNCED_IDS, {"b_source": source}).scalars())

    def job_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(statements.JOB_COUNT).scalar_one())

    def jobs_with_open_runs(self) -> list[JobState]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(schema.jobs).where(schema.jobs.c.run_state == "open")
            ).all()
        return [_job_state(r) for r in rows]

    def all_jobs(self) -> list[JobState]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(schema.jobs).order_by(schema.jobs.c.created_at)).all()
        return [_job_state(r) for r in rows]

    def set_run(
        self,
        job_id: str,
        run_state: RunState,
        segment: str | None = None,
        config: Json | None = None,
    ) -> None:
        values: dict[str, Any] = {"run_state": run_state, "updated_at": time.time()}
        if segment is not None:
            values["run_segment"] = segment
        if config is not None:
            values["config_json"] = _dumps(config)
        with self._tx() as conn:
            conn.execute(
                schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(**values)
            )

    def mark_synced(self, job_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(synced=True)
            )

    # Events
    def known_event_ids(self, job_id: str, event_ids: Sequence[str]) -> set[str]:
        """Read without taking the writers' turn: the API-reading threads call this while
        the writer stores (SQLite's WAL lets readers run beside its one writer)."""
        if not event_ids:
            return set()
        with self._read() as conn:
            return self._known(conn, job_id, event_ids)

    def add_events(self, job_id: str, events: Sequence[Json]) -> int:
        return self.add_events_many([(job_id, events)])

    def add_events_many(self, batch: Sequence[tuple[str, Sequence[Json]]]) -> int:
        """Several jobs' new events (each job's oldest first) in one transaction, with a
        few statements for every ``BATCH_JOBS`` jobs (not a few for every job)."""
        batch = [(job_id, events) for job_id, events in batch if events]
        if not batch:
            return 0
        with self._tx() as conn:
            return sum(
                self._insert_new(conn, batch[start : start + BATCH_JOBS])
                for start in range(0, len(batch), BATCH_JOBS)
            )

    @staticmethod
    def _known(conn: Connection, job_id: str, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` the job has stored."""
        found = conn.execute(statements.KNOWN_IDS, {"b_job": job_id, "b_ids": list(event_ids)})
        return set(found.scalars())

    def _insert_new(self, conn: Connection, batch: Sequence[tuple[str, Sequence[Json]]]) -> int:
        """Store the events (each job's oldest first) not stored yet; the number stored."""
        jobs = list(dict.fromkeys(job_id for job_id, _ in batch))
        # Each job's own lookup: one statement for all (jobs x ids) probes every pair.
        known = {job_id: set[str]() for job_id in jobs}
        for job_id, events in batch:
            known[job_id] |= self._known(conn, job_id, _ids(events))
        seqs = dict(conn.execute(statements.NEXT_SEQS, {"b_jobs": jobs}).tuples().all())
        filled: dict[str, set[int]] = {job_id: set() for job_id in jobs}
        for job_id, step in conn.execute(statements.FILLED_STEPS_OF, {"b_jobs": jobs}).tuples():
            filled[job_id].add(int(step))
        rows: list[dict[str, Any]] = []
        for job_id, events in batch:
            if job_id not in seqs:
                raise sa.exc.NoResultFound(f"events of job {job_id}, which is not stored")
            for event in events:
                event_id = str(event.get("id"))
                if event_id in known[job_id]:
                    continue
                known[job_id].add(event_id)
                rows.append(_event_row(job_id, event_id, event, seqs[job_id], filled[job_id]))
                seqs[job_id] += 1
        if rows:
            execute_many(conn, statements.INSERT_EVENTS, rows)
            moved = {row["job_id"] for row in rows}
            conn.execute(
                statements.SET_NEXT_SEQ, [{"b_job": j, "b_seq": seqs[j]} for j in sorted(moved)]
            )
        return len(rows)

    def pending_events(self, job_id: str) -> list[StoredEvent]:
        return self._events(job_id, "new")

    def events(self, job_id: str) -> list[StoredEvent]:
        return self._events(job_id, None)

    def _events(self, job_id: str, state: EventState | None) -> list[StoredEvent]:
        with self._tx() as conn:
            return self._events_in(conn, job_id, state)

    @staticmethod
    def _events_in(conn: Connection, job_id: str, state: EventState | None) -> list[StoredEvent]:
        if state is None:
            rows = conn.execute(statements.ALL_EVENTS, {"b_job": job_id}).all()
        else:
            rows = conn.execute(
                statements.EVENTS_IN_STATE, {"b_job": job_id, "b_state": state}
            ).all()
        return [_stored_event(r) for r in rows]

    def event_steps(self, job_id: str) -> set[int]:
        e = schema.events
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(e.c.step).where(e.c.job_id == job_id, e.c.step.is_not(None)).distinct()
            ).all()
        return {int(r.step) for r in rows}

    def last_wandb_step(self, job_id: str) -> int:
        with self._tx() as conn:
            return self._last_wandb_step(conn, job_id)

    @staticmethod
    def _last_wandb_step(conn: Connection, job_id: str) -> int:
        found = conn.execute(statements.LAST_WANDB_STEP, {"b_job": job_id}).one()
        return max([-1, *(int(v) for v in found if v is not None)])

    def mark_sent(self, job_id: str, placed: Mapping[str, int]) -> None:
        if not placed:
            return
        with self._tx() as conn:
            self._mark_sent(conn, job_id, placed)

    @staticmethod
    def _mark_sent(conn: Connection, job_id: str, placed: Mapping[str, int]) -> None:
        if not placed:
            return
        rows = [{"b_job": job_id, "b_event": k, "b_at": at} for k, at in placed.items()]
        execute_many(conn, statements.MARK_SENT, rows)

    def send_pending(self, job_id: str, place: Placer) -> list[StoredEvent]:
        return self.send_pending_many([job_id], lambda _job, *args: place(*args))[job_id]

    def send_pending_many(
        self, job_ids: Sequence[str], place: JobPlacer
    ) -> dict[str, list[StoredEvent]]:
        """For each job: its pending events, placed at their W&B steps and marked sent (the
        steps recorded), all in one transaction, a few statements per ``BATCH_JOBS`` jobs."""
        sent: dict[str, list[StoredEvent]] = {}
        jobs = list(dict.fromkeys(job_ids))
        if not jobs:
            return sent
        with self._tx() as conn:
            for start in range(0, len(jobs), BATCH_JOBS):
                part = jobs[start : start + BATCH_JOBS]
                sent.update(self._send_pending(conn, part, place))
        return sent

    @staticmethod
    def _send_pending(
        conn: Connection, jobs: list[str], place: JobPlacer
    ) -> dict[str, list[StoredEvent]]:
        pending: dict[str, list[StoredEvent]] = {job_id: [] for job_id in jobs}
        rows = conn.execute(statements.EVENTS_IN_STATE_OF, {"b_jobs": jobs, "b_state": "new"})
        for row in rows:
            pending[row.job_id].append(_stored_event(row))
        marks: list[dict[str, Any]] = []
        for job_id in jobs:
            if not pending[job_id]:
                continue
            # Each job's own lookup: its highest steps come off the index, where one
            # statement grouping the batch by job would read every row of every job.
            last = SqlStore._last_wandb_step(conn, job_id)
            placed = place(job_id, pending[job_id], last)
            marks.extend({"b_job": job_id, "b_event": k, "b_at": at} for k, at in placed.items())
        if marks:
            execute_many(conn, statements.MARK_SENT, marks)
        return pending

    def close_run(self, job_id: str, run_state: RunState) -> None:
        """The job's run closed cleanly: what it was sent is durable (one transaction)."""
        with self._tx() as conn:
            conn.execute(statements.SENT_DURABLE, {"b_job": job_id})
            conn.execute(
                statements.SET_RUN_STATE,
                {"b_job": job_id, "b_run_state": run_state, "b_at": time.time()},
            )

    def recover_segment(self, job_id: str, durable_steps: set[int]) -> int:
        sent = self._events(job_id, "sent")
        # Rows stored before W&B steps were recorded are matched by their training step.
        on_disk = [e.event_id for e in sent if _placed_at(e) in durable_steps]
        again = [e.event_id for e in sent if _placed_at(e) not in durable_steps]
        with self._tx() as conn:
            self._set_states(conn, job_id, on_disk, again)
            self._forget_segment_artifacts(conn, job_id, None)
            conn.execute(
                schema.jobs.update()
                .where(schema.jobs.c.job_id == job_id)
                .values(run_state="closed", updated_at=time.time())
            )
        return len(again)

    def recover_from_server(self, job_id: str, resumed_at: int, lost_segment: str | None) -> int:
        e = schema.events
        # Where a row was handed (rows stored before W&B steps were recorded: their step).
        placed = sa.func.coalesce(e.c.wandb_step, e.c.step)
        handed = sa.or_(
            e.c.state == "sent", sa.and_(e.c.state == "new", e.c.wandb_step.is_not(None))
        )
        with self._tx() as conn:
            conn.execute(
                e.update()
                .where(e.c.job_id == job_id, handed, placed < resumed_at)
                .values(state="durable")
            )
            again = conn.execute(
                e.update()
                .where(e.c.job_id == job_id, e.c.state == "sent", placed >= resumed_at)
                .values(state="new")
            ).rowcount
            if lost_segment is not None:
                self._forget_segment_artifacts(conn, job_id, lost_segment)
        return max(again, 0)

    @staticmethod
    def _set_states(
        conn: Connection, job_id: str, durable: Sequence[str], again: Sequence[str]
    ) -> None:
        """``durable`` ids become durable; ``again`` ids go back to ``new``, keeping their
        W&B step, so that they are logged again exactly where they were."""
        e = schema.events
        for ids, state in ((durable, "durable"), (again, "new")):
            for start in range(0, len(ids), 500):
                conn.execute(
                    e.update()
                    .where(e.c.job_id == job_id, e.c.event_id.in_(list(ids[start : start + 500])))
                    .values(state=state)
                )

    @staticmethod
    def _forget_segment_artifacts(conn: Connection, job_id: str, segment: str | None) -> None:
        """Artifacts given in a lost segment are given again (W&B keeps one version per
        content digest, so one that did arrive makes no second version)."""
        if segment is None:
            segment = conn.execute(
                sa.select(schema.jobs.c.run_segment).where(schema.jobs.c.job_id == job_id)
            ).scalar_one_or_none()
        conn.execute(
            schema.artifacts.delete().where(
                schema.artifacts.c.job_id == job_id, schema.artifacts.c.segment == segment
            )
        )

    # Jobs a source refused
    def quarantine(self, source: str, job_id: str, reason: str) -> None:
        shown = job_id if len(job_id) <= 128 else f"{job_id[:100]}...({len(job_id)} characters)"
        q = schema.quarantined
        with self._tx() as conn:
            known = conn.execute(
                sa.select(q.c.job_id).where(q.c.source == source, q.c.job_id == shown)
            ).first()
            if known is None:
                conn.execute(
                    q.insert().values(
                        source=source, job_id=shown, reason=reason[:500], first_seen=time.time()
                    )
                )

    def quarantined(self) -> list[tuple[str, str, str]]:
        """(source, job id, reason) of every job a source refused."""
        q = schema.quarantined
        with self._tx() as conn:
            rows = conn.execute(sa.select(q).order_by(q.c.first_seen)).all()
        return [(r.source, r.job_id, r.reason) for r in rows]

    # Artifacts
    def logged_artifacts(self, job_id: str) -> set[str]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(schema.artifacts.c.key).where(schema.artifacts.c.job_id == job_id)
            ).all()
        return {r.key for r in rows}

    def mark_artifact(self, job_id: str, key: str, *, in_segment: bool = True) -> None:
        with self._tx() as conn:
            if in_segment:
                conn.execute(
                    statements.MARK_ARTIFACT_IN_SEGMENT,
                    {"b_job": job_id, "b_key": key, "b_at": time.time()},
                )
            else:
                conn.execute(
                    schema.artifacts.insert().values(
                        job_id=job_id, key=key, segment=None, logged_at=time.time()
                    )
                )

    def artifact_holder(self, key: str) -> str | None:
        """The job whose run logged the artifact ``key`` first, if any did."""
        a = schema.artifacts
        with self._tx() as conn:
            return conn.execute(
                sa.select(a.c.job_id).where(a.c.key == key).order_by(a.c.logged_at).limit(1)
            ).scalar_one_or_none()

    # Answers of the samples
    def sample_answers(self, job_id: str) -> dict[tuple[int, str], Json]:
        s = schema.sample_answers
        with self._tx() as conn:
            rows = conn.execute(sa.select(s).where(s.c.job_id == job_id)).all()
        return {(r.prompt, r.model): json.loads(r.answer_json) for r in rows}

    def save_sample_answer(self, job_id: str, prompt: int, model: str, answer: Json) -> None:
        with self._tx() as conn:
            conn.execute(
                schema.sample_answers.insert().values(
                    job_id=job_id, prompt=prompt, model=model, answer_json=json.dumps(answer)
                )
            )

    def close(self) -> None:
        self._engine.dispose()


def _event_row(
    job_id: str, event_id: str, event: Json, seq: int, filled: set[int]
) -> dict[str, Any]:
    step = mapping.step_of(event)
    # A step the result file filled in is in W&B already: its event, read late (after a
    # restart, say), is kept but not logged a second time.
    state: EventState = "new" if step is not None and step not in filled else "none"
    created = event.get("created_at")
    return {
        "job_id": job_id,
        "event_id": event_id,
        "seq": seq,
        "created_at": created if isinstance(created, int) else None,
        "type": str(event.get("type"))[:64],
        "step": step,
        "state": state,
        "payload": _dumps(event),
    }


def _stored_event(r: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        job_id=r.job_id,
        event_id=r.event_id,
        seq=r.seq,
        step=r.step,
        event=json.loads(r.payload),
        state=cast(EventState, r.state),
        wandb_step=r.wandb_step,
    )


def _ids(events: Sequence[Json]) -> list[str]:
    return [str(e.get("id")) for e in events]


def _placed_at(event: StoredEvent) -> int:
    """The W&B step an event's row was handed at (rows stored before W&B steps were
    recorded went to their training step)."""
    if event.wandb_step is not None:
        return event.wandb_step
    return event.step if event.step is not None else -1


def store_error(engine: Engine, error: sa.exc.SQLAlchemyError, what: str) -> StoreError:
    """A database error as the store's: ``StoreUnavailable`` (tried again later) for a server
    that does not answer, ``StoreError`` otherwise (SQLite files fail for other reasons)."""
    unreachable = engine.dialect.name != "sqlite" and isinstance(
        error, sa.exc.OperationalError | sa.exc.InterfaceError
    )
    kind = StoreUnavailable if unreachable else StoreError
    return kind(f"{what}: {_reason(error)}")


def _reason(error: sa.exc.SQLAlchemyError) -> str:
    original = getattr(error, "orig", None)
    text = str(original) if original is not None else str(error)
    return text.splitlines()[0] if text else type(error).__name__
