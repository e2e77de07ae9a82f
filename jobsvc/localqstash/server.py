"""Running the local QStash server: inside an event loop, in a thread, or as the CLI's process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from types import TracebackType

from starlette.applications import Starlette

from jobsvc.asgi_server import AsgiServer
from jobsvc.localqstash.api import Api
from jobsvc.localqstash.engine import Engine
from jobsvc.localqstash.schedules import Scheduler
from jobsvc.localqstash.settings import LocalQStashSettings
from jobsvc.localqstash.store import Store
from jobsvc.localqstash.users import DEV_USERS, User, users_for

log = logging.getLogger("jobsvc.localqstash")


class LocalQStashServer:
    """The server on a real port. ``async with LocalQStashServer(settings) as server:`` starts it
    in the running loop; ``server.url`` is then where the SDKs reach it (port 0 picks one)."""

    def __init__(self, settings: LocalQStashSettings) -> None:
        settings.validate()
        self.settings = settings
        self.users: tuple[User, ...] = users_for(settings)
        self.store = Store(settings.database_url)
        self.engine = Engine(settings, self.store, self.users)
        self.scheduler = Scheduler(self.engine)
        self.app: Starlette = Api(self.engine, self.scheduler).app()
        self._http: AsgiServer | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def user(self) -> User:
        """The first user: the one the SDKs' dev mode and the banner use."""
        return self.users[0]

    def env(self) -> dict[str, str]:
        """The variables that point the official SDKs at this server."""
        current, nxt = self.engine.keys.get(
            self.user.user_id, (self.user.current_signing_key, self.user.next_signing_key)
        )
        return {
            "QSTASH_URL": self.url,
            "QSTASH_TOKEN": self.user.token,
            "QSTASH_CURRENT_SIGNING_KEY": current,
            "QSTASH_NEXT_SIGNING_KEY": nxt,
        }

    async def start(self) -> None:
        await asyncio.to_thread(self.store.open)
        try:
            await self.engine.start()
            await self.scheduler.start()
            self._http = AsgiServer(
                self.app,
                host=self.settings.host,
                port=self.settings.port,
                graceful_seconds=5,
            )
            await self._http.start()
            self.port = self._http.port
        except BaseException:
            await self._stop_parts()
            raise
        log.info("local QStash server listening on %s", self.url, extra={"action": "listening"})

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None
        await self._stop_parts()

    async def _stop_parts(self) -> None:
        await self.scheduler.close()
        await self.engine.close()
        await asyncio.to_thread(self.store.close)

    async def __aenter__(self) -> LocalQStashServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def running(settings: LocalQStashSettings) -> AsyncIterator[LocalQStashServer]:
    async with LocalQStashServer(settings) as server:
        yield server


@contextlib.contextmanager
def serve_in_thread(settings: LocalQStashSettings) -> Iterator[LocalQStashServer]:
    """Run the server on its own event loop in a background thread (for synchronous callers)."""
    server = LocalQStashServer(settings)
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop_box: list[asyncio.AbstractEventLoop] = []
    errors: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        loop_box.append(asyncio.get_running_loop())
        try:
            await server.start()
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            return
        ready.set()
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="local-qstash", daemon=True)
    thread.start()
    ready.wait()
    if errors:
        thread.join()
        raise errors[0]
    try:
        yield server
    finally:
        assert stop is not None
        loop_box[0].call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


def banner(server: LocalQStashServer) -> str:
    """Where the server listens and the variables for the SDKs. A token or key is printed only
    when it is one of the published development credentials: configured ones (and keys rotated
    since) are secrets, and logs and terminals are not the place for them."""
    published = {
        value
        for user in DEV_USERS
        for value in (user.token, user.current_signing_key, user.next_signing_key)
    }
    hidden = {
        "QSTASH_TOKEN": "<the configured token>",
        "QSTASH_CURRENT_SIGNING_KEY": "<not shown; GET /v2/keys answers it>",
        "QSTASH_NEXT_SIGNING_KEY": "<not shown; GET /v2/keys answers it>",
    }
    lines = [f"jobsvc local QStash server is running at {server.url}"]
    lines.append("Point the official SDKs at it with:")
    for name, value in server.env().items():
        shown = value if name == "QSTASH_URL" or value in published else hidden[name]
        lines.append(f"{name}={shown}")
    return "\n".join(lines)
