"""The domain vocabulary: a job is one run of a job type with a payload, moving through states.

Nothing here knows about gRPC, HTTP, SQL or QStash; every layer speaks these types.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class JobType(StrEnum):
    """Job types by their wire names (the sidecar serves them at ``/api/jobs/{type}``)."""

    SYNDICATE_LISTING = "syndicate-listing"
    SEND_REMINDER = "send-reminder"
    CRM_MATCH = "crm-match"
    SEND_NOTIFICATION = "send-notification"


class JobState(StrEnum):
    """Where a job is. Transitions only move forward; see ``TRANSITIONS``.

    ``pending``: stored, waiting for delivery (possibly until a later time).
    ``processing``: a delivery claimed it and its handler runs.
    ``retrying``: an attempt failed and QStash will deliver it again.
    ``completed``: the handler succeeded (or skipped it, with a reason in the result).
    ``failed``: retries exhausted or a permanent error; it is in the dead-letter queue and an
    operator may retry it.
    ``cancelled``: cancelled before it completed.
    """

    PENDING = "pending"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

# Every allowed move, from -> to. ``failed`` -> ``pending`` is an operator's retry.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.CANCELLED, JobState.FAILED}),
    JobState.PROCESSING: frozenset(
        {JobState.COMPLETED, JobState.RETRYING, JobState.FAILED, JobState.PROCESSING}
    ),
    # retrying -> pending: QStash gave up on deliveries that never reached a handler; re-driven.
    JobState.RETRYING: frozenset(
        {JobState.PROCESSING, JobState.CANCELLED, JobState.FAILED, JobState.PENDING}
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset(),
}

DEFAULT_RETRIES = 3
MAX_RETRIES = 20


@dataclass(frozen=True, kw_only=True)
class EnqueueOptions:
    """How a job is to be run. ``delay`` and ``not_before`` are exclusive; ``timeout`` bounds one
    handler run (default: the service's handler timeout)."""

    delay: timedelta | None = None
    not_before: datetime | None = None
    retries: int = DEFAULT_RETRIES
    deduplication_id: str | None = None
    timeout: timedelta | None = None


@dataclass(kw_only=True)
class Attempt:
    """One delivery of a job to its handler."""

    number: int
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None  # completed, skipped, retry, failed; None while it runs
    error: str | None = None
    qstash_message_id: str | None = None
    retried: int | None = None  # QStash's Upstash-Retried header of the delivery


@dataclass(kw_only=True)
class JobEvent:
    """Something that happened to a job besides its attempts, for its history. ``kind``:
    ``redriven`` (QStash gave up on a message whose deliveries never reached a handler, and
    the job was published anew with a fresh retry budget)."""

    at: datetime
    kind: str
    detail: str | None = None
    qstash_message_id: str | None = None  # the message it concerns (the one given up on)


REDRIVEN = "redriven"


@dataclass(kw_only=True)
class Job:
    """One run of a job type with its payload, as recorded in the job log."""

    id: uuid.UUID
    type: JobType
    payload: dict[str, Any]
    state: JobState = JobState.PENDING
    attempts: int = 0
    max_retries: int = DEFAULT_RETRIES
    created_at: datetime
    not_before: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    qstash_message_id: str | None = None
    dlq_id: str | None = None
    deduplication_id: str | None = None
    schedule_id: str | None = None
    timeout: timedelta | None = None
    # The outbox: None until the broker accepted the job; failed publishes are counted.
    published_at: datetime | None = None
    publish_attempts: int = 0
    # Times the job was re-driven after QStash gave up on deliveries no handler saw.
    redrives: int = 0
    history: list[Attempt] = field(default_factory=list)
    # Filled where a single job is read with its history (GetStatus), empty in lists.
    events: list[JobEvent] = field(default_factory=list)


@dataclass(kw_only=True)
class Schedule:
    """A recurring job: a cron expression (in ``time_zone``, UTC when None) and the job it starts.

    Each firing is a job of its own, recorded with this ``id`` as its ``schedule_id``.
    """

    id: str
    cron: str
    time_zone: str | None = None
    type: JobType
    payload: dict[str, Any]
    retries: int = DEFAULT_RETRIES
    timeout: timedelta | None = None
    paused: bool = False
    qstash_schedule_id: str | None = None
    created_at: datetime
    updated_at: datetime
    last_run_at: datetime | None = None
