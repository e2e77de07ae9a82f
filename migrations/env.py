"""Alembic environment of the job log. Run through ``jobsvc migrate`` (or
``jobsvc.db.schema.upgrade``), which passes the connection in ``config.attributes``."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from alembic import context

from jobsvc.db.tables import metadata


def _ours(name: str | None, type_: Any, _parents: MutableMapping[Any, str | None]) -> bool:
    # The database may also hold other schemas' tables (the local QStash server's, with their
    # own version table); autogenerate must neither see nor propose dropping them.
    return type_ != "table" or name in metadata.tables


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    include_name=_ours,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
