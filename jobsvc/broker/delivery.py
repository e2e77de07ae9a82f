"""What the service hands to a broker: one delivery of a job, or a cron schedule of deliveries,
and the ``Broker`` interface every broker (QStash, the local server, inline) implements."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from jobsvc.broker.envelope import Envelope
from jobsvc.jobs import DEFAULT_RETRIES, Job, JobType

DEFAULT_FAILURE_CALLBACK_PATH = "/api/jobs/_failed"
# QStash's rule for caller-chosen schedule ids.
_SCHEDULE_ID = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class SidecarUrls:
    """Where QStash reaches the sidecar: ``public_url`` is its base URL as QStash calls it (the
    signature's ``sub`` is checked against exactly these URLs)."""

    public_url: str
    failure_callback_path: str = DEFAULT_FAILURE_CALLBACK_PATH

    def __post_init__(self) -> None:
        if not self.public_url.startswith(("http://", "https://")):
            raise ValueError(f"public_url must be an http(s) URL, not {self.public_url!r}")
        if not self.failure_callback_path.startswith("/"):
            raise ValueError("failure_callback_path must start with '/'")

    def job(self, job_type: JobType) -> str:
        """The endpoint of a job type: ``{public_url}/api/jobs/{type}``."""
        return f"{self.public_url.rstrip('/')}/api/jobs/{job_type.value}"

    @property
    def failure_callback(self) -> str:
        """The endpoint QStash calls once a message's retries are exhausted (with its DLQ id)."""
        return self.public_url.rstrip("/") + self.failure_callback_path


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One job handed to the broker.

    ``body`` is the encoded ``Envelope``; ``url`` the sidecar endpoint of ``job_type``.
    ``delay`` and ``not_before`` (aware) are exclusive; neither means "now". ``retries`` counts
    deliveries after the first. ``deduplication_id`` makes a republish (by the relay) answer with
    the first message id instead of a second message, within QStash's window (10 minutes).
    ``timeout`` is QStash's per-attempt HTTP timeout (it should exceed the handler timeout, so
    the sidecar can record the outcome before QStash gives up). ``failure_callback`` is called
    once, with the DLQ id, when the last attempt has failed.
    """

    job_id: uuid.UUID
    job_type: JobType
    body: bytes
    url: str
    delay: timedelta | None = None
    not_before: datetime | None = None
    retries: int = DEFAULT_RETRIES
    deduplication_id: str | None = None
    timeout: timedelta | None = None
    failure_callback: str | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and self.not_before is not None:
            raise ValueError("delay and not_before are exclusive")
        if self.delay is not None and self.delay < timedelta(0):
            raise ValueError("delay must not be negative")
        if self.not_before is not None and self.not_before.tzinfo is None:
            raise ValueError("not_before must be an aware datetime")
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive")

    @classmethod
    def for_job(
        cls,
        job: Job,
        *,
        urls: SidecarUrls,
        deduplication_id: str | None = None,
        timeout: timedelta | None = None,
    ) -> Delivery:
        """The delivery of a stored job: its envelope to its type's endpoint, not before its
        ``not_before``, with its retries. The deduplication id defaults to the job id; pass
        another one to deliver the same job again on purpose (an operator's retry), since
        QStash would otherwise answer with the first message for 10 minutes."""
        envelope = Envelope(
            job_type=job.type, payload=job.payload, job_id=job.id, timeout=job.timeout
        )
        return cls(
            job_id=job.id,
            job_type=job.type,
            body=envelope.encode(),
            url=urls.job(job.type),
            not_before=job.not_before,
            retries=job.max_retries,
            deduplication_id=deduplication_id or str(job.id),
            timeout=timeout,
            failure_callback=urls.failure_callback,
        )


@dataclass(frozen=True, kw_only=True)
class CronSchedule:
    """A recurring delivery: ``body`` (an ``Envelope`` without a job id) is delivered to ``url``
    at every time ``cron`` (5 fields) names in ``time_zone`` (IANA name; UTC when None).
    ``schedule_id`` chosen by the caller makes creation an update of that schedule."""

    job_type: JobType
    cron: str
    body: bytes
    url: str
    time_zone: str | None = None
    schedule_id: str | None = None
    retries: int = DEFAULT_RETRIES
    timeout: timedelta | None = None
    failure_callback: str | None = None

    def __post_init__(self) -> None:
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields: {self.cron!r}")
        if self.schedule_id is not None and not _SCHEDULE_ID.fullmatch(self.schedule_id):
            raise ValueError("schedule_id may hold letters, digits, '.', '_' and '-' only")
        if self.retries < 0:
            raise ValueError("retries must not be negative")

    @property
    def cron_expression(self) -> str:
        """The expression as QStash takes it: ``CRON_TZ=<zone> <cron>`` for a time zone."""
        return f"CRON_TZ={self.time_zone} {self.cron}" if self.time_zone else self.cron


class Broker(Protocol):
    """Hands jobs to whatever delivers them to the sidecar.

    Errors: ``jobsvc.errors.BrokerUnavailable`` when the broker cannot be reached or asks to
    come back later (the job stays stored and the relay publishes it again);
    ``BrokerRejected`` when it refused the request itself (sending it again gets the same
    answer); ``BrokerUnsupported`` when this broker cannot do it at all;
    ``jobsvc.errors.ScheduleNotFound`` for an unknown schedule id.
    """

    async def publish(self, delivery: Delivery) -> str:
        """Hand over one delivery; return the broker's message id."""
        ...

    async def publish_batch(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Hand over several deliveries in one request, all or none; their message ids, in
        order. An error means none was accepted (resending is harmless: each carries its
        deduplication id)."""
        ...

    async def create_schedule(self, schedule: CronSchedule) -> str:
        """Create (or, with a known ``schedule_id``, replace) a schedule; return its id."""
        ...

    async def delete_schedule(self, schedule_id: str) -> None: ...

    async def pause_schedule(self, schedule_id: str) -> None: ...

    async def resume_schedule(self, schedule_id: str) -> None: ...

    async def cancel(self, message_id: str) -> bool:
        """Stop a message that is still waiting; False when the broker no longer holds it
        (delivered, cancelled, or never known). A delivery already in flight is not stopped."""
        ...

    async def delete_dlq(self, dlq_id: str) -> bool:
        """Remove an entry from the dead-letter queue (an operator re-drove the job); False
        when the broker no longer holds it."""
        ...

    async def aclose(self) -> None:
        """Release connections (and whatever the broker owns, such as an embedded server)."""
        ...
