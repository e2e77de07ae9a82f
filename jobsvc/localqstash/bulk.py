"""PostgreSQL bulk writes: many rows in one statement of fixed text, through ``unnest`` of one
array per column. The statement is the same whatever the number of rows, so it is prepared once;
executemany would cost a round trip per row and a VALUES list a new statement per batch size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import JSON, Connection, Table, TextClause, text
from sqlalchemy.dialects import postgresql

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def _array_type(table: Table, name: str) -> str:
    column_type = table.c[name].type
    if isinstance(column_type, JSON):
        return "TEXT[]"  # sent as text, cast per element
    return f"{column_type.compile(dialect=_DIALECT)}[]"


def _select(table: Table, name: str) -> str:
    return f"u.{name}::json" if isinstance(table.c[name].type, JSON) else f"u.{name}"


@cache
def _insert_sql(table: Table, columns: tuple[str, ...]) -> TextClause:
    arrays = ", ".join(f"CAST(:{c} AS {_array_type(table, c)})" for c in columns)
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {', '.join(_select(table, c) for c in columns)} "
        f"FROM unnest({arrays}) AS u({', '.join(columns)})"
    )


@cache
def _update_sql(table: Table, key: str, columns: tuple[str, ...]) -> TextClause:
    names = ("_key", *columns)
    arrays = ", ".join(
        f"CAST(:{n} AS {_array_type(table, key if n == '_key' else n)})" for n in names
    )
    assignments = ", ".join(f"{c} = {_select(table, c)}" for c in columns)
    return text(
        f"UPDATE {table.name} SET {assignments} "
        f"FROM unnest({arrays}) AS u({', '.join(names)}) "
        f"WHERE {table.name}.{key} = u._key"
    )


def _arrays(table: Table, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, list[Any]] = {}
    for name in names:
        column = "_key" if name == "_key" else name
        values = [row[column] for row in rows]
        if name != "_key" and isinstance(table.c[name].type, JSON):
            values = [None if v is None else json.dumps(v) for v in values]
        out[name] = values
    return out


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    columns = tuple(rows[0])
    conn.execute(_insert_sql(table, columns), _arrays(table, rows, columns))


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    columns: tuple[str, ...],
    rows: Sequence[dict[str, Any]],
) -> None:
    """``rows`` hold the key under ``_key`` and a value for each of ``columns``."""
    conn.execute(_update_sql(table, key, columns), _arrays(table, rows, ("_key", *columns)))
