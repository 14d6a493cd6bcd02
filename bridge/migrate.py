"""Versioned schema migrations (Alembic), the same for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from bridge.errors import StoreError

_SCRIPTS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head() -> str:
    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_not_newer(engine: Engine, shown_url: str) -> None:
    """Refuse a database migrated by a newer ftbridge: this code would misread it."""
    revision = current(engine)
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision is not None and revision not in known:
        raise StoreError(
            f"state store {shown_url} has schema version {revision}, newer than this "
            f"ftbridge knows ({head()}); run a newer ftbridge"
        )


def upgrade(engine: Engine, shown_url: str) -> None:
    """Bring the schema to the newest version (several processes may try at once)."""
    check_not_newer(engine, shown_url)
    if current(engine) == head():
        return
    config = _config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
        if current(engine) != head():  # not another process that got there first
            raise
