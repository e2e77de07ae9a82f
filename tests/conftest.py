"""Shared fixtures: throw-away PostgreSQL databases, SQLite files and local HTTP receivers.

Migrating a database with Alembic takes seconds; copying a migrated one takes milliseconds. So
each run migrates one template (a PostgreSQL database, a SQLite file) for both the job log and
the local QStash store (their tables and version tables differ, so they share it) and every test
gets a copy: ``database_url``. Tests of the migrations themselves take ``empty_database_url``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
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


def _create_database(prefix: str, template: str = "template0") -> tuple[str, str]:
    """Create a database as a copy of ``template`` (empty: template0); return (name, SQLAlchemy
    URL for it). The template must have no open connections."""
    name = f"{prefix}{secrets.token_hex(6)}"
    admin = _admin_url()
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
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
    # FORCE terminates connections a test may have left open (e.g. an undisposed engine). A
    # server restarted meanwhile (by a fault-injection run on the same server, say) ends the
    # admin connection: connect again, a few times, before calling the drop failed.
    for attempt in range(5):
        try:
            with psycopg.connect(_admin_url(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            return
        except psycopg.OperationalError:
            if attempt == 4:
                raise
            time.sleep(1)  # the server is restarting; nothing to wait on but time


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database shared by the whole session, dropped at the end."""
    name, url = _create_database("jobsvc_test_")
    try:
        yield url
    finally:
        _drop_database(name)


def _migrate(url: str) -> None:
    """Bring ``url`` to the newest schema of both the job log and the local QStash store."""
    from jobsvc.db import create_database_engine, upgrade
    from jobsvc.localqstash import schema as qstash_schema
    from jobsvc.localqstash.store import create_store_engine

    for engine, migrate in (
        (create_database_engine(url), upgrade),
        (create_store_engine(url), qstash_schema.upgrade),
    ):
        try:
            migrate(engine)
        finally:
            engine.dispose()  # a template with a connection open cannot be copied


def _create_template() -> tuple[str, str]:
    name, url = _create_database("jobsvc_tpl_")
    try:
        _migrate(url)
    except BaseException:
        _drop_database(name)
        raise
    return name, url


class _PerTestDatabases:
    """Hands out fresh PostgreSQL databases, migrated (copies of a template migrated once per
    run) or empty, creating the next one of each kind ahead of time.

    CREATE DATABASE ... TEMPLATE copies ~7 MB through the WAL and fsyncs it, which took
    25-200 ms here depending on disk latency. A single background thread (the only one that
    touches the template, so it never has a connection open while copied) keeps one database
    of each kind ready and drops used ones, so tests rarely wait for either.
    """

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-test-db")
        self._template: str | None = None
        self._ready: dict[bool, Future[tuple[str, str]]] = {}
        self._drops: list[Future[None]] = []

    def _create(self, migrated: bool) -> tuple[str, str]:
        if not migrated:
            return _create_database("jobsvc_t_")
        if self._template is None:
            self._template = _create_template()[0]
        return _create_database("jobsvc_t_", self._template)

    def acquire(self, *, migrated: bool) -> tuple[str, str]:
        current = self._ready.get(migrated) or self._worker.submit(self._create, migrated)
        self._ready[migrated] = self._worker.submit(self._create, migrated)
        return current.result()

    def release(self, name: str) -> None:
        self._drops.append(self._worker.submit(_drop_database, name))

    def close(self) -> None:
        for ready in self._ready.values():
            with contextlib.suppress(BaseException):  # its error was not anyone's test
                self.release(ready.result()[0])
        if self._template is not None:
            self.release(self._template)
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


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per run, copied by each test that wants one."""
    path = tmp_path_factory.mktemp("template") / "migrated.sqlite3"
    _migrate(f"sqlite:///{path}")
    # Closing the last connection checkpointed the WAL into the file and removed it.
    assert not path.with_name(path.name + "-wal").exists()
    return path


def _database(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "qstash.sqlite3"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    databases: _PerTestDatabases = request.getfixturevalue("_per_test_databases")
    name, url = databases.acquire(migrated=migrated)
    try:
        yield url
    finally:
        databases.release(name)


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of a database of each kind, private to this test, already at the newest
    schema of the job log and the local QStash store (migrating it again is a no-op).

    PostgreSQL: CREATE DATABASE jobsvc_t_<random> TEMPLATE <this run's migrated template>,
    dropped WITH (FORCE) after the test. SQLite: a copy of this run's migrated file.
    """
    yield from _database(request, tmp_path, migrated=True)


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``database_url`` but empty, never migrated (PostgreSQL: TEMPLATE template0; SQLite:
    no file yet), for tests of the migrations and of what happens before them."""
    yield from _database(request, tmp_path, migrated=False)


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
