"""Inserting many jobs in one statement.

On PostgreSQL the rows travel as one JSON document that ``jsonb_to_recordset`` turns back into
a table: one statement of fixed text whatever the batch size, one round trip, and one string to
adapt instead of a parameter per value. It inserts 1,000 jobs about twice as fast as
``executemany`` (whose pipeline still runs one INSERT per row). SQLite, in-process, gains
nothing from it and uses ``executemany``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Text, bindparam, cast, column, func, insert, select
from sqlalchemy.dialects.postgresql import JSONB

from jobsvc.db.tables import job_logs

_NAMES = [c.name for c in job_logs.c]
_RECORDS = (
    func.jsonb_to_recordset(cast(bindparam("p_rows", type_=Text()), JSONB))
    .table_valued(*[column(c.name, c.type) for c in job_logs.c])
    .render_derived(name="r", with_types=True)
)
_INSERT_DOCUMENT: Insert = insert(job_logs).from_select(
    _NAMES, select(*[_RECORDS.c[name] for name in _NAMES])
)


def insert_jobs(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (``rows.job_values`` of each job) in the caller's transaction."""
    if connection.dialect.name == "postgresql":
        document = json.dumps(list(rows), default=_json_value, separators=(",", ":"))
        connection.execute(_INSERT_DOCUMENT, {"p_rows": document})
    else:
        connection.execute(job_logs.insert(), list(rows))


def _json_value(value: object) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # PostgreSQL would read it in the session's time zone
            raise ValueError(f"naive datetime {value!r}: the job log stores aware UTC times")
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the job log")
