"""The one table from exceptions to the sidecar's HTTP answers.

Endpoints raise; Starlette's ``exception_handlers`` (built here) turn what they raise into an
answer for QStash, whose status says whether to deliver again (see ``answers``):

| exception                    | status | reason                                | QStash       |
|------------------------------|--------|---------------------------------------|--------------|
| ``BodyTooLarge``             | 413    | ``BODY_TOO_LARGE``                    | retries      |
| ``InvalidSignature``         | 401    | its own (``BAD_SIGNATURE``, ...)      | retries      |
| ``TokenReused``              | 401    | ``TOKEN_REUSED``                      | retries      |
| ``UnknownJobType``           | 404    | ``UNKNOWN_JOB_TYPE``                  | retries      |
| ``MalformedDelivery``        | 489    | its own (``MISSING_MESSAGE_ID``, ...) | dead-letters |
| ``InvalidFailureCallback``   | 489    | ``INVALID_FAILURE_CALLBACK``          | dead-letters |
| ``StorageUnavailable``       | 503    | ``STORAGE_UNAVAILABLE``               | retries      |
| ``Overloaded``               | 503    | ``OVERLOADED`` (with ``Retry-After``) | retries      |
| other ``JobServiceError``    | 500    | ``INTERNAL`` (generic message)        | retries      |
| Starlette ``HTTPException``  | its    | ``NOT_FOUND``, ``METHOD_NOT_ALLOWED`` | retries      |
| anything else                | 500    | ``INTERNAL`` (generic message)        | retries      |

401 and 404 are retried on purpose: both mean a misconfiguration (signing keys, public URL,
a sidecar older than the service) that an operator can fix before QStash gives up. A reused
token (``TOKEN_REUSED``) gets 401 too: QStash signs each attempt anew, so only a replay or a
proxy re-sending a request reuses one, and a retry by QStash then comes with a fresh token
(489 would dead-letter a job that a proxy's resend had only delayed). An exception with a
``retry_after`` (a ``timedelta``) is answered with ``Retry-After``, which QStash honours for
its next retry.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from jobsvc.errors import JobServiceError, Overloaded, StorageUnavailable, TokenReused
from jobsvc.service.deliveries import InvalidFailureCallback, UnknownJobType
from jobsvc.webhooks.answers import NON_RETRYABLE_STATUS, reply
from jobsvc.webhooks.signature import InvalidSignature

log = logging.getLogger("jobsvc.webhooks")


class MalformedDelivery(Exception):
    """A signed request that lacks what QStash sends with every delivery (its message id) or
    carries it garbled; sending it again cannot help. ``reason`` is stable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class BodyTooLarge(Exception):
    """A body over the sidecar's cap, refused before its signature could be checked."""

    reason = "BODY_TOO_LARGE"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str | None  # None: the exception's own ``reason``
    action: str  # the log record's stable action
    level: int = logging.WARNING
    expose: bool = True  # False: a generic message instead of the exception's


# The table: the most specific class of the exception picks its row.
ANSWERS: Mapping[type[Exception], _Answer] = {
    BodyTooLarge: _Answer(413, None, "body_too_large"),
    InvalidSignature: _Answer(401, None, "signature_rejected"),
    TokenReused: _Answer(401, None, "signature_rejected"),
    UnknownJobType: _Answer(404, None, "job_type_unknown"),
    MalformedDelivery: _Answer(NON_RETRYABLE_STATUS, None, "delivery_malformed", logging.ERROR),
    InvalidFailureCallback: _Answer(
        NON_RETRYABLE_STATUS, "INVALID_FAILURE_CALLBACK", "failure_callback_invalid", logging.ERROR
    ),
    StorageUnavailable: _Answer(503, None, "storage_unavailable"),
    # INFO: under a spike every refused delivery is answered so; the answer is the design.
    Overloaded: _Answer(503, None, "delivery_overloaded", logging.INFO),
    JobServiceError: _Answer(500, "INTERNAL", "sidecar_error", logging.ERROR, expose=False),
}
_GENERIC = "internal error; see the sidecar's log"


async def _answer(request: Request, exc: Exception) -> Response:
    row = next(ANSWERS[cls] for cls in type(exc).__mro__ if cls in ANSWERS)
    reason = row.reason or str(getattr(exc, "reason", "INTERNAL"))
    message = str(getattr(exc, "message", exc))
    log.log(
        row.level,
        "%s %s answered %d %s: %s",
        request.method,
        request.url.path,
        row.status,
        reason,
        message,
        exc_info=exc if not row.expose else None,
        extra={"action": row.action, "reason": reason, "status": row.status},
    )
    retry_after = getattr(exc, "retry_after", None)
    return reply(
        row.status,
        reason,
        message if row.expose else _GENERIC,
        retry_after=retry_after if isinstance(retry_after, timedelta) else None,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = http.HTTPStatus(exc.status_code).name
    return reply(exc.status_code, reason, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after answering, so the server logs the traceback once.
    return reply(500, "INTERNAL", _GENERIC)


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """The table as Starlette's ``exception_handlers``."""
    handlers: dict[Any, ExceptionHandler] = {cls: _answer for cls in ANSWERS}
    handlers[HTTPException] = _http_error
    handlers[Exception] = _unexpected
    return handlers
