"""Shared fixtures: throw-away PostgreSQL databases, SQLite files and local HTTP receivers."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.receiver import Receiver, ReceiverFactory

_DEFAULT_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"


def _admin_url() -> str:
    """libpq URL of a database to run CREATE/DROP DATABASE from."""
    url = make_url(os.environ.get("JOBSVC_TEST_POSTGRES_ADMIN_URL", _DEFAULT_ADMIN_URL))
    # Accept SQLAlchemy-style "postgresql+psycopg://" too; psycopg wants plain libpq.
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _create_database(prefix: str) -> tuple[str, str]:
    """Create an empty database; return (name, SQLAlchemy URL for it)."""
    name = f"{prefix}{secrets.token_hex(6)}"
    admin = _admin_url()
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(admin)!r} ({exc}); start it "
            "(see .ci/run) or set JOBSVC_TEST_POSTGRES_ADMIN_URL",
            pytrace=False,
        )
    url = make_url(admin).set(drivername="postgresql+psycopg", database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_database(name: str) -> None:
    # FORCE terminates connections a test may have left open (e.g. an undisposed engine).
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database shared by the whole session, dropped at the end."""
    name, url = _create_database("jobsvc_test_")
    try:
        yield url
    finally:
        _drop_database(name)


class _PerTestDatabases:
    """Hands out fresh PostgreSQL databases, creating the next one ahead of time.

    CREATE DATABASE ... TEMPLATE template0 copies ~7 MB through the WAL and fsyncs it,
    which took 25-200 ms here depending on disk latency. A single background thread keeps
    one database ready and drops used ones, so tests rarely wait for either.
    """

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-test-db")
        self._ready: Future[tuple[str, str]] | None = None
        self._drops: list[Future[None]] = []

    def acquire(self) -> tuple[str, str]:
        current = self._ready or self._worker.submit(_create_database, "jobsvc_t_")
        self._ready = self._worker.submit(_create_database, "jobsvc_t_")
        return current.result()

    def release(self, name: str) -> None:
        self._drops.append(self._worker.submit(_drop_database, name))

    def close(self) -> None:
        if self._ready is not None:
            with contextlib.suppress(BaseException):  # its error was not anyone's test
                self.release(self._ready.result()[0])
        self._worker.shutdown(wait=True)
        for drop in self._drops:
            drop.result()  # surface a failed DROP


@pytest.fixture(scope="session")
def _per_test_databases() -> Iterator[_PerTestDatabases]:
    databases = _PerTestDatabases()
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database of each kind, private to this test.

    PostgreSQL: a brand-new database (CREATE DATABASE jobsvc_t_<random> TEMPLATE template0),
    dropped WITH (FORCE) after the test.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'qstash.sqlite3'}"
        return
    databases: _PerTestDatabases = request.getfixturevalue("_per_test_databases")
    name, url = databases.acquire()
    try:
        yield url
    finally:
        databases.release(name)


@pytest.fixture
def make_receiver() -> Iterator[ReceiverFactory]:
    """Factory starting :class:`Receiver` servers; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def make(
            current_signing_key: str | None = None,
            next_signing_key: str | None = None,
        ) -> Receiver:
            return stack.enter_context(
                Receiver(current_signing_key=current_signing_key, next_signing_key=next_signing_key)
            )

        yield make
