"""What a handler gets besides its payload: which job and attempt this is, a logger bound to
the job, a port to enqueue follow-up jobs without knowing the service layer, and the job's
progress notes (what earlier attempts already did)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from jobsvc.jobs import JobType
from jobsvc.ports.progress import Progress

HANDLER_LOGGER = "jobsvc.handlers"


class FollowUp(Protocol):
    """Enqueues another job, as ``Enqueue`` would; returns its id.

    ``payload`` is the wire form (``SendReminder(...).to_dict()``) and is validated like any
    enqueued payload (``InvalidArgument``). A ``deduplication_id`` derived from the current job
    (``f"{ctx.job_id}:day3"``) keeps a retried attempt from enqueueing the follow-up twice.
    """

    async def __call__(
        self,
        job_type: JobType,
        payload: dict[str, Any],
        *,
        delay: timedelta | None = None,
        deduplication_id: str | None = None,
    ) -> uuid.UUID: ...


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry ``job_id``, ``job_type`` and ``attempt``.

    Convention: every record also carries a stable ``action`` (snake_case, e.g.
    ``extra={"action": "reminder_sent"}``) that dashboards and alerts key on, so message text
    can change freely. Unlike the standard adapter, a call's own ``extra`` is merged in rather
    than dropped.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def job_logger(
    *, job_id: uuid.UUID, job_type: JobType, attempt: int, logger: logging.Logger | None = None
) -> JobLogger:
    """A ``JobLogger`` for one attempt, on ``logger`` (default: the ``jobsvc.handlers`` logger)."""
    extra: Mapping[str, object] = {
        "job_id": str(job_id),
        "job_type": job_type.value,
        "attempt": attempt,
    }
    return JobLogger(logger or logging.getLogger(HANDLER_LOGGER), extra)


@dataclass(frozen=True, kw_only=True)
class HandlerContext:
    """One attempt of one job, as its handler sees it.

    ``attempt`` counts from 1; a job with ``max_retries`` = 3 gets at most 4 attempts.
    ``progress`` keeps what this job's attempts did, for an attempt that follows a failed one.
    """

    job_id: uuid.UUID
    job_type: JobType
    attempt: int
    max_retries: int
    logger: JobLogger
    enqueue: FollowUp
    progress: Progress

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise ValueError(f"attempt counts from 1, got {self.attempt}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {self.max_retries}")

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job instead of being retried."""
        return self.attempt > self.max_retries
