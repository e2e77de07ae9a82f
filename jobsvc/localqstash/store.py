"""Durable state behind the local QStash server.

Writes go through one writer thread that commits them in groups: a burst of publishes costs one
transaction, and each publisher is answered only after its own row is committed. Reads run on
worker threads with their own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Delete, Engine, Table, bindparam, create_engine, delete, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from jobsvc.localqstash import schema
from jobsvc.localqstash.bulk import insert_rows as bulk_insert
from jobsvc.localqstash.bulk import update_rows as bulk_update

log = logging.getLogger("jobsvc.localqstash.store")
T = TypeVar("T")
MAX_BATCH = 2000


class StoreError(Exception):
    """The database refused or failed a write."""


@dataclass
class Insert:
    """Insert one row; consecutive inserts into one table become one executemany."""

    table: Table
    row: dict[str, Any]


@dataclass
class Update:
    """Set ``values`` on the row whose ``key`` column equals ``key_value``; batched by shape."""

    table: Table
    key: str
    key_value: Any
    values: dict[str, Any]


@dataclass
class Replace:
    """Insert ``row``, first deleting the row that has the same values in the ``key`` columns;
    consecutive replaces in one table become one DELETE and one INSERT (each executemany)."""

    table: Table
    key: tuple[str, ...]
    row: dict[str, Any]


@dataclass
class Statement:
    """Run any function on the connection inside the current transaction."""

    run: Callable[[Connection], object]


Op = Insert | Replace | Update | Statement
_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]
# The writes of one call, committed all together or not at all, and who waits for them.
_Group = tuple[tuple[Op, ...], _Waiter | None]


def create_store_engine(url: str) -> Engine:
    """An engine tuned for the server: WAL and a busy timeout on SQLite, a pool on PostgreSQL."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        if url.rstrip("/") in ("sqlite:", "sqlite:///:memory:") or ":memory:" in url:
            raise ValueError("the local QStash server needs a file database, not :memory:")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class Store:
    """The engine, the schema and the group-committing writer."""

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        self._queue: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Migrate the schema to the newest revision, then start the writer."""
        schema.upgrade(self.engine)
        self._thread = threading.Thread(target=self._write_loop, name="qstash-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer and release connections."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.engine.dispose()

    def submit(self, *ops: Op) -> None:
        """Queue writes without waiting for their commit (the delivery path's bookkeeping)."""
        if ops:
            self._queue.put((ops, None))

    async def write(self, *ops: Op) -> None:
        """Queue writes and wait until they are committed together; ``StoreError`` if not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((ops, (loop, future)))
        await future

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a pooled connection in a worker thread."""
        return await asyncio.to_thread(self.read_sync, fn)

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            group = self._queue.get()
            if group is None:
                break
            batch = [group]
            size = len(group[0])
            while size < MAX_BATCH:
                try:
                    group = self._queue.get_nowait()
                except queue.Empty:
                    break
                if group is None:
                    stopping = True
                    break
                batch.append(group)
                size += len(group[0])
            # The one writer must not die, or every later write of every user would hang.
            try:
                self._commit(batch)
            except BaseException as exc:
                log.exception("write batch failed", extra={"action": "store_write_failed"})
                _resolve(batch, StoreError(f"{type(exc).__name__}: {exc}"[:300]))
                if not isinstance(exc, Exception):
                    raise

    def _commit(self, batch: Sequence[_Group]) -> None:
        try:
            with self.engine.begin() as conn:
                _execute(conn, [op for ops, _ in batch for op in ops])
        # Not only SQLAlchemyError: a driver raises OverflowError for an out-of-range integer,
        # and a Statement may raise anything. Such a write fails alone, all of it.
        except Exception as exc:
            if len(batch) == 1:
                log.error(
                    "write failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"action": "store_write_failed"},
                )
                _resolve(batch, StoreError(str(exc)[:300]))
                return
            # Isolate the failing write so the others still commit.
            for group in batch:
                self._commit([group])
            return
        _resolve(batch, None)


def _execute(conn: Connection, ops: Sequence[Op]) -> None:
    """Inserts first, then replaces, updates and statements, each kind in order and batched by
    table.

    Nothing the server writes depends on another kind coming first: an update only touches a row
    inserted in the same or an earlier batch, and replaces and statements touch other tables."""
    inserts: dict[Table, list[dict[str, Any]]] = {}
    replaces: dict[tuple[Table, tuple[str, ...]], dict[tuple[Any, ...], dict[str, Any]]] = {}
    updates: dict[tuple[Table, str, tuple[str, ...]], list[dict[str, Any]]] = {}
    statements: list[Statement] = []
    for op in ops:
        if isinstance(op, Insert):
            inserts.setdefault(op.table, []).append(op.row)
        elif isinstance(op, Replace):
            latest = replaces.setdefault((op.table, op.key), {})
            key_values = tuple(op.row[column] for column in op.key)
            latest.pop(key_values, None)  # the last one of a key wins, in its place
            latest[key_values] = op.row
        elif isinstance(op, Update):
            shape = (op.table, op.key, tuple(sorted(op.values)))
            updates.setdefault(shape, []).append({"_key": op.key_value, **op.values})
        else:
            statements.append(op)
    bulk = conn.dialect.name == "postgresql"
    for table, rows in inserts.items():
        if bulk and len(rows) > 1:
            bulk_insert(conn, table, rows)
        else:
            conn.execute(table.insert(), rows)
    for (table, key_columns), latest in replaces.items():
        rows = list(latest.values())
        conn.execute(
            _delete_by_key(table, key_columns),
            [{f"_key_{column}": row[column] for column in key_columns} for row in rows],
        )
        if bulk and len(rows) > 1:
            bulk_insert(conn, table, rows)
        else:
            conn.execute(table.insert(), rows)
    for (table, key, columns), rows in updates.items():
        if bulk and len(rows) > 1:
            bulk_update(conn, table, key, columns, rows)
            continue
        stmt = (
            table.update()
            .where(table.c[key] == bindparam("_key"))
            .values({c: bindparam(c) for c in columns})
        )
        conn.execute(stmt, rows)
    for statement in statements:
        statement.run(conn)


@functools.cache
def _delete_by_key(table: Table, key_columns: tuple[str, ...]) -> Delete:
    return delete(table).where(
        *(table.c[column] == bindparam(f"_key_{column}") for column in key_columns)
    )


def _resolve(batch: Sequence[_Group], error: Exception | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, waiter in batch:
        if waiter is not None:
            by_loop.setdefault(waiter[0], []).append(waiter[1])
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
