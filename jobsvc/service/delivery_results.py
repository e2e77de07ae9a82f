"""What a delivery's outcome tells QStash (``DeliveryResult``), and what QStash's failure
callback tells jobsvc (``FailureReport``): the two messages the sidecar exchanges with QStash,
in use-case terms."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from jobsvc.handlers import MAX_ERROR_LENGTH
from jobsvc.remote_text import clean_remote_text

__all__ = ["DeliveryResult", "FailureReport", "InvalidFailureCallback", "ResultKind"]

# The reasons of answers whose message is the error of a failed attempt.
_ATTEMPT_FAILURES = frozenset({"HANDLER_RETRY", "RETRIES_EXHAUSTED", "HANDLER_FAILED"})


class ResultKind(StrEnum):
    DONE = "done"  # 2xx: recorded, nothing more wanted
    RETRY = "retry"  # 5xx: deliver again (after ``retry_after`` when known)
    PERMANENT = "permanent"  # 489 + Upstash-NonRetryable-Error: no delivery can succeed


@dataclass(frozen=True, kw_only=True)
class DeliveryResult:
    """What to answer QStash. ``reason`` is stable (UPPER_SNAKE): ``COMPLETED``, ``SKIPPED``,
    ``ALREADY_COMPLETED``/``_FAILED``/``_CANCELLED`` (done); ``HANDLER_RETRY``,
    ``RETRIES_EXHAUSTED`` (the job failed: QStash dead-letters the message), ``JOB_BUSY``
    (running under another delivery's lease), ``SUPERSEDED`` (retry); ``HANDLER_FAILED``,
    ``INVALID_ENVELOPE``, ``JOB_TYPE_MISMATCH``, ``JOB_NOT_FOUND`` (permanent)."""

    kind: ResultKind
    reason: str
    message: str
    job_id: uuid.UUID | None = None
    retry_after: timedelta | None = None

    @classmethod
    def done(cls, reason: str, message: str, job_id: uuid.UUID) -> DeliveryResult:
        return cls(kind=ResultKind.DONE, reason=reason, message=message, job_id=job_id)

    @classmethod
    def retry(
        cls, reason: str, message: str, job_id: uuid.UUID, after: timedelta | None = None
    ) -> DeliveryResult:
        return cls(
            kind=ResultKind.RETRY, reason=reason, message=message, job_id=job_id, retry_after=after
        )

    @classmethod
    def permanent(
        cls, reason: str, message: str, job_id: uuid.UUID | None = None
    ) -> DeliveryResult:
        return cls(kind=ResultKind.PERMANENT, reason=reason, message=message, job_id=job_id)


class InvalidFailureCallback(ValueError):
    """A body posted to the failure-callback endpoint that is not QStash's failure callback;
    sending it again cannot help."""


@dataclass(frozen=True, kw_only=True)
class FailureReport:
    """QStash's failure callback: which message failed for good, its DLQ entry, and the last
    answer it got (``status`` 0 and ``error`` when there was no HTTP answer at all)."""

    source_message_id: str
    dlq_id: str
    source_body: bytes
    status: int
    body: bytes
    error: str | None = None
    retried: int | None = None
    max_retries: int | None = None
    schedule_id: str | None = None

    @classmethod
    def parse(cls, callback_body: bytes) -> FailureReport:
        """Read the callback's JSON; InvalidFailureCallback names what is missing or wrong."""
        try:
            document = json.loads(callback_body)
        except ValueError as exc:  # UnicodeDecodeError included
            raise InvalidFailureCallback(f"body is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidFailureCallback("body is not a JSON object")

        def text(name: str, *, required: bool = False) -> str | None:
            value = document.get(name)
            if value is None or value == "":
                if required:
                    raise InvalidFailureCallback(f"{name} is missing")
                return None
            if not isinstance(value, str):
                raise InvalidFailureCallback(f"{name} is not a string")
            return value

        def number(name: str) -> int | None:
            value = document.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidFailureCallback(f"{name} is not an integer")
            return value

        def decoded(name: str) -> bytes:
            try:
                return base64.b64decode(text(name) or "", validate=True)
            except binascii.Error as exc:
                raise InvalidFailureCallback(f"{name} is not base64: {exc}") from exc

        return cls(
            source_message_id=text("sourceMessageId", required=True) or "",
            dlq_id=text("dlqId", required=True) or "",
            source_body=decoded("sourceBody"),
            status=number("status") or 0,
            body=decoded("body"),
            error=text("error"),
            retried=number("retried"),
            max_retries=number("maxRetries"),
            schedule_id=text("scheduleId"),
        )

    def describe(self) -> str:
        """The job's error. When the last answer was the sidecar's own report of a failed
        attempt, its ``message`` is that attempt's error, recorded already, and stays as it
        is; any other answer (a bad signature, a timeout, a proxy's 502) is described."""
        try:
            answer = json.loads(self.body)
        except ValueError:
            answer = None
        if (
            isinstance(answer, dict)
            and answer.get("reason") in _ATTEMPT_FAILURES
            and isinstance(answer.get("message"), str)
        ):
            return clip(answer["message"])
        # The last answer came from outside (a proxy's error page, say): only its words stay.
        if self.status:
            text = clean_remote_text(self.body.decode(errors="replace"))
            last = f"HTTP {self.status}" + (f": {text}" if text else "")
        else:
            last = clean_remote_text(self.error or "") or "no answer"
        deliveries = "" if self.retried is None else f" after {self.retried + 1} deliveries"
        return clip(f"QStash gave up{deliveries}; the last one got {last}")


def clip(error: str) -> str:
    """``error`` cut to what the job log keeps of an error."""
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"
