"""job log: index the jobs a cron schedule started

Revision ID: 0002
Revises: 0001

ListJobs filtered by schedule_id reads them newest first; without this index it scanned the
whole log in creation order.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("job_logs_schedule_id_created_at_idx"), "job_logs", ["schedule_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("job_logs_schedule_id_created_at_idx"), table_name="job_logs")
