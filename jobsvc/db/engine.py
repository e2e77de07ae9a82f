"""Opening the job log's database: PostgreSQL through psycopg 3, or a SQLite file."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_DATABASE_URL = "sqlite:///jobsvc.sqlite3"


def normalize_url(url: str) -> URL:
    """``url`` parsed, with plain ``postgresql://``/``postgres://`` mapped to psycopg 3.

    Raises ValueError for what the job log cannot use: another database, or an in-memory SQLite
    database (each pooled connection would see a different, empty one).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise ValueError("the job log needs a SQLite file, not an in-memory database")
        return parsed
    raise ValueError(f"unsupported database {backend!r}: use postgresql:// or sqlite:///")


def create_database_engine(url: str) -> Engine:
    """An engine for the job log.

    SQLite: WAL (readers do not block the writer), a 30 s busy timeout (writers queue instead of
    failing with "database is locked"), foreign keys enforced. PostgreSQL: a pool sized for the
    worker threads the async callers run queries in.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per transaction on the enqueue path. After a database
    # restart the first statement on each stale connection fails (StorageUnavailable, which
    # callers may retry) and SQLAlchemy discards the whole pool.
    return create_engine(parsed, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


InsertFactory = Callable[[Table], postgresql.Insert | sqlite.Insert]


def dialect_insert(engine: Engine) -> InsertFactory:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``_do_update`` on both."""
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
