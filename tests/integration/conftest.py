"""Fixtures that run the local QStash server on a real port, on SQLite and on PostgreSQL, and
open the job log on a migrated database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from qstash import AsyncQStash, QStash
from sqlalchemy import Engine

from jobsvc.db import JobLog, create_database_engine, upgrade
from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings, serve_in_thread
from tests.receiver import Receiver, ReceiverFactory

ServerFactory = Callable[..., LocalQStashServer]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The job log's engine on this test's database; ``upgrade`` finds it migrated already
    (a copy of the template) and checks just that, as ``jobsvc serve`` does at start."""
    engine = create_database_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def job_log(engine: Engine) -> JobLog:
    return JobLog(engine)


@pytest.fixture
def make_server(database_url: str) -> Iterator[ServerFactory]:
    """Start servers on port 0 against this test's database; ``settings`` override defaults
    (``time_scale`` defaults to 0.001, so a 12 s backoff takes 12 ms)."""
    with contextlib.ExitStack() as stack:

        def make(**settings: Any) -> LocalQStashServer:
            values: dict[str, Any] = {
                "port": 0,
                "database_url": database_url,
                "time_scale": 0.001,
            }
            values.update(settings)
            return stack.enter_context(serve_in_thread(LocalQStashSettings(**values)))

        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> LocalQStashServer:
    return make_server()


ClientFactory = Callable[..., QStash]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """``make_client(server, token=None)``: the official SDK's synchronous client for a server
    (its first dev user unless ``token``), closed at teardown."""
    made: list[QStash] = []

    def make(server: LocalQStashServer, token: str | None = None) -> QStash:
        client = QStash(token or server.user.token, base_url=server.url)
        made.append(client)
        return client

    yield make
    for client in made:
        client.http._client.close()  # the SDK has no close() of its own


@pytest.fixture
def client(server: LocalQStashServer, make_client: ClientFactory) -> QStash:
    """The official SDK's synchronous client, pointed at the server as its first dev user."""
    return make_client(server)


@contextlib.contextmanager
def raw_http(server: LocalQStashServer, token: str | None = None) -> Iterator[httpx.Client]:
    """Plain HTTP to the server as a user, for what the Python SDK does not send."""
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token or server.user.token}"},
        timeout=10,
    ) as http:
        yield http


@pytest.fixture
def raw(server: LocalQStashServer) -> Iterator[httpx.Client]:
    with raw_http(server) as http:
        yield http


@pytest.fixture
async def async_client(server: LocalQStashServer) -> AsyncIterator[AsyncQStash]:
    """The official SDK's asynchronous client, closed at teardown."""
    client = AsyncQStash(server.user.token, base_url=server.url)
    try:
        yield client
    finally:
        await client.http._client.aclose()


@pytest.fixture
def receiver(server: LocalQStashServer, make_receiver: ReceiverFactory) -> Receiver:
    """A receiver that checks every delivery's signature with the SDK's own ``Receiver``."""
    return make_receiver(
        current_signing_key=server.user.current_signing_key,
        next_signing_key=server.user.next_signing_key,
    )
