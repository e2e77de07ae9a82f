"""A gRPC proxy on loopback that stands in for a server dying right after it committed a call.

Every unary call is forwarded as raw bytes (with its metadata) to the upstream server. For the
next ``lose_next(method, times)`` calls of ``method``, the proxy forwards the request, waits for
the upstream's answer, throws it away and answers UNAVAILABLE, as a caller sees it when the
server's process is killed between its commit and its answer::

    async with CommitThenDrop(upstream="127.0.0.1:50051") as proxy:
        proxy.lose_next("/jobsvc.v1.JobService/Enqueue")
        ... call proxy.address ...
        assert proxy.forwarded["/jobsvc.v1.JobService/Enqueue"] == 2

It runs on the caller's event loop (``grpc.aio``).
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any, Self

import grpc


class CommitThenDrop:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.forwarded: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._lose: Counter[str] = Counter()
        self._channel = grpc.aio.insecure_channel(upstream)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_Forwarding(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_next(self, method: str, times: int = 1) -> None:
        """Throw away the upstream's answer to the next ``times`` calls of ``method``."""
        self._lose[method] += times

    async def forward(self, method: str, request: bytes, context: Any) -> bytes:
        metadata = tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if not key.startswith("grpc-")
        )
        call = self._channel.unary_unary(method)
        self.forwarded[method] += 1
        try:
            answer: bytes = await call(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        if self._lose[method] > 0:
            self._lose[method] -= 1
            self.dropped[method] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")
        return answer

    async def __aenter__(self) -> Self:
        await self._server.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._server.stop(0)
        await self._channel.close()


class _Forwarding(grpc.GenericRpcHandler):
    def __init__(self, proxy: CommitThenDrop) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method

        async def forward(request: bytes, context: Any) -> bytes:
            return await self._proxy.forward(method, request, context)

        # No (de)serializers: the bytes pass through untouched.
        return grpc.unary_unary_rpc_method_handler(forward)
