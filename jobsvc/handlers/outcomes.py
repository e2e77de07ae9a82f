"""How a handler run ends: what a handler returns or raises, and the ``Outcome`` the runner
reports to whoever records it (the sidecar answers QStash from it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

# Error texts are stored per attempt and shown to operators; a handler's exception message can
# be arbitrarily long (a whole HTTP response body), so it is clipped.
MAX_ERROR_LENGTH = 1000


class RetryLater(Exception):
    """Raised by a handler: this attempt failed, try again (after ``after`` if given, else on
    QStash's backoff). The sidecar passes ``after`` as ``Retry-After``, which QStash honours up
    to one day. On the last attempt the job fails like any other failed attempt."""

    def __init__(self, reason: str, after: timedelta | None = None) -> None:
        if after is not None and after < timedelta(0):
            raise ValueError(f"after must not be negative, got {after}")
        super().__init__(reason)
        self.reason = reason
        self.after = after


class PermanentFailure(Exception):
    """Raised by a handler: retrying cannot help (e.g. "applicant not found"). The job fails at
    once and goes to the dead-letter queue, where an operator may retry it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class HandlerResult:
    """What a successful handler returns: ``data`` becomes the job's result (a JSON object).

    ``HandlerResult.skip(reason)`` completes the job without doing its work, the ADR's
    ``{"skipped": true, "reason": "documents complete"}``. A handler may also return a plain
    dict, which is the same as ``HandlerResult(data=that_dict)``.
    """

    data: Mapping[str, Any] = field(default_factory=dict)
    skipped: bool = False
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.skipped and not self.reason:
            raise ValueError("a skipped result needs a reason")
        if self.reason is not None and not self.skipped:
            raise ValueError("only a skipped result has a reason; put other notes in data")

    @classmethod
    def skip(cls, reason: str, **data: Any) -> HandlerResult:
        """Completed without doing the work, for ``reason`` (e.g. "documents complete")."""
        return cls(data=data, skipped=True, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """The job's result as stored: ``data``, plus ``skipped`` and ``reason`` when skipped."""
        if self.skipped:
            return {**self.data, "skipped": True, "reason": self.reason}
        return dict(self.data)


class OutcomeKind(StrEnum):
    """The fate of one attempt (the values are ``Attempt.outcome``'s)."""

    COMPLETED = "completed"  # done or skipped; no delivery wanted again
    RETRY = "retry"  # failed this time; QStash should deliver again
    FAILED = "failed"  # permanent; no retry can help


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result of running one attempt; build it with ``completed``, ``retry`` or ``failed``."""

    kind: OutcomeKind
    result: dict[str, Any] | None = None  # completed only
    skipped: bool = False  # completed only
    error: str | None = None  # retry and failed: exception type and message, no traceback
    retry_after: timedelta | None = None  # retry only; None means QStash's own backoff

    @classmethod
    def completed(cls, result: Mapping[str, Any], *, skipped: bool = False) -> Outcome:
        return cls(kind=OutcomeKind.COMPLETED, result=dict(result), skipped=skipped)

    @classmethod
    def retry(cls, error: str, after: timedelta | None = None) -> Outcome:
        return cls(kind=OutcomeKind.RETRY, error=_clip(error), retry_after=after)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls(kind=OutcomeKind.FAILED, error=_clip(error))


def _clip(error: str) -> str:
    if len(error) <= MAX_ERROR_LENGTH:
        return error
    return error[: MAX_ERROR_LENGTH - 1] + "…"
