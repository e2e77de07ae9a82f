"""The registry: which payload type and which handler serve each job type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from jobsvc.handlers import crm, notifications, reminders, syndication
from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.jobs import JobType
from jobsvc.payloads import CrmMatch, Payload, SendNotification, SendReminder, SyndicateListing

P = TypeVar("P", bound=Payload)

# A handler gets the validated payload and its context. It returns a ``HandlerResult`` or a dict
# (the job's result), or raises ``RetryLater`` / ``PermanentFailure``; any other exception is
# treated as a retryable failure. Handlers must be idempotent: deliveries are at-least-once.
Handler: TypeAlias = Callable[[P, HandlerContext], Awaitable[HandlerResult | Mapping[str, Any]]]


@dataclass(frozen=True)
class Registration(Generic[P]):
    """One job type's payload class and handler."""

    payload_type: type[P]
    handler: Handler[P]


class HandlerRegistry:
    """Maps each job type to its ``Registration``; one registration per job type."""

    def __init__(self) -> None:
        self._registrations: dict[JobType, Registration[Any]] = {}

    def register(self, payload_type: type[P], handler: Handler[P]) -> None:
        """Serve ``payload_type.job_type`` with ``handler``; ``ValueError`` if already served."""
        job_type = payload_type.job_type
        if job_type in self._registrations:
            raise ValueError(f"a handler for {job_type} is already registered")
        self._registrations[job_type] = Registration(payload_type, handler)

    def get(self, job_type: JobType) -> Registration[Any] | None:
        """The registration of ``job_type``, or None if nothing serves it."""
        return self._registrations.get(job_type)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._registrations

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._registrations)

    def __len__(self) -> int:
        return len(self._registrations)


def default_registry() -> HandlerRegistry:
    """A registry serving the four ADR-022 job types with their handlers."""
    registry = HandlerRegistry()
    registry.register(SyndicateListing, syndication.handle)
    registry.register(SendReminder, reminders.handle)
    registry.register(CrmMatch, crm.handle)
    registry.register(SendNotification, notifications.handle)
    return registry
