"""initial schema

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "qstash_deduplication",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "dedup_key"),
    )
    op.create_table(
        "qstash_dlq",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dlq_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("topic_name", sa.String(length=256), nullable=True),
        sa.Column("queue_name", sa.String(length=256), nullable=True),
        sa.Column("schedule_id", sa.String(length=256), nullable=True),
        sa.Column("flow_control_key", sa.String(length=256), nullable=True),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("caller_ip", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("dlq_id"),
    )
    op.create_table(
        "qstash_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("topic_name", sa.String(length=256), nullable=True),
        sa.Column("queue_name", sa.String(length=256), nullable=True),
        sa.Column("schedule_id", sa.String(length=256), nullable=True),
        sa.Column("flow_control_key", sa.String(length=256), nullable=True),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("caller_ip", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("qstash_events", schema=None) as batch_op:
        batch_op.create_index("qstash_events_message_idx", ["message_id"], unique=False)
        batch_op.create_index("qstash_events_user_seq_idx", ["user_id", "seq"], unique=False)

    op.create_table(
        "qstash_flow_controls",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("flow_control_key", sa.String(length=256), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pinned_parallelism", sa.Integer(), nullable=True),
        sa.Column("pinned_rate", sa.Integer(), nullable=True),
        sa.Column("pinned_period", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "flow_control_key"),
    )
    op.create_table(
        "qstash_messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.Column("queue_name", sa.String(length=256), nullable=True),
        sa.Column("topic_name", sa.String(length=256), nullable=True),
        sa.Column("schedule_id", sa.String(length=256), nullable=True),
        sa.Column("flow_control_key", sa.String(length=256), nullable=True),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("caller_ip", sa.String(length=64), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("qstash_messages", schema=None) as batch_op:
        batch_op.create_index("qstash_messages_state_idx", ["state", "updated_at"], unique=False)

    op.create_table(
        "qstash_queues",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "name"),
    )
    op.create_table(
        "qstash_schedules",
        sa.Column("schedule_id", sa.String(length=256), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("cron", sa.String(length=256), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_schedule_time", sa.BigInteger(), nullable=True),
        sa.Column("last_states", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id"),
    )
    op.create_table(
        "qstash_signing_keys",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("current", sa.String(length=64), nullable=False),
        sa.Column("next", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "qstash_topics",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("qstash_topics")
    op.drop_table("qstash_signing_keys")
    op.drop_table("qstash_schedules")
    op.drop_table("qstash_queues")
    with op.batch_alter_table("qstash_messages", schema=None) as batch_op:
        batch_op.drop_index("qstash_messages_state_idx")

    op.drop_table("qstash_messages")
    op.drop_table("qstash_flow_controls")
    with op.batch_alter_table("qstash_events", schema=None) as batch_op:
        batch_op.drop_index("qstash_events_user_seq_idx")
        batch_op.drop_index("qstash_events_message_idx")

    op.drop_table("qstash_events")
    op.drop_table("qstash_dlq")
    op.drop_table("qstash_deduplication")
