"""Versioned migrations: up from empty on SQLite and PostgreSQL give exactly the schema the
code uses; a schema newer than the code is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bridge import migrate, schema
from bridge.errors import StoreError
from bridge.store import SqlStore
from tests.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        with fresh_database() as url:
            yield url


def test_migrations_from_empty_give_the_schema_the_code_uses(database_url: str) -> None:
    store = SqlStore(database_url)
    try:
        assert migrate.current(store.engine) == migrate.head()
        with store.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), schema.metadata)
        assert differences == []
        SqlStore(database_url).close()  # a second start finds it done
    finally:
        store.close()


def test_a_schema_newer_than_the_code_is_refused(database_url: str) -> None:
    SqlStore(database_url).close()
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 0099_future, newer than this ftbridge"):
        SqlStore(database_url)


def test_the_head_the_store_checks_without_alembic_is_alembics_head() -> None:
    """``migrate.HEAD`` lets a start skip Alembic when the schema is current: a new
    migration must move it, or stores would stay at the older revision."""
    assert migrate.head() == migrate.HEAD
