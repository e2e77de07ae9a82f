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
    Overloaded,
    ScheduleNotFound,
    StorageUnavailable,
    Unauthenticated,
)

log = logging.getLogger("jobsvc.rpc")

DOMAIN = "jobsvc"
INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the server logged the details"
# gRPC refuses trailers (message and details) above 16 KiB, and the caller then sees
# RESOURCE_EXHAUSTED instead of the error. In UTF-8 bytes: the message travels percent-encoded
# (up to 3 characters a byte), the details base64-encoded; 20 violations fit in under 12 KiB.
MAX_MESSAGE_BYTES = 1024
MAX_FIELD_BYTES = 120
MAX_DESCRIPTION_BYTES = 200

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
    Overloaded: grpc.StatusCode.UNAVAILABLE,
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
            code=code.value[0], message=_cut(message, MAX_MESSAGE_BYTES), details=packed
        )
    )


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "..."


def _violations_message(violations: list[tuple[str, str]], total: int) -> str:
    """As many violations as fit in the message; it says how many more there are."""
    parts: list[str] = []
    size = 0
    for field, description in violations:
        part = f"{field}: {description}"
        size += len(part.encode()) + 2
        if size > MAX_MESSAGE_BYTES - 32:  # room for "; and N more"
            break
        parts.append(part)
    message = "; ".join(parts)
    if total > len(parts):
        message += f"; and {total - len(parts)} more"
    return message


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
    message = error.message
    if isinstance(error, InvalidArgument):
        # The first violations, each bounded; the message says how many more there were.
        listed = [
            (_cut(v.field, MAX_FIELD_BYTES), _cut(v.description, MAX_DESCRIPTION_BYTES))
            for v in error.violations[:MAX_LISTED_VIOLATIONS]
        ]
        message = _violations_message(listed, len(error.violations))
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=text)
                    for field, text in listed
                ]
            )
        )
    return _status(code, message, *details)


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
