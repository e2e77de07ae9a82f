"""The sidecar's HTTP answers. Their status tells QStash whether to deliver again: 2xx no
(done), 5xx yes (with ``Retry-After`` when the wait is known), 489 with
``Upstash-NonRetryable-Error: true`` never (QStash dead-letters the message at once).

Every body is a small JSON object, ``{"reason": "UPPER_SNAKE", "message": "...", "jobId": ...}``.
QStash keeps the last one in its dead-letter queue and passes it to the failure callback, so
an operator (and the failure callback's handler) can read why a delivery failed.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import timedelta

from starlette.responses import JSONResponse

from jobsvc.service.deliveries import DeliveryResult, ResultKind

NON_RETRYABLE_STATUS = 489
RETRY_STATUS = 503
_STATUS = {ResultKind.DONE: 200, ResultKind.RETRY: RETRY_STATUS}


def status_code(result: DeliveryResult) -> int:
    """The HTTP status answering ``result`` (200, 503 or 489)."""
    return _STATUS.get(result.kind, NON_RETRYABLE_STATUS)


def answer(result: DeliveryResult) -> JSONResponse:
    """The response to QStash for a handled delivery."""
    return reply(
        status_code(result),
        result.reason,
        result.message,
        job_id=result.job_id,
        retry_after=result.retry_after,
    )


def reply(
    status: int,
    reason: str,
    message: str,
    *,
    job_id: uuid.UUID | None = None,
    retry_after: timedelta | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON answer; 489 gets QStash's non-retryable header, ``retry_after`` a ``Retry-After``
    in whole seconds (rounded up: QStash must not come back early)."""
    body: dict[str, str] = {"reason": reason, "message": message}
    if job_id is not None:
        body["jobId"] = str(job_id)
    out = dict(headers or {})
    if status == NON_RETRYABLE_STATUS:
        out["Upstash-NonRetryable-Error"] = "true"
    if retry_after is not None:
        out["Retry-After"] = str(max(0, math.ceil(retry_after.total_seconds())))
    return JSONResponse(body, status_code=status, headers=out)
