"""A real local HTTP endpoint that records what a QStash-compatible server delivers to it.

Usage::

    with Receiver(current_signing_key=cur, next_signing_key=nxt) as rx:
        rx.respond("/hook", (500, {}, "boom"), Response(status=200, delay_seconds=0.5))
        publish(rx.url_for("/hook"))
        [first, second] = rx.wait_for(2, path="/hook")
        assert first.signature_ok, first.signature_error

The server is uvicorn running a tiny raw ASGI app on its own event loop in a daemon
thread, bound to 127.0.0.1 on a free port. Requests are handled concurrently, HTTP/1.1
keep-alive works, and a delayed response only sleeps its own request. Every public method
is thread-safe; from inside a running event loop use :meth:`Receiver.wait_for_async` so
that the loop (which may be running the server under test) is not blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar, overload

import uvicorn
from qstash import Receiver as QStashReceiver
from qstash.receiver import verify_with_key

_T = TypeVar("_T")

__all__ = ["Delivery", "Headers", "Receiver", "ReceiverFactory", "Response", "ResponseSpec"]


class Headers(dict[str, str]):
    """Request headers: a plain dict keyed by lower-cased names, looked up case-insensitively.

    A header sent several times is joined with ``", "``; ``Delivery.raw_headers`` keeps
    every occurrence as received.
    """

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        return super().get(key.lower(), default)


@dataclass
class Response:
    """What the receiver answers with. ``body`` may be ``str`` (sent as UTF-8)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str = b"ok"
    # Sleep this long before answering; other requests are served meanwhile.
    delay_seconds: float = 0.0

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass
class Delivery:
    """One request as the receiver saw it."""

    method: str
    # Path as sent on the wire (still percent-encoded), with "?query" when there is one.
    path: str
    headers: Headers
    body: bytes
    # time.monotonic() / time.time() when the whole request body had arrived.
    received_at: float
    received_unix: float
    # Full URL as delivered (http://127.0.0.1:<port><path>): what `sub` must equal.
    url: str
    # None when the Receiver has no signing keys; else whether Upstash-Signature verified.
    signature_ok: bool | None = None
    signature_error: str | None = None
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    # (host, port) of the client socket: equal ports mean a reused keep-alive connection.
    client: tuple[str, int] | None = None
    # The response chosen for this request (set before any delay) and when it was sent (set
    # before the last byte goes out, so never None once the client has the response).
    response: Response | None = None
    responded_at: float | None = None

    @property
    def bare_path(self) -> str:
        """``path`` without its query string."""
        return self.path.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.path.partition("?")[2]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


ResponseTuple: TypeAlias = tuple[int, Mapping[str, str], bytes | str]
ResponseValue: TypeAlias = Response | ResponseTuple
# A callable may be sync (run in a worker thread, so it may block) or async.
ResponseSpec: TypeAlias = (
    ResponseValue | Callable[[Delivery], ResponseValue | Awaitable[ResponseValue]]
)

_DEFAULT_RESPONSE = Response()


def _to_response(value: ResponseValue) -> Response:
    if isinstance(value, Response):
        return value
    status, headers, body = value
    return Response(status=status, headers=dict(headers), body=body)


def _strip_query(path: str) -> str:
    return path.partition("?")[0]


