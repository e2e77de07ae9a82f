"""Alembic environment of the local QStash server's schema (its own version table)."""

from __future__ import annotations

from alembic import context

from jobsvc.localqstash.schema import VERSION_TABLE
from jobsvc.localqstash.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
