"""Optional bearer-token authentication: a server interceptor that answers UNAUTHENTICATED
(ErrorInfo reason UNAUTHENTICATED) to a call without ``authorization: Bearer <token>``.

The health service and server reflection stay open: load balancers and orchestrators probe
health without credentials, and the API's schema is no secret (``grpcurl describe`` works).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from jobsvc.errors import Unauthenticated
from jobsvc.rpc.errors import Context, status_of

log = logging.getLogger("jobsvc.rpc")

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with the configured bearer token (compared in constant time)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._token = token.encode()

    def authorized(self, metadata: Any) -> bool:
        """Whether the call's metadata carries ``authorization: Bearer <token>`` (the scheme is
        case-insensitive, RFC 6750)."""
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), self._token
            ):
                return True
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        log.info(
            "refused %s: missing or wrong bearer token",
            method,
            extra={"action": "rpc_unauthenticated", "method": method},
        )
        return _refusal(handler)


def _unread(_data: bytes) -> None:
    """A refused call's request is never decoded: its bytes cannot make the refusal fail."""


def _refusal(handler: Handler) -> Handler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""

    async def refuse(_request: Any, context: Context) -> None:
        await context.abort_with_status(status_of(Unauthenticated("missing or wrong bearer token")))

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=_unread,
        response_serializer=handler.response_serializer,
    )
