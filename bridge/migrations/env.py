"""Alembic's environment: always given an open connection by ``bridge.migrate``."""

from __future__ import annotations

from alembic import context

from bridge.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait, then find it done.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7410524)")
    context.run_migrations()
