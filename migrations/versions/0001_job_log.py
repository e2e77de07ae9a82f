"""job log: jobs, their attempts, schedules

Revision ID: 0001
Revises:

Self-contained on purpose: a migration describes the schema as it was when written, so it
imports nothing from the code (whose tables will change after it).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
STATES = "'pending', 'processing', 'retrying', 'completed', 'failed', 'cancelled'"
UNPUBLISHED = sa.text("published_at IS NULL")
# Every name is final (op.f): env.py's naming convention must not rewrite names written here.


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "job_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("qstash_message_id", sa.String(length=128), nullable=True),
        sa.Column("job_type", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        _time("started_at"),
        _time("completed_at"),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        _time("not_before"),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("deduplication_id", sa.String(length=256), nullable=True),
        sa.Column("schedule_id", sa.String(length=256), nullable=True),
        sa.Column("dlq_id", sa.String(length=128), nullable=True),
        _time("published_at"),
        sa.Column("publish_attempts", sa.Integer(), nullable=False),
        _time("next_publish_at"),
        _time("lease_expires_at"),
        sa.CheckConstraint(f"state IN ({STATES})", name=op.f("job_logs_state_check")),
        sa.CheckConstraint("attempts >= 0", name=op.f("job_logs_attempts_check")),
        sa.CheckConstraint("max_retries BETWEEN 0 AND 20", name=op.f("job_logs_max_retries_check")),
        sa.CheckConstraint("publish_attempts >= 0", name=op.f("job_logs_publish_attempts_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("job_logs_pkey")),
        sa.UniqueConstraint("deduplication_id", name=op.f("job_logs_deduplication_id_key")),
        sa.UniqueConstraint("qstash_message_id", name=op.f("job_logs_qstash_message_id_key")),
    )
    op.create_index(op.f("job_logs_state_created_at_idx"), "job_logs", ["state", "created_at"])
    op.create_index(
        op.f("job_logs_job_type_created_at_idx"), "job_logs", ["job_type", "created_at"]
    )
    op.create_index(op.f("job_logs_created_at_id_idx"), "job_logs", ["created_at", "id"])
    op.create_index(
        op.f("job_logs_unpublished_idx"),
        "job_logs",
        ["next_publish_at"],
        postgresql_where=UNPUBLISHED,
        sqlite_where=UNPUBLISHED,
    )
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        _time("started_at", nullable=False),
        _time("finished_at"),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("qstash_message_id", sa.String(length=128), nullable=True),
        sa.Column("retried", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('completed', 'skipped', 'retry', 'failed')",
            name=op.f("job_attempts_outcome_check"),
        ),
        sa.CheckConstraint("number >= 1", name=op.f("job_attempts_number_check")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job_logs.id"], name=op.f("job_attempts_job_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "number", name=op.f("job_attempts_pkey")),
    )
    op.create_table(
        "job_schedules",
        sa.Column("schedule_id", sa.String(length=256), nullable=False),
        sa.Column("cron", sa.String(length=256), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=True),
        sa.Column("job_type", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("qstash_schedule_id", sa.String(length=256), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        _time("last_run_at"),
        sa.CheckConstraint("retries BETWEEN 0 AND 20", name=op.f("job_schedules_retries_check")),
        sa.PrimaryKeyConstraint("schedule_id", name=op.f("job_schedules_pkey")),
        sa.UniqueConstraint(
            "qstash_schedule_id", name=op.f("job_schedules_qstash_schedule_id_key")
        ),
    )


def downgrade() -> None:
    op.drop_table("job_schedules")
    op.drop_table("job_attempts")
    op.drop_index(op.f("job_logs_unpublished_idx"), table_name="job_logs")
    op.drop_index(op.f("job_logs_created_at_id_idx"), table_name="job_logs")
    op.drop_index(op.f("job_logs_job_type_created_at_idx"), table_name="job_logs")
    op.drop_index(op.f("job_logs_state_created_at_idx"), table_name="job_logs")
    op.drop_table("job_logs")
