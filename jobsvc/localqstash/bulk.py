"""PostgreSQL bulk writes: many rows in one statement of fixed text. The rows travel as one JSON
document that ``json_to_recordset`` turns back into a table, so the statement is the same whatever
the number of rows (prepared once), costs one round trip, and the driver adapts a single string
instead of one array per column."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import JSON, Connection, LargeBinary, Table, TextClause, text
from sqlalchemy.dialects import postgresql

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def _record_type(table: Table, name: str) -> str:
    column_type = table.c[name].type
    if isinstance(column_type, LargeBinary):
        return "text"  # base64 in the document, decoded in SQL
    if isinstance(column_type, JSON):
        return "json"
    return str(column_type.compile(dialect=_DIALECT))


def _value(table: Table, name: str) -> str:
    if isinstance(table.c[name].type, LargeBinary):
        return f"decode(r.{name}, 'base64')"
    return f"r.{name}"


def _recordset(table: Table, names: Sequence[str], key: str | None = None) -> str:
    columns = ", ".join(
        f"{n} {_record_type(table, key if n == '_key' and key else n)}" for n in names
    )
    return f"json_to_recordset(CAST(:rows AS json)) AS r({columns})"


@cache
def _insert_sql(table: Table, columns: tuple[str, ...]) -> TextClause:
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {', '.join(_value(table, c) for c in columns)} "
        f"FROM {_recordset(table, columns)}"
    )


@cache
def _update_sql(table: Table, key: str, columns: tuple[str, ...]) -> TextClause:
    assignments = ", ".join(f"{c} = {_value(table, c)}" for c in columns)
    return text(
        f"UPDATE {table.name} SET {assignments} "
        f"FROM {_recordset(table, ('_key', *columns), key)} "
        f"WHERE {table.name}.{key} = r._key"
    )


def _document(table: Table, rows: Sequence[dict[str, Any]]) -> str:
    binary = [n for n in rows[0] if n != "_key" and isinstance(table.c[n].type, LargeBinary)]
    if binary:
        rows = [{**row, **{n: base64.b64encode(row[n]).decode() for n in binary}} for row in rows]
    return json.dumps(rows, separators=(",", ":"))


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    conn.execute(_insert_sql(table, tuple(rows[0])), {"rows": _document(table, rows)})


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    columns: tuple[str, ...],
    rows: Sequence[dict[str, Any]],
) -> None:
    """``rows`` hold the key under ``_key`` and a value for each of ``columns``."""
    conn.execute(_update_sql(table, key, columns), {"rows": _document(table, rows)})
