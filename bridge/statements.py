"""The store's statements on its hot path (every job, every cycle), built once.

SQLAlchemy memoizes a statement's cache key on the statement object, so a statement built
once with bind parameters costs its lookup and execution only; one built again on every
call also pays for its construction and its cache key, which was most of the store's time
in the live benchmark (1,000 running jobs, py-spy). What they do is unchanged: the same SQL,
with the values bound instead of built in.
"""

from __future__ import annotations

import sqlalchemy as sa

from bridge import schema

_e, _j = schema.events, schema.jobs
_JOB: sa.BindParameter[str] = sa.bindparam("b_job")

#: The event ids of ``b_ids`` (expanding) stored for job ``b_job``.
KNOWN_IDS = sa.select(_e.c.event_id).where(
    _e.c.job_id == _JOB, _e.c.event_id.in_(sa.bindparam("b_ids", expanding=True))
)

#: Set the next event sequence number of job ``b_job`` to ``b_seq``.
SET_NEXT_SEQ = _j.update().where(_j.c.job_id == _JOB).values(next_seq=sa.bindparam("b_seq"))

#: Insert events (executemany with every column given).
INSERT_EVENTS = _e.insert()

#: Job ``b_job``'s events in state ``b_state``, in the order they were stored.
EVENTS_IN_STATE = (
    sa.select(_e)
    .where(_e.c.job_id == _JOB, _e.c.state == sa.bindparam("b_state"))
    .order_by(_e.c.seq)
)

#: Every event of job ``b_job``, in the order they were stored.
ALL_EVENTS = sa.select(_e).where(_e.c.job_id == _JOB).order_by(_e.c.seq)

#: Two lookups on the (job_id, wandb_step) index: job ``b_job``'s highest W&B step, and
#: among rows without one (stored before W&B steps were recorded) the highest training step
#: of those already handed to W&B.
LAST_WANDB_STEP = sa.select(
    sa.select(sa.func.max(_e.c.wandb_step)).where(_e.c.job_id == _JOB).scalar_subquery(),
    sa.select(sa.func.max(_e.c.step))
    .where(
        _e.c.job_id == _JOB,
        _e.c.wandb_step.is_(None),
        _e.c.state.in_(("sent", "durable")),
    )
    .scalar_subquery(),
)

#: Mark event ``b_event`` of job ``b_job`` sent at W&B step ``b_at`` (executemany).
MARK_SENT = (
    _e.update()
    .where(_e.c.job_id == _JOB, _e.c.event_id == sa.bindparam("b_event"))
    .values(state="sent", wandb_step=sa.bindparam("b_at"))
)

# The same for a batch of jobs (``b_jobs``, expanding): one statement for all of them.
_JOBS: sa.BindParameter[list[str]] = sa.bindparam("b_jobs", expanding=True)

#: (job_id, next_seq) of the batch's jobs.
NEXT_SEQS = sa.select(_j.c.job_id, _j.c.next_seq).where(_j.c.job_id.in_(_JOBS))

#: (job_id, step) that the batch's jobs' result files filled in.
FILLED_STEPS_OF = sa.select(_e.c.job_id, _e.c.step).where(
    _e.c.job_id.in_(_JOBS), _e.c.event_id.like("result:%"), _e.c.step.is_not(None)
)

#: The batch's events in state ``b_state``, by job, in the order they were stored.
EVENTS_IN_STATE_OF = (
    sa.select(_e)
    .where(_e.c.job_id.in_(_JOBS), _e.c.state == sa.bindparam("b_state"))
    .order_by(_e.c.job_id, _e.c.seq)
)

#: The ids of unsynced jobs of source ``b_source``.
UNSYNCED_IDS = sa.select(_j.c.job_id).where(
    _j.c.synced.is_(False), _j.c.source == sa.bindparam("b_source")
)

#: What a new snapshot of job ``b_job`` is compared with.
SNAPSHOT_OF = sa.select(
    _j.c.status, _j.c.synced, _j.c.status_seq, _j.c.run_url, _j.c.job_json
).where(_j.c.job_id == _JOB)

#: How many jobs the store holds.
JOB_COUNT = sa.select(sa.func.count()).select_from(_j)

#: Artifact ``b_key`` of job ``b_job`` given at ``b_at`` in the job's current run segment
#: (read in the same statement: no snapshot to load for it).
MARK_ARTIFACT_IN_SEGMENT = schema.artifacts.insert().values(
    job_id=_JOB,
    key=sa.bindparam("b_key"),
    segment=sa.select(_j.c.run_segment).where(_j.c.job_id == _JOB).scalar_subquery(),
    logged_at=sa.bindparam("b_at"),
)

#: Job ``b_job``'s events sent to W&B made durable (its run closed cleanly).
SENT_DURABLE = _e.update().where(_e.c.job_id == _JOB, _e.c.state == "sent").values(state="durable")

#: Job ``b_job``'s run state set to ``b_run_state`` at ``b_at``.
SET_RUN_STATE = (
    _j.update()
    .where(_j.c.job_id == _JOB)
    .values(run_state=sa.bindparam("b_run_state"), updated_at=sa.bindparam("b_at"))
)
