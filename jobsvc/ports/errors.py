"""What a port call can fail with. Adapters turn their transport's failures into these three;
handlers decide from them whether to retry, give up, or record a partial outcome."""

from __future__ import annotations

from datetime import timedelta


class PortError(Exception):
    """Base of port failures; ``message`` is for people (logs, a job's error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(PortError):
    """The other system answered that the thing asked for does not exist (HTTP 404)."""


class Unavailable(PortError):
    """Worth trying again: the system could not be reached, timed out, failed (5xx), asked to
    come back later (429, with ``retry_after`` when it said when), or answered something this
    adapter could not read. The request may or may not have taken effect."""

    def __init__(self, message: str, *, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(PortError):
    """The system refused the request itself (a 4xx other than 404, 408 and 429, or an SMTP
    5xx): sending it again gets the same answer."""
