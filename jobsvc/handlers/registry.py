"""The registry: which payload type and which handler serve each job type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeAlias, TypeVar

from jobsvc.handlers import crm, notifications, reminders, syndication
from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.notifier import Notifier
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.jobs import JobType
from jobsvc.payloads import (
    CrmMatch,
    Payload,
    Platform,
    SendNotification,
    SendReminder,
    SyndicateListing,
)
from jobsvc.ports import ApplicationService, Crm, ListingService, SyndicationPlatform

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


@dataclass(frozen=True, kw_only=True)
class HandlerPorts:
    """What the four ADR-022 handlers need from outside: the listing and application services,
    the CRM, one adapter per syndication platform, and the notifier (templates, email, SMS).
    ``reminder_interval`` is the time between two steps of a reminder sequence."""

    listings: ListingService
    applications: ApplicationService
    crm: Crm
    platforms: Mapping[Platform, SyndicationPlatform]
    notifier: Notifier
    reminder_interval: timedelta = reminders.DEFAULT_INTERVAL


def default_registry(ports: HandlerPorts) -> HandlerRegistry:
    """A registry serving the four ADR-022 job types with their handlers, on ``ports``."""
    missing = [p.value for p in Platform if p not in ports.platforms]
    if missing:
        raise ValueError(f"no adapter for the platforms {', '.join(missing)}")
    registry = HandlerRegistry()
    registry.register(
        SyndicateListing,
        syndication.Syndication(listings=ports.listings, platforms=ports.platforms),
    )
    registry.register(
        SendReminder,
        reminders.Reminders(
            applications=ports.applications,
            notifier=ports.notifier,
            interval=ports.reminder_interval,
        ),
    )
    registry.register(CrmMatch, crm.CrmMatching(listings=ports.listings, crm=ports.crm))
    registry.register(
        SendNotification,
        notifications.Notifications(applications=ports.applications, notifier=ports.notifier),
    )
    return registry
