"""The outbox's statements: jobs stored but not yet accepted by the broker.

A job is in the outbox while ``published_at`` is NULL; ``next_publish_at`` is when the relay
may (re)try it, NULL once nothing is left to publish (published, cancelled, failed). A partial
index on ``next_publish_at WHERE published_at IS NULL`` keeps the relay's query small however
large the log grows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Update,
    Uuid,
    bindparam,
    literal_column,
    select,
    update,
)

from jobsvc.db.tables import UtcDateTime, job_logs
from jobsvc.jobs import JobState

_JOB_ID = bindparam("p_job_id", type_=Uuid())
_NOW: BindParameter[datetime] = bindparam("p_now", type_=UtcDateTime())
_PENDING: ColumnElement[str] = literal_column(f"'{JobState.PENDING.value}'")

# Take the due jobs and lease them in one statement: next_publish_at moves past the lease, so
# neither another relay nor the next round takes them while this one publishes. SKIP LOCKED
# (PostgreSQL; SQLite runs one writer at a time anyway) passes over rows another relay is
# taking right now instead of waiting for them.
_DUE = (
    select(job_logs.c.id)
    .where(
        job_logs.c.published_at.is_(None),
        job_logs.c.next_publish_at <= _NOW,
        job_logs.c.state == _PENDING,
    )
    .order_by(job_logs.c.next_publish_at)
    .limit(bindparam("p_limit", type_=Integer()))
    .with_for_update(skip_locked=True)
)
TAKE_DUE: Update = (
    update(job_logs)
    .where(job_logs.c.id.in_(_DUE.scalar_subquery()))
    .values(next_publish_at=bindparam("p_lease_expires_at", type_=UtcDateTime()), updated_at=_NOW)
    .returning(*job_logs.c)
)

MARK_PUBLISHED: Update = (
    update(job_logs)
    .where(job_logs.c.id == _JOB_ID, job_logs.c.published_at.is_(None))
    .values(
        published_at=_NOW,
        qstash_message_id=bindparam("p_message_id"),
        next_publish_at=None,
        updated_at=_NOW,
    )
)

PUBLISH_FAILED: Update = (
    update(job_logs)
    .where(
        job_logs.c.id == _JOB_ID,
        job_logs.c.published_at.is_(None),
        job_logs.c.state == _PENDING,
    )
    .values(
        publish_attempts=job_logs.c.publish_attempts + 1,
        next_publish_at=bindparam("p_next_publish_at", type_=UtcDateTime()),
        updated_at=_NOW,
    )
)
