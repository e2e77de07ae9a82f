"""A TCP proxy that can be cut and restored: put it between jobsvc and PostgreSQL to make the
database unreachable at an exact moment, as a restart does.

Usage::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        ... connect to 127.0.0.1:proxy.port ...
        proxy.cut()      # every connection closed, new ones closed at once
        proxy.restore()  # connections go through again

It runs on its own event loop in a daemon thread, so ``cut`` and ``restore`` may be called
from any thread (a stand-in server's hook, the test); each returns once it has taken effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class TcpProxy:
    """Forwards connections to 127.0.0.1:``port`` on to ``host``:``target_port``."""

    def __init__(self, host: str, target_port: int) -> None:
        self._target = (host, target_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self.port = 0
        self.cuts = 0

    def start(self) -> TcpProxy:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(listen())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._run(self._close_all(stop=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def cut(self) -> None:
        """Close every connection now and every new one as it comes, until ``restore``."""
        self._run(self._close_all(stop=False))

    def restore(self) -> None:
        """Let connections through again (the closed ones stay closed)."""

        async def restore() -> None:
            self._cut = False

        self._run(restore())

    @property
    def is_cut(self) -> bool:
        return self._cut

    def _run(self, coroutine: object) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _close_all(self, *, stop: bool) -> None:
        if not stop:
            self._cut = True
            self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if stop and self._server is not None:
            self._server.close()
            tasks = [task for task in self._tasks if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _connected(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(client_r, client_w)
        finally:
            self._tasks.discard(task)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self._cut:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        if self._cut:  # cut while connecting
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )
        self._writers.discard(client_w)
        self._writers.discard(server_w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
