"""Versioned schema migrations (Alembic), the same for SQLite and PostgreSQL.

Alembic (about 0.2 s to import, and a walk over the scripts) is loaded only when the
schema is not at :data:`HEAD` already: the usual start, and every writer process of a
backfill, reads the recorded version and goes on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bridge.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).parent / "migrations"
#: The newest revision in ``migrations/versions`` (a test holds it to Alembic's head).
HEAD = "0005"
_VERSIONS = sa.table("alembic_version", sa.column("version_num", sa.String))


def _config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the module's docstring

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head() -> str:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_not_newer(engine: Engine, shown_url: str) -> None:
    """Refuse a database migrated by a newer ftbridge: this code would misread it."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    revision = current(engine)
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision is not None and revision not in known:
        raise StoreError(
            f"state store {shown_url} has schema version {revision}, newer than this "
            f"ftbridge knows ({head()}); run a newer ftbridge"
        )


def upgrade(engine: Engine, shown_url: str) -> None:
    """Bring the schema to the newest version (several processes may try at once)."""
    if _recorded(engine) == HEAD:
        return
    from alembic import command  # noqa: PLC0415

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


def _recorded(engine: Engine) -> str | None:
    """The schema version the database records (None: none yet, or not one version),
    read without Alembic."""
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(_VERSIONS.c.version_num)).scalars().all()
    except sa.exc.DBAPIError:
        return None  # no version table yet: the full path below creates it
    return found[0] if len(found) == 1 else None
