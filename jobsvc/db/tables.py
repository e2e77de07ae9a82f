"""The job log's tables, as the code declares them; the migrations in ``migrations/`` must build
exactly this (a test compares them).

Portable across PostgreSQL and SQLite: JSONB and native UUIDs on PostgreSQL, JSON text and
CHAR(32) on SQLite. Times are aware UTC datetimes in Python on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from jobsvc.jobs import MAX_RETRIES, JobState

# Deterministic constraint names, so migrations can name what they create and drop.
metadata = MetaData(
    naming_convention={
        "ix": "%(table_name)s_%(column_0_N_name)s_idx",
        "uq": "%(table_name)s_%(column_0_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "pk": "%(table_name)s_pkey",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMPTZ on PostgreSQL; on SQLite, which keeps no zone, naive UTC that reads back aware.

    Naive datetimes are refused: a time without a zone is a bug waiting to be off by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the job log stores aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")


def _one_of(column: str, values: Iterable[str]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


STATES_CHECK = _one_of("state", [state.value for state in JobState])
OUTCOMES = ("completed", "skipped", "retry", "failed")

job_logs = Table(
    "job_logs",
    metadata,
    Column("id", Uuid, primary_key=True),
    # Unique, but NULL until the job is published (the outbox).
    Column("qstash_message_id", String(128), unique=True),
    Column("job_type", String(64), nullable=False),
    Column("payload", Json, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("started_at", UtcDateTime),
    Column("completed_at", UtcDateTime),  # when it finished: completed, failed or cancelled
    Column("result", Json),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("not_before", UtcDateTime),
    Column("timeout_seconds", Float),
    Column("deduplication_id", String(256), unique=True),
    Column("schedule_id", String(256)),
    Column("dlq_id", String(128)),
    # The outbox: NULL until the broker accepted the job. The relay publishes rows whose
    # next_publish_at has come; it is NULL once nothing is left to publish.
    Column("published_at", UtcDateTime),
    Column("publish_attempts", Integer, nullable=False),
    Column("next_publish_at", UtcDateTime),
    # While processing: when another delivery may take the job over from a vanished worker.
    Column("lease_expires_at", UtcDateTime),
    # Re-drives after QStash gave up on deliveries that never reached a handler (bounded).
    Column("redrives", Integer, nullable=False, server_default="0"),
    CheckConstraint(STATES_CHECK, name="state"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint(f"max_retries BETWEEN 0 AND {MAX_RETRIES}", name="max_retries"),
    CheckConstraint("publish_attempts >= 0", name="publish_attempts"),
)
Index(None, job_logs.c.state, job_logs.c.created_at)
Index(None, job_logs.c.job_type, job_logs.c.created_at)
# The jobs a cron schedule started, newest first (ListJobs by schedule_id).
Index(None, job_logs.c.schedule_id, job_logs.c.created_at)
# Unfiltered listing pages through (created_at, id).
Index(None, job_logs.c.created_at, job_logs.c.id)
_UNPUBLISHED: Any = job_logs.c.published_at.is_(None)
Index(
    "job_logs_unpublished_idx",
    job_logs.c.next_publish_at,
    postgresql_where=_UNPUBLISHED,
    sqlite_where=_UNPUBLISHED,
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", Uuid, ForeignKey(job_logs.c.id, ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("outcome", String(16)),
    Column("error", Text),
    Column("qstash_message_id", String(128)),
    Column("retried", Integer),  # the delivery's Upstash-Retried header
    PrimaryKeyConstraint("job_id", "number"),
    CheckConstraint("number >= 1", name="number"),
    CheckConstraint(_one_of("outcome", OUTCOMES), name="outcome"),
)

# What happened to a job besides its attempts (a re-drive), in order, for its history.
job_events = Table(
    "job_events",
    metadata,
    Column("job_id", Uuid, ForeignKey(job_logs.c.id, ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text),
    Column("qstash_message_id", String(128)),
    PrimaryKeyConstraint("job_id", "number"),
)

job_schedules = Table(
    "job_schedules",
    metadata,
    Column("schedule_id", String(256), primary_key=True),
    Column("cron", String(256), nullable=False),
    Column("time_zone", String(64)),
    Column("job_type", String(64), nullable=False),
    Column("payload", Json, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("timeout_seconds", Float),
    Column("paused", Boolean, nullable=False),
    Column("qstash_schedule_id", String(256), unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("last_run_at", UtcDateTime),
    CheckConstraint(f"retries BETWEEN 0 AND {MAX_RETRIES}", name="retries"),
)

# What a job's attempts already did (a platform published to, an email sent), by key, so a
# retried attempt does not do it again. Written as each step succeeds, read by later attempts.
job_progress = Table(
    "job_progress",
    metadata,
    Column("job_id", Uuid, ForeignKey(job_logs.c.id, ondelete="CASCADE"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("value", Json, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("job_id", "key"),
)

# The tokens (``jti``) of the deliveries the sidecar accepted, kept until they expire: a token is
# used once, whichever sidecar replica it reaches.
job_delivery_tokens = Table(
    "job_delivery_tokens",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("expires_at", UtcDateTime, nullable=False),
)
Index(None, job_delivery_tokens.c.expires_at)
