"""Serving an ASGI app with uvicorn on a real port inside the caller's event loop: the sidecar
and the local QStash server both run this way, in their own process or embedded in another."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: whoever embeds the server decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """``await start()`` binds ``host:port`` (0: any free port, then see ``port``) and serves
    ``app``; ``await stop()`` gives requests in flight ``graceful_seconds`` to finish."""

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        graceful_seconds: int = 30,
        backlog: int = 2048,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._graceful_seconds = graceful_seconds
        self._backlog = backlog
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that name the protocol; without
        # it Nagle holds back each response body until the client's delayed ACK (40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            await self._serve(sock)
        except BaseException:
            if self._task is not None:
                self._task.cancel()
            sock.close()  # uvicorn closes it once serving; until then it is ours
            raise

    async def _serve(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self._graceful_seconds,
            backlog=self._backlog,
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError(f"the server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
            # uvicorn cancels what outlives the grace but leaves those connections' sockets
            # open (they leaked, unclosed, until garbage collection): close them here.
            left = [
                transport
                for connection in list(self._server.server_state.connections)
                if (transport := getattr(connection, "transport", None)) is not None
            ]
            for transport in left:
                transport.close()
            if left:
                # close() lets go of the socket in the loop's next turn: take that turn, or a
                # caller that closes the loop next leaves the socket open after all.
                await asyncio.sleep(0)
            self._server = None
