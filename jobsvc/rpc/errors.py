"""Domain errors -> gRPC statuses, in one table.

Every status carries one ``google.rpc.ErrorInfo`` (``reason`` = the error's stable reason,
``domain`` = "jobsvc"); INVALID_ARGUMENT also carries a ``google.rpc.BadRequest`` naming every
bad field. Servicer methods raise; the ``unary``/``server_stream`` decorators turn what they
raise into the status. Anything unexpected becomes INTERNAL with a generic message and is
logged with its traceback, so no internal detail reaches a caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy cannot read them.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from jobsvc.broker.errors import BrokerRejected, BrokerUnsupported
from jobsvc.errors import (
    MAX_LISTED_VIOLATIONS,
    AlreadyExists,
    BrokerUnavailable,
    InvalidArgument,
    InvalidState,
    JobNotFound,
    JobServiceError,
    MalformedRequest,
    ScheduleNotFound,
    StorageUnavailable,
    Unauthenticated,
)

log = logging.getLogger("jobsvc.rpc")

DOMAIN = "jobsvc"
INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the server logged the details"
# gRPC refuses trailers (message and details) above 16 KiB, and the caller then sees
# RESOURCE_EXHAUSTED instead of the error: domain messages are bounded, and this bounds the rest.
MAX_MESSAGE_CHARS = 2048
MAX_FIELD_CHARS = 200
MAX_DESCRIPTION_CHARS = 300

STATUS_CODES: dict[type[JobServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    ScheduleNotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidState: grpc.StatusCode.FAILED_PRECONDITION,
    # Sending the same request again cannot help: the broker refused it or cannot do it.
    BrokerRejected: grpc.StatusCode.FAILED_PRECONDITION,
    BrokerUnsupported: grpc.StatusCode.FAILED_PRECONDITION,
    BrokerUnavailable: grpc.StatusCode.UNAVAILABLE,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}

Context = grpc.aio.ServicerContext[Any, Any]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _status(code: grpc.StatusCode, message: str, *details: Any) -> grpc.Status:
    packed = []
    for detail in details:
        container = AnyMessage()
        container.Pack(detail)
        packed.append(container)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code.value[0], message=_cut(message, MAX_MESSAGE_CHARS), details=packed
        )
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def code_of(error: JobServiceError) -> grpc.StatusCode | None:
    """The status code of a domain error (its nearest class in the table); None if unmapped."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return None


def status_of(error: JobServiceError) -> grpc.Status:
    """The status a domain error is answered with, details included."""
    code = code_of(error)
    if code is None:
        log.error(
            "no status code for %s: %s",
            type(error).__name__,
            error,
            extra={"action": "rpc_unmapped_error"},
        )
        return internal_status()
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)]
    if isinstance(error, InvalidArgument):
        # The first violations; the message says how many more there were.
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_cut(v.field, MAX_FIELD_CHARS),
                        description=_cut(v.description, MAX_DESCRIPTION_CHARS),
                    )
                    for v in error.violations[:MAX_LISTED_VIOLATIONS]
                ]
            )
        )
    return _status(code, error.message, *details)


def internal_status() -> grpc.Status:
    return _status(
        grpc.StatusCode.INTERNAL,
        INTERNAL_MESSAGE,
        error_details_pb2.ErrorInfo(reason=INTERNAL_REASON, domain=DOMAIN),
    )


async def _abort(context: Context, method: str, error: Exception) -> NoReturn:
    if isinstance(error, JobServiceError):
        await context.abort_with_status(status_of(error))
    log.exception(
        "%s failed unexpectedly", method, exc_info=error, extra={"action": "rpc_internal_error"}
    )
    await context.abort_with_status(internal_status())


def unary(
    method: Callable[[S, Req, Context], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Awaitable[Resp]]:
    """A unary servicer method whose errors become statuses (see the module docstring)."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise  # the method aborted on purpose; its status stands
        except Exception as exc:
            await _abort(context, method.__name__, exc)

    return wrapper


def server_stream(
    method: Callable[[S, Req, Context], AsyncIterator[Resp]],
) -> Callable[[S, Req, Context], AsyncIterator[Resp]]:
    """A server-streaming servicer method whose errors become statuses."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for response in method(self, request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method.__name__, exc)

    return wrapper