class _Server(uvicorn.Server):
    """uvicorn.Server that starts and stops without its 0.1 s polling and sleeps."""

    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self._stopping = stopping
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # fills in the Date header once
        await self._stopping.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # Idle keep-alive connections close now; busy ones close after their response,
        # which comes promptly because pending delays are cut short by `_stopping`.
        for connection in list(self.server_state.connections):
            connection.shutdown()
        tasks = list(self.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        # A cancelled request leaves its connection open: close what is left, rather than
        # leave the sockets to the garbage collector (a ResourceWarning in a later test).
        left = [
            transport
            for connection in list(self.server_state.connections)
            if (transport := getattr(connection, "transport", None)) is not None
        ]
        for transport in left:
            transport.close()
        if left:
            await asyncio.sleep(0)  # the socket is let go of in the loop's next turn


class Receiver:
    """Local HTTP receiver for integration tests; see the module docstring."""

    def __init__(
        self,
        current_signing_key: str | None = None,
        next_signing_key: str | None = None,
    ) -> None:
        self._verifier: QStashReceiver | None = None
        self._current_key = ""
        if current_signing_key or next_signing_key:
            # With only one key given, it serves as both.
            cur = current_signing_key or next_signing_key or ""
            nxt = next_signing_key or cur
            self._verifier = QStashReceiver(current_signing_key=cur, next_signing_key=nxt)
            self._current_key = cur
        self._cond = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._responses: dict[str, list[ResponseSpec]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: _Server | None = None
        self._error: BaseException | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Receiver is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        return self.url + path

    def start(self) -> Receiver:
        if self._thread is not None:
            raise RuntimeError("Receiver already started")
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that name the protocol.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            ws="none",
            loop="asyncio",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=30,
        )
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stopping = asyncio.Event()
            self._server = _Server(config, self._stopping)
            started.set()
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            except BaseException as exc:
                self._error = exc
            finally:
                sock.close()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()
                if self._server is not None:
                    self._server.ready.set()  # unblock start() if startup failed

        self._thread = threading.Thread(target=run, name=f"receiver-{self._port}", daemon=True)
        self._thread.start()
        started.wait()
        assert self._server is not None
        if not self._server.ready.wait(10.0) or self._error is not None:
            self.stop()
            raise RuntimeError(f"Receiver failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed in between
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10.0)
        self._thread = None
        if thread.is_alive():
            raise RuntimeError("Receiver thread did not stop within 10 s")

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ programming

    def respond(self, path: str, *responses: ResponseSpec) -> None:
        """Answer requests to ``path`` (query ignored) with ``responses`` in order.

        Each is a :class:`Response`, a ``(status, headers, body)`` tuple, or a callable
        taking the :class:`Delivery` and returning one of those. The last one repeats.
        Calling again for the same path replaces what was left; no responses resets it
        to the default 200 ``ok``.
        """
        key = _strip_query(path)
        with self._cond:
            if responses:
                self._responses[key] = list(responses)
            else:
                self._responses.pop(key, None)

    def _next_response(self, path: str) -> ResponseSpec:
        with self._cond:
            queue = self._responses.get(path)
            if not queue:
                return _DEFAULT_RESPONSE
            return queue.pop(0) if len(queue) > 1 else queue[0]

    # ------------------------------------------------------------------ inspection

    def deliveries(self, path: str | None = None) -> list[Delivery]:
        """A copy of the deliveries so far, in arrival order (filtered by path sans query)."""
        with self._cond:
            return self._matching(path)

    def _matching(self, path: str | None) -> list[Delivery]:
        if path is None:
            return list(self._deliveries)
        key = _strip_query(path)
        return [d for d in self._deliveries if d.bare_path == key]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 10.0
    ) -> list[Delivery]:
        """Block until at least ``count`` deliveries (to ``path``) arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._matching(path)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    where = "any path" if path is None else f"path {path!r}"
                    seen = [f"{d.method} {d.path}" for d in self._deliveries]
                    raise AssertionError(
                        f"Receiver at {self.url}: expected at least {count} deliveries to "
                        f"{where} within {timeout:.1f}s, got {len(found)}. "
                        f"All requests received: {seen}"
                    )
                self._cond.wait(remaining)

    async def wait_for_async(
        self,
        count: int,
        path: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - mirrors wait_for
    ) -> list[Delivery]:
        """:meth:`wait_for` for async tests: waits in a worker thread, not the event loop."""
        return await asyncio.to_thread(self.wait_for, count, path, timeout)

    def clear(self) -> None:
        """Forget recorded deliveries (programmed responses stay)."""
        with self._cond:
            self._deliveries.clear()

    # ------------------------------------------------------------------ ASGI app

    def _verify(self, headers: Headers, body: bytes, url: str) -> tuple[bool | None, str | None]:
        if self._verifier is None:
            return None, None
        signature = headers.get("upstash-signature")
        if not signature:
            return False, "missing Upstash-Signature header"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return False, f"body is not UTF-8, cannot verify with the SDK: {exc}"
        try:
            self._verifier.verify(signature=signature, body=text, url=url)
        except Exception as exc:  # SignatureError, or anything else the SDK raises
            error = f"{type(exc).__name__}: {exc}"
            # The SDK reports the error of its retry with the *next* key, which hides the
            # real reason (e.g. a sub mismatch); add what the current key said.
            try:
                verify_with_key(self._current_key, signature=signature, body=text, url=url)
            except Exception as first:
                if str(first) != str(exc):
                    error += f" (with the current key: {first})"
            return False, error
        return True, None

    async def _app(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # client went away before the request was complete
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("latin-1")
        url = f"http://127.0.0.1:{self._port}{path}"

        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = Headers()
        for name, value in raw_headers:
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value

        ok, error = self._verify(headers, body, url)
        client = scope.get("client")
        delivery = Delivery(
            method=scope["method"],
            path=path,
            headers=headers,
            body=body,
            received_at=time.monotonic(),
            received_unix=time.time(),
            url=url,
            signature_ok=ok,
            signature_error=error,
            raw_headers=raw_headers,
            client=(client[0], client[1]) if client else None,
        )
        with self._cond:
            self._deliveries.append(delivery)
            self._cond.notify_all()

        try:
            response = await self._resolve(self._next_response(delivery.bare_path), delivery)
        except Exception as exc:
            response = Response(500, {}, f"receiver response callable failed: {exc!r}")
        delivery.response = response

        if response.delay_seconds > 0:
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), response.delay_seconds)
            if self._stopping.is_set():
                response = Response(503, {}, b"receiver stopping")

        body_out = response.body_bytes
        out_headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
        ]
        if not any(k.lower() == b"content-length" for k, _ in out_headers):
            out_headers.append((b"content-length", str(len(body_out)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        # Set before the body goes out: a client holding the response sees it set.
        delivery.responded_at = time.monotonic()
        await send({"type": "http.response.body", "body": body_out})

    @staticmethod
    async def _resolve(spec: ResponseSpec, delivery: Delivery) -> Response:
        if not callable(spec):
            return _to_response(spec)
        value: ResponseValue | Awaitable[ResponseValue]
        if inspect.iscoroutinefunction(spec):
            value = spec(delivery)
        else:
            # Sync callables may block (e.g. wait on an Event): keep them off the loop.
            value = await asyncio.to_thread(spec, delivery)
        if inspect.isawaitable(value):
            value = await value
        return _to_response(value)


class ReceiverFactory(Protocol):
    """Type of the ``make_receiver`` fixture (tests/conftest.py)."""

    def __call__(
        self,
        current_signing_key: str | None = None,
        next_signing_key: str | None = None,
    ) -> Receiver: ...
