"""Many rows through SQLite's driver (bridge.bulk): the same rows as SQLAlchemy's path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge import schema, statements
from bridge.bulk import execute_many


def _engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    return engine


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "job_id": f"ftjob-{i % 3}",
            "event_id": f"ev-{i}",
            "seq": i,
            "created_at": None if i % 5 == 0 else 1_700_000_000 + i,
            "type": "metrics",
            "step": None if i % 7 == 0 else i,
            "state": "new",
            "payload": f'{{"id": "ev-{i}", "note": "é \\u0000 {i}"}}',
        }
        for i in range(n)
    ]


def _table(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(schema.events).order_by("seq"))]


def test_inserts_and_marks_store_what_sqlalchemys_path_stores(tmp_path: Path) -> None:
    rows = _events(250)
    marks = [{"b_job": r["job_id"], "b_event": r["event_id"], "b_at": r["seq"] * 2} for r in rows]
    ours, theirs = _engine(tmp_path / "a.db"), _engine(tmp_path / "b.db")
    with ours.begin() as conn:
        execute_many(conn, statements.INSERT_EVENTS, rows)
        execute_many(conn, statements.MARK_SENT, marks[::2])
    with theirs.begin() as conn:
        conn.execute(statements.INSERT_EVENTS, rows)
        conn.execute(statements.MARK_SENT, marks[::2])
    assert _table(ours) == _table(theirs)
    states = {row[7] for row in _table(ours)}
    assert states == {"new", "sent"}  # the statement's own value (state='sent') was set


def test_a_duplicate_row_fails_as_sqlalchemy_says_and_the_transaction_leaves_nothing(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path / "s.db")
    rows = _events(3)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        execute_many(conn, statements.INSERT_EVENTS, [*rows, rows[0]])
    assert _table(engine) == []


def test_a_type_that_converts_its_values_keeps_sqlalchemys_path(tmp_path: Path) -> None:
    """A DateTime column converts on the way in (SQLite stores text): the driver path
    would store the raw object, so such a statement is left to SQLAlchemy."""
    metadata = sa.MetaData()
    table = sa.Table("t", metadata, sa.Column("at", sa.DateTime), sa.Column("n", sa.Integer))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 't.db'}")
    metadata.create_all(engine)
    when = datetime(2026, 12, 1, 12, 30, tzinfo=UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        execute_many(conn, table.insert(), [{"at": when, "n": 1}, {"at": when, "n": 2}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.at, table.c.n)).all() == [(when, 1), (when, 2)]
        assert conn.exec_driver_sql("SELECT at FROM t").scalar() == "2026-12-01 12:30:00.000000"


def test_no_rows_runs_nothing(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "e.db")
    with engine.begin() as conn:
        execute_many(conn, statements.INSERT_EVENTS, [])
    assert _table(engine) == []
