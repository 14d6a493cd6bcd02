"""Leases: which replica works on what, when several share one database.

A lease is a row (resource, owner, expires_at). Taking one is a single atomic statement
either way: an UPDATE that succeeds only if the lease is ours or has expired, else an
INSERT that does nothing if another replica got there first (``ON CONFLICT DO NOTHING``,
on SQLite and PostgreSQL alike). The owner renews its leases while it lives; a dead
replica's leases expire and another takes them over. Replicas also beat a heart in the
``replicas`` table so that each can take a fair share of the jobs.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bridge import schema
from bridge.store import store_error

log = structlog.get_logger(__name__)
#: Resources per statement when many are taken at once.
_CHUNK = 500


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _insert_if_absent(conn: Connection, values: dict[str, object]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING; returns the rows inserted (0 or 1)."""
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(schema.leases).values(**values)
        return conn.execute(pg.on_conflict_do_nothing(index_elements=["resource"])).rowcount
    lite = sqlite.insert(schema.leases).values(**values)
    return conn.execute(lite.on_conflict_do_nothing(index_elements=["resource"])).rowcount


class Leases:
    def __init__(
        self,
        engine: Engine,
        *,
        owner: str | None = None,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.owner = owner or replica_id()
        self.ttl = ttl
        self.clock = clock
        self._held: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A transaction; the database's errors come out as the store's (retried later)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as error:
            raise store_error(self.engine, error, "state store failed (leases)") from None

    # One resource
    def acquire(self, resource: str) -> bool:
        """Take or renew ``resource``; False when another live replica holds it."""
        now = self.clock()
        leases = schema.leases
        with self._tx() as conn:
            updated = conn.execute(
                leases.update()
                .where(
                    leases.c.resource == resource,
                    sa.or_(leases.c.owner == self.owner, leases.c.expires_at < now),
                )
                .values(owner=self.owner, expires_at=now + self.ttl)
            )
            taken = updated.rowcount == 1
            if not taken:
                values = {"resource": resource, "owner": self.owner, "expires_at": now + self.ttl}
                taken = _insert_if_absent(conn, values) == 1
        with self._lock:
            (self._held.add if taken else self._held.discard)(resource)
        return taken

    def acquire_many(self, resources: Sequence[str]) -> set[str]:
        """:meth:`acquire` for many resources in one transaction (a statement per chunk of
        them, not per resource); returns those taken or renewed."""
        names = list(dict.fromkeys(resources))
        now = self.clock()
        leases = schema.leases
        taken: set[str] = set()
        values = {"owner": self.owner, "expires_at": now + self.ttl}
        with self._tx() as conn:
            for start in range(0, len(names), _CHUNK):
                chunk = names[start : start + _CHUNK]
                conn.execute(
                    leases.update()
                    .where(
                        leases.c.resource.in_(chunk),
                        sa.or_(leases.c.owner == self.owner, leases.c.expires_at < now),
                    )
                    .values(**values)
                )
                owners = {
                    row.resource: row.owner
                    for row in conn.execute(
                        sa.select(leases.c.resource, leases.c.owner).where(
                            leases.c.resource.in_(chunk)
                        )
                    )
                }
                for name in chunk:
                    if name in owners:
                        mine = owners[name] == self.owner
                    else:
                        mine = _insert_if_absent(conn, {"resource": name, **values}) == 1
                    if mine:
                        taken.add(name)
        with self._lock:
            self._held.difference_update(names)
            self._held.update(taken)
        return taken

    def holds(self, resource: str) -> bool:
        with self._lock:
            return resource in self._held

    def held(self, prefix: str = "") -> set[str]:
        with self._lock:
            return {r for r in self._held if r.startswith(prefix)}

    def release(self, resources: Iterable[str]) -> None:
        names = list(resources)
        if not names:
            return
        with self._tx() as conn:
            conn.execute(
                schema.leases.delete().where(
                    schema.leases.c.resource.in_(names), schema.leases.c.owner == self.owner
                )
            )
        with self._lock:
            self._held.difference_update(names)

    # All of them
    def renew(self) -> int:
        """Extend every lease this replica holds; forget those it lost. Returns how many it
        still holds."""
        now = self.clock()
        held = self.held()
        if not held:
            return 0
        with self._tx() as conn:
            conn.execute(
                schema.leases.update()
                .where(schema.leases.c.owner == self.owner, schema.leases.c.resource.in_(held))
                .values(expires_at=now + self.ttl)
            )
            still = {
                r.resource
                for r in conn.execute(
                    sa.select(schema.leases.c.resource).where(schema.leases.c.owner == self.owner)
                )
            }
        lost = held - still
        if lost:
            log.warning("leases.lost", count=len(lost), resources=sorted(lost)[:5])
        with self._lock:
            self._held &= still
            return len(self._held)

    def release_all(self) -> None:
        with self._tx() as conn:
            conn.execute(schema.leases.delete().where(schema.leases.c.owner == self.owner))
            conn.execute(schema.replicas.delete().where(schema.replicas.c.replica_id == self.owner))
        with self._lock:
            self._held.clear()

    # Replicas
    def heartbeat(self) -> int:
        """Say this replica is alive; return how many replicas are."""
        now = self.clock()
        replicas = schema.replicas
        with self._tx() as conn:
            updated = conn.execute(
                replicas.update().where(replicas.c.replica_id == self.owner).values(seen_at=now)
            )
            if updated.rowcount == 0:
                conn.execute(
                    replicas.insert().values(
                        replica_id=self.owner,
                        host=socket.gethostname(),
                        started_at=now,
                        seen_at=now,
                    )
                )
            conn.execute(replicas.delete().where(replicas.c.seen_at < now - 10 * self.ttl))
            alive = conn.execute(
                sa.select(sa.func.count()).where(replicas.c.seen_at >= now - self.ttl)
            ).scalar_one()
        return max(1, int(alive))

    def fair_share(self, total: int) -> int:
        """How many of ``total`` resources this replica should hold."""
        return math.ceil(total / self.heartbeat()) if total else 0
