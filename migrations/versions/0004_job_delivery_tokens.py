"""job delivery tokens: the signature tokens the sidecar accepted, until they expire

Revision ID: 0004
Revises: 0003

A captured delivery token, replayed within its lifetime, must not run a handler again: each
token is used once, across every sidecar replica.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_delivery_tokens",
        sa.Column("jti", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("job_delivery_tokens_pkey")),
    )
    op.create_index(
        op.f("job_delivery_tokens_expires_at_idx"), "job_delivery_tokens", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("job_delivery_tokens_expires_at_idx"), table_name="job_delivery_tokens")
    op.drop_table("job_delivery_tokens")
