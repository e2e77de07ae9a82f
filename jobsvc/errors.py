"""Domain errors. Each has a stable ``reason`` (UPPER_SNAKE) that transports pass on: the gRPC
server as ``google.rpc.ErrorInfo.reason``, the CLI in its message. Transports map the classes to
their own codes in one table each."""

from __future__ import annotations

from dataclasses import dataclass


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
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


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


class Unauthenticated(JobServiceError):
    reason = "UNAUTHENTICATED"


class TokenReused(Unauthenticated):
    """A delivery's signature token was used before: a replay, since QStash signs every attempt
    anew. Refused before anything is written."""

    reason = "TOKEN_REUSED"
