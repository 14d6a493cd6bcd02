"""The state store's tables (SQLAlchemy Core), the same for SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("source", String(128), nullable=False),
    Column("status", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=True),
    Column("job_json", Text, nullable=False),
    Column("run_state", String(16), nullable=False, default="pending"),
    Column("run_segment", Text, nullable=True),
    Column("config_json", Text, nullable=True),
    Column("synced", Boolean, nullable=False, default=False),
    Column("next_seq", Integer, nullable=False, default=0),
    Column("status_seq", Integer, nullable=False, default=0),
    Column("run_url", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)
Index("ix_jobs_synced", jobs.c.synced)

events = Table(
    "events",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=True),
    Column("type", String(64), nullable=True),
    Column("step", BigInteger, nullable=True),
    # The W&B step the row was (or is about to be) logged at; see ``SqlStore.place_rows``.
    Column("wandb_step", BigInteger, nullable=True),
    Column("state", String(16), nullable=False),
    Column("payload", Text, nullable=False),
)
Index("ix_events_job_state_seq", events.c.job_id, events.c.state, events.c.seq)
Index("ix_events_job_wandb_step", events.c.job_id, events.c.wandb_step)

# Artifacts (checkpoints, the model, the result file) given to W&B, and in which segment.
artifacts = Table(
    "artifacts",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("segment", Text, nullable=True),
    Column("logged_at", Float, nullable=False),
)
# Who logged an artifact other runs use (a dataset shared by the jobs that trained on it).
Index("ix_artifacts_key", artifacts.c.key)

# The answers of a job's base vs fine-tuned samples, each kept as it arrives, so that a
# restart asks only for those it lacks (``bridge.evals.sampler``).
sample_answers = Table(
    "sample_answers",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("prompt", Integer, primary_key=True),
    Column("model", String(16), primary_key=True),
    Column("answer_json", Text, nullable=False),
)

# Jobs a source refused (an id W&B cannot take): never synced, listed by ``ftbridge status``.
quarantined = Table(
    "quarantined",
    metadata,
    Column("source", String(128), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("first_seen", Float, nullable=False),
)

# Who works on what when several replicas share the database: a lease per resource
# ("job:<id>", "list:<source>") with an expiry, renewed while its owner is alive.
leases = Table(
    "leases",
    metadata,
    Column("resource", String(256), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Live replicas (a heartbeat), so that each takes a fair share of the jobs.
replicas = Table(
    "replicas",
    metadata,
    Column("replica_id", String(128), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
)

# The webhook outbox's tables live beside the code that uses them; importing the module
# registers them on ``metadata`` so that every store creates them.
import bridge.webhooks.outbox  # noqa: E402, F401
