"""Domain errors. Each has a stable ``reason`` (UPPER_SNAKE) that transports pass on: the gRPC
server as ``google.rpc.ErrorInfo.reason``, the CLI in its message. Transports map the classes to
their own codes in one table each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

# Messages repeat what the caller sent; bounded, so a huge value cannot make an error larger
# than the transport carries (gRPC refuses trailers above 16 KiB and the caller sees only that).
MAX_QUOTED_CHARS = 80
MAX_LISTED_VIOLATIONS = 20


def quoted(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    shown = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{shown}... ({len(text)} characters)"


@dataclass(frozen=True)
class FieldViolation:
    """A bad field of a request: its path (``send_reminder.applicant_id``) and what is wrong."""

    field: str
    description: str


class JobServiceError(Exception):
    """Base of the errors callers may see; ``reason`` is stable, the message is for people."""

    reason = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(JobServiceError):
    """The request is malformed; ``violations`` name each bad field. Nothing was written."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        listed = self.violations[:MAX_LISTED_VIOLATIONS]
        message = "; ".join(f"{v.field}: {v.description}" for v in listed)
        if len(self.violations) > len(listed):
            message += f"; and {len(self.violations) - len(listed)} more"
        super().__init__(message)


class MalformedRequest(JobServiceError):
    """The request's bytes are not a message of the method's request type. Nothing was read."""

    reason = "MALFORMED_REQUEST"


class JobNotFound(JobServiceError):
    reason = "JOB_NOT_FOUND"


class ScheduleNotFound(JobServiceError):
    reason = "SCHEDULE_NOT_FOUND"


class InvalidState(JobServiceError):
    """The job or schedule is not in a state that allows this (e.g. cancelling a completed job)."""

    reason = "INVALID_STATE"


class AlreadyExists(JobServiceError):
    reason = "ALREADY_EXISTS"


class BrokerUnavailable(JobServiceError):
    """QStash could not be reached; the job is stored and will be published when it can."""

    reason = "BROKER_UNAVAILABLE"


class StorageUnavailable(JobServiceError):
    reason = "STORAGE_UNAVAILABLE"


class Overloaded(JobServiceError):
    """As many handlers run as this process allows; try again after ``retry_after``. Nothing
    was written."""

    reason = "OVERLOADED"

    def __init__(self, message: str, retry_after: timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(JobServiceError):
    reason = "UNAUTHENTICATED"


class TokenReused(Unauthenticated):
    """A delivery's signature token was used before: a replay, since QStash signs every attempt
    anew. Refused before anything is written."""

    reason = "TOKEN_REUSED"
