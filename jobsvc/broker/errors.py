"""Errors only a broker raises, beside ``jobsvc.errors.BrokerUnavailable`` (the transient one)
and ``jobsvc.errors.ScheduleNotFound``."""

from __future__ import annotations

from jobsvc.errors import JobServiceError


class BrokerRejected(JobServiceError):
    """The broker answered, and refused the request itself (bad token, a plan limit, an
    invalid option): sending it again unchanged gets the same answer. ``status`` is the HTTP
    status of the answer, None when the request was refused before it was sent."""

    reason = "BROKER_REJECTED"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BrokerUnsupported(JobServiceError):
    """The configured broker cannot do this at all (the inline broker has no delays, no
    schedules); a configuration question, not a bad request."""

    reason = "BROKER_UNSUPPORTED"
