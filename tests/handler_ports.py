"""The handlers' ports for tests: on development adapters (writing to a folder), to run the
default handlers without the systems around the service; and a follow-up port that records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobsvc.adapters.dev import (
    DevApplicationService,
    DevCrm,
    DevEmailSender,
    DevListingService,
    DevOutbox,
    DevSmsSender,
    DevSyndicationPlatform,
)
from jobsvc.handlers import HandlerPorts
from jobsvc.handlers.notifier import Notifier
from jobsvc.jobs import JobType
from jobsvc.payloads import Platform
from jobsvc.templates import default_catalog


def dev_ports(folder: Path, **overrides: Any) -> HandlerPorts:
    """``HandlerPorts`` on development adapters writing to ``folder``; ``overrides`` replace
    single ports."""
    outbox = DevOutbox(folder)
    values: dict[str, Any] = {
        "listings": DevListingService(outbox),
        "applications": DevApplicationService(outbox),
        "crm": DevCrm(outbox),
        "platforms": {p: DevSyndicationPlatform(p, outbox) for p in Platform},
        "notifier": Notifier(
            templates=default_catalog(),
            email=DevEmailSender(outbox, from_address="jobs@example.com"),
            sms=DevSmsSender(outbox),
        ),
    }
    values.update(overrides)
    return HandlerPorts(**values)


@dataclass(frozen=True, kw_only=True)
class FollowUpCall:
    job_type: JobType
    payload: dict[str, Any]
    delay: timedelta | None
    deduplication_id: str | None
    job_id: uuid.UUID


@dataclass
class RecordedFollowUps:
    """The ``FollowUp`` port as the service offers it, recording each call; a repeated
    deduplication id answers the job it named before, as Enqueue does."""

    calls: list[FollowUpCall] = field(default_factory=list)

    async def __call__(
        self,
        job_type: JobType,
        payload: dict[str, Any],
        *,
        delay: timedelta | None = None,
        deduplication_id: str | None = None,
    ) -> uuid.UUID:
        earlier = [
            c for c in self.calls if deduplication_id and c.deduplication_id == deduplication_id
        ]
        job_id = earlier[0].job_id if earlier else uuid.uuid4()
        self.calls.append(
            FollowUpCall(
                job_type=job_type,
                payload=payload,
                delay=delay,
                deduplication_id=deduplication_id,
                job_id=job_id,
            )
        )
        return job_id
