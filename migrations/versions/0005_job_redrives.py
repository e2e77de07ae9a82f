"""job re-drives: a count on each job and the job's events (a re-drive) for its history

Revision ID: 0005
Revises: 0004

When QStash gives up on a message none of whose deliveries reached a handler (the sidecar was
down or overloaded), the job is published anew rather than failed; ``redrives`` bounds that,
and ``job_events`` shows it in the job's history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "job_logs", sa.Column("redrives", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("qstash_message_id", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job_logs.id"], name=op.f("job_events_job_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "number", name=op.f("job_events_pkey")),
    )


def downgrade() -> None:
    op.drop_table("job_events")
    with op.batch_alter_table("job_logs") as batch:
        batch.drop_column("redrives")
