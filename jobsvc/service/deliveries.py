"""Deliveries: what the sidecar does with a verified QStash delivery, and with QStash's failure
callback. Independent of HTTP: the result says whether QStash should deliver again.

One delivery: decode the envelope, match it to its job row (a cron firing creates its row),
claim the job with a guarded update (spending the delivery's signature token, used once), run
the handler under the job's timeout, record the attempt's outcome, and answer. Duplicate and
late deliveries find the row already moved and change nothing. Log records carry a stable
``action``: ``delivery_invalid``, ``delivery_unmatched``, ``cron_firing_recorded``,
``delivery_schedule_ignored``, ``delivery_duplicate``, ``delivery_busy``, ``delivery_completed``,
``delivery_retry``, ``delivery_failed``, ``delivery_superseded``, ``failure_callback_unmatched``,
``failure_callback_recorded``, ``failure_callback_duplicate``, ``failure_callback_redriven``,
``failure_callback_redrives_exhausted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from jobsvc.broker import Envelope, InvalidEnvelope
from jobsvc.db import Clock, JobLog, utc_now
from jobsvc.errors import (
    AlreadyExists,
    JobNotFound,
    JobServiceError,
    ScheduleNotFound,
    TokenReused,
)
from jobsvc.handlers import (
    FollowUp,
    HandlerContext,
    HandlerRegistry,
    OutcomeKind,
    job_logger,
    run,
)
from jobsvc.jobs import DEFAULT_RETRIES, MAX_RETRIES, Job, JobState, JobType
from jobsvc.service.delivery_results import (
    DeliveryResult,
    FailureReport,
    InvalidFailureCallback,
    ResultKind,
    clip,
)
from jobsvc.service.handler_slots import HandlerSlots
from jobsvc.service.progress import JobProgress, UnsavedNotes

__all__ = [
    "DEFAULT_LEASE_MARGIN",
    "Deliveries",
    "DeliveryResult",
    "FailureReport",
    "InvalidFailureCallback",
    "ResultKind",
    "Token",
    "UnknownJobType",
    "firing_job_id",
]

log = logging.getLogger("jobsvc.deliveries")

# Time to record an attempt after its handler's deadline, before another delivery may take over.
DEFAULT_LEASE_MARGIN = timedelta(seconds=15)
# Re-drives of a job whose deliveries QStash gave up on before a handler could fail it, and the
# wait before the first (doubling with each): ten re-drives span about three hours.
DEFAULT_MAX_REDRIVES = 10
DEFAULT_REDRIVE_DELAY = timedelta(seconds=10)
MAX_REDRIVE_DELAY = timedelta(hours=1)
# Job ids of cron firings derive from their QStash message id (uuid5 in this namespace), so the
# failure callback, which carries only the message id, finds the firing's row.
_FIRINGS = uuid.UUID("98fc69ff-49f5-4059-8f4a-525a31ebc67f")
_NIL = uuid.UUID(int=0)
# A delivery's signature token: its ``jti`` and until when it verifies.
Token = tuple[str, datetime]


def firing_job_id(message_id: str) -> uuid.UUID:
    """The job id of the cron firing delivered as QStash message ``message_id``."""
    return uuid.uuid5(_FIRINGS, message_id)


class UnknownJobType(JobServiceError):
    """The delivery's URL names a job type this sidecar does not serve."""

    reason = "UNKNOWN_JOB_TYPE"


class Deliveries:
    """Runs QStash's deliveries of jobs and records QStash's failure callbacks.

    ``handler_timeout`` bounds a handler run unless the job sets its own; a claim holds the job
    for that timeout plus ``lease_margin``, after which another delivery may take it over.
    ``follow_up`` is the port handlers enqueue follow-up jobs through. ``slots`` bounds how
    many deliveries run at once (default: ``DEFAULT_MAX_CONCURRENT_HANDLERS``).
    """

    def __init__(
        self,
        *,
        job_log: JobLog,
        registry: HandlerRegistry,
        handler_timeout: timedelta,
        follow_up: FollowUp,
        lease_margin: timedelta = DEFAULT_LEASE_MARGIN,
        slots: HandlerSlots | None = None,
        max_redrives: int = DEFAULT_MAX_REDRIVES,
        redrive_delay: timedelta = DEFAULT_REDRIVE_DELAY,
        clock: Clock = utc_now,
    ) -> None:
        if handler_timeout <= timedelta(0):
            raise ValueError("handler_timeout must be positive")
        if lease_margin < timedelta(0):
            raise ValueError("lease_margin must not be negative")
        self._job_log = job_log
        self._registry = registry
        self._timeout = handler_timeout
        self._follow_up = follow_up
        self._margin = lease_margin
        self._slots = slots or HandlerSlots()
        self._unsaved = UnsavedNotes(job_log.progress)
        self._max_redrives = max_redrives
        self._redrive_delay = redrive_delay
        self._clock = clock

    async def aclose(self) -> None:
        """Stop writing the progress notes the job log could not take yet (see
        ``service.progress``)."""
        await self._unsaved.aclose()

    def serves(self, job_type_wire: str) -> bool:
        """Whether ``/api/jobs/{job_type_wire}`` is a job type with a registered handler."""
        try:
            return JobType(job_type_wire) in self._registry
        except ValueError:
            return False

    async def ready(self) -> bool:
        """Whether the job log answers: one primary-key read of a job that never exists."""
        try:
            await asyncio.to_thread(self._job_log.get, _NIL)
        except JobNotFound:
            return True
        except JobServiceError:
            return False
        return True

    async def handle(
        self,
        job_type_wire: str,
        body: bytes,
        *,
        message_id: str,
        retried: int,
        schedule_id: str | None,
        token: Token | None = None,
        wait_for_slot: bool = False,
    ) -> DeliveryResult:
        """Run one delivery of ``body`` (an ``Envelope``) to ``/api/jobs/{job_type_wire}``.

        Done when the attempt completed or skipped, or when the job is already finished
        (a duplicate or late delivery). Retry when the handler asked for it, crashed or timed
        out; the last attempt (``retried`` >= the job's retries) fails the job but still answers
        retry, so that QStash, having no retries left, dead-letters the message and sends the
        failure callback with its DLQ id. Permanent when the handler failed permanently or the
        body cannot be a job of this type. UnknownJobType if nothing serves the type;
        StorageUnavailable if the job log cannot be reached (QStash should retry).

        At most ``slots.limit`` deliveries run at once; one more raises ``Overloaded`` before
        anything is read or written (QStash should retry after its ``retry_after``), or, with
        ``wait_for_slot``, waits for a slot.

        A body without ``jobId`` is a cron firing: its job row is created first, with the id
        ``firing_job_id(message_id)`` and the deduplication id ``qstash:<message_id>``, so a
        redelivery of the same firing finds the same row. Its schedule is the one its (signed)
        body names; ``schedule_id``, QStash's unsigned ``Upstash-Schedule-Id`` header, counts
        only for a body from before schedules named themselves, and only if that schedule's
        body is this one. Its retries are the schedule's (default 3), at least ``retried``.

        ``token`` (the delivery's signature token, if it came with one) is spent before
        anything else is written, in the claim's transaction when the body names its job:
        TokenReused, with nothing written, if it was spent before. ``message_id`` and
        ``retried`` come from unsigned headers (QStash signs neither): what keeps a captured
        token from being replayed under another message id is that a token is used once.
        """
        if not self.serves(job_type_wire):
            await self._spend(token)
            raise UnknownJobType(f"no handler serves job type {job_type_wire!r}")
        # Before anything is written: an overloaded answer leaves no trace but the log line.
        async with self._slots.waited_for() if wait_for_slot else self._slots.taken():
            return await self._handle(job_type_wire, body, message_id, retried, schedule_id, token)

    async def _handle(
        self,
        job_type_wire: str,
        body: bytes,
        message_id: str,
        retried: int,
        schedule_id: str | None,
        token: Token | None,
    ) -> DeliveryResult:
        extra = {"qstash_message_id": message_id, "retried": retried, "job_type": job_type_wire}
        try:
            envelope = Envelope.decode(body)
        except InvalidEnvelope as exc:
            await self._spend(token)
            log.error("invalid envelope: %s", exc, extra={**extra, "action": "delivery_invalid"})
            return DeliveryResult.permanent("INVALID_ENVELOPE", str(exc))
        if envelope.job_type.value != job_type_wire:
            await self._spend(token)
            message = f"a {envelope.job_type} job delivered to the {job_type_wire} endpoint"
            log.error("%s", message, extra={**extra, "action": "delivery_invalid"})
            return DeliveryResult.permanent("JOB_TYPE_MISMATCH", message, envelope.job_id)
        if envelope.job_id is None:
            await self._spend(token)  # before the firing's row is written
            job_id = await self._record_firing(envelope, message_id, retried, schedule_id, extra)
            token = None
        else:
            job_id = envelope.job_id
        extra["job_id"] = str(job_id)

        lease = (envelope.timeout or self._timeout) + self._margin
        job = await asyncio.to_thread(
            self._job_log.claim,
            job_id,
            qstash_message_id=message_id,
            retried=retried,
            lease_seconds=lease.total_seconds(),
            token=token,
        )
        if job is None:
            return await self._refused(job_id, extra)

        ctx = HandlerContext(
            job_id=job.id,
            job_type=job.type,
            attempt=job.attempts,
            max_retries=job.max_retries,
            logger=job_logger(job_id=job.id, job_type=job.type, attempt=job.attempts),
            enqueue=self._follow_up,
            progress=JobProgress(self._job_log.progress, job.id, self._unsaved),
        )
        timeout = job.timeout or envelope.timeout or self._timeout
        outcome = await run(self._registry, job.type, job.payload, ctx, timeout)
        extra["attempt"] = job.attempts

        if outcome.kind is OutcomeKind.COMPLETED:
            recorded = await asyncio.to_thread(
                self._job_log.complete,
                job.id,
                outcome.result,
                attempt=job.attempts,
                skipped=outcome.skipped,
            )
            if recorded:
                reason = "SKIPPED" if outcome.skipped else "COMPLETED"
                log.info("job %s", reason.lower(), extra={**extra, "action": "delivery_completed"})
                return DeliveryResult.done(reason, f"job {reason.lower()}", job.id)
        else:
            error = outcome.error or outcome.kind.value
            final = outcome.kind is OutcomeKind.FAILED or retried >= job.max_retries
            recorded = await asyncio.to_thread(
                self._job_log.attempt_failed, job.id, error, final=final, attempt=job.attempts
            )
            if recorded and outcome.kind is OutcomeKind.FAILED:
                log.warning("job failed", extra={**extra, "action": "delivery_failed"})
                return DeliveryResult.permanent("HANDLER_FAILED", error, job.id)
            if recorded:
                action = "delivery_failed" if final else "delivery_retry"
                log.warning("attempt failed: %s", error, extra={**extra, "action": action})
                if final:  # QStash has no retries left: it dead-letters the message
                    return DeliveryResult.retry("RETRIES_EXHAUSTED", error, job.id)
                return DeliveryResult.retry("HANDLER_RETRY", error, job.id, outcome.retry_after)
        # Not recorded: this attempt's lease ran out and another delivery took the job over, or
        # the failure callback failed it meanwhile. The row, not this attempt, says what to do.
        log.warning("attempt superseded", extra={**extra, "action": "delivery_superseded"})
        return await self._refused(job.id, extra, reason="SUPERSEDED")

    async def failed(self, callback_body: bytes, *, token: Token | None = None) -> None:
        """Record QStash's failure callback: the job's last delivery failed and its message is
        in the dead-letter queue. The job becomes failed with the DLQ id and the last error.

        Idempotent: a repeated callback, or one for a job that is already finished, changes
        nothing. A cron firing refused before it got a row (every delivery bounced) gets its
        row now, failed. A job none of whose deliveries failed it (the sidecar was down or
        overloaded: they never reached a handler) is not failed but re-driven, a bounded number
        of times, recorded as a ``redriven`` event in its history. InvalidFailureCallback if
        the body is not a failure callback; TokenReused, with nothing written, if ``token`` (as
        for ``handle``) was spent before.
        """
        await self._spend(token)
        report = FailureReport.parse(callback_body)
        extra = {"qstash_message_id": report.source_message_id, "dlq_id": report.dlq_id}
        try:
            envelope = Envelope.decode(report.source_body)
        except InvalidEnvelope as exc:
            # Its delivery was answered as permanent already; no job row belongs to it.
            log.warning("%s", exc, extra={**extra, "action": "failure_callback_unmatched"})
            return
        job_id = envelope.job_id or firing_job_id(report.source_message_id)
        extra["job_id"] = str(job_id)
        error = report.describe()
        if envelope.job_id is not None and await self._superseded(job_id, report):
            # A second message of the job (two publishes raced) gave up, not the job's own:
            # the job's fate is its current message's.
            log.info("superseded message", extra={**extra, "action": "failure_callback_superseded"})
            return
        if await self._redriven(job_id, report, error, extra):
            return
        if await asyncio.to_thread(self._job_log.mark_failed, job_id, report.dlq_id, error):
            log.warning("job dead-lettered", extra={**extra, "action": "failure_callback_recorded"})
            return
        try:
            await asyncio.to_thread(self._job_log.get, job_id)
        except JobNotFound:
            if envelope.job_id is None:
                await self._record_failed_firing(envelope, report, error)
                log.warning(
                    "firing dead-lettered", extra={**extra, "action": "failure_callback_recorded"}
                )
                return
            log.error("unknown job", extra={**extra, "action": "failure_callback_unmatched"})
            return
        log.info("already recorded", extra={**extra, "action": "failure_callback_duplicate"})

    # -- helpers -----------------------------------------------------------------------------

    async def _redriven(
        self, job_id: uuid.UUID, report: FailureReport, error: str, extra: Mapping[str, object]
    ) -> bool:
        """Re-drive the job if no delivery of the given-up message failed it: it is still
        pending (no handler ever ran it) or retrying (its last deliveries never reached one),
        as when the sidecar was down or overloaded. The ``n``-th re-drive is delivered after
        ``redrive_delay`` * 2^(n-1) (at most ``MAX_REDRIVE_DELAY``), up to ``max_redrives``
        times; the job fails as before after that."""
        try:
            job = await asyncio.to_thread(self._job_log.get, job_id)
        except JobNotFound:
            return False
        if job.state not in (JobState.PENDING, JobState.RETRYING):
            return False
        extra = {**extra, "redrives": job.redrives}
        if job.redrives >= self._max_redrives:
            log.error(
                "not re-driven again after %d re-drives",
                job.redrives,
                extra={**extra, "action": "failure_callback_redrives_exhausted"},
            )
            return False
        delay = min(self._redrive_delay * 2**job.redrives, MAX_REDRIVE_DELAY)
        number = job.redrives + 1
        detail = clip(
            f"{error}; no delivery reached a handler that failed the job, so it is published "
            f"anew (re-drive {number} of {self._max_redrives}), "
            f"due in {delay.total_seconds():g} s"
        )
        redriven = await asyncio.to_thread(
            self._job_log.redrive,
            job_id,
            qstash_message_id=report.source_message_id,
            max_redrives=self._max_redrives,
            not_before=self._clock() + delay,
            detail=detail,
        )
        if redriven is None:  # moved meanwhile (a late delivery ran it, a duplicate callback)
            return False
        log.warning(
            "job re-driven: %s", detail, extra={**extra, "action": "failure_callback_redriven"}
        )
        return True

    async def _spend(self, token: Token | None) -> None:
        """Spend the token on its own: for deliveries whose first write is not the claim (a
        firing's row comes first) or that write nothing."""
        if token is not None and not await asyncio.to_thread(self._job_log.tokens.spend, *token):
            raise TokenReused("this signature token has been used already")

    async def _superseded(self, job_id: uuid.UUID, report: FailureReport) -> bool:
        try:
            job = await asyncio.to_thread(self._job_log.get, job_id)
        except JobNotFound:
            return False
        current = job.qstash_message_id
        return current is not None and current != report.source_message_id

    async def _firing_schedule(
        self, envelope: Envelope, header: str | None, extra: Mapping[str, object]
    ) -> tuple[str | None, int]:
        """The schedule a firing belongs to, and its retries."""
        # When the signed body names the schedule, the header is not read at all: a header
        # naming another schedule changes nothing (refusing it would gain nothing either: the
        # token is genuine, and spent).
        schedule_id = envelope.schedule_id or header
        if schedule_id is None:
            return None, DEFAULT_RETRIES
        try:
            schedule = await asyncio.to_thread(self._job_log.schedules.get, schedule_id)
        except ScheduleNotFound:
            # Deleted since, or (header only) created outside jobsvc: the default retries.
            return envelope.schedule_id, DEFAULT_RETRIES
        if envelope.schedule_id is None and (
            schedule.type,
            schedule.payload,
            schedule.timeout,
        ) != (envelope.job_type, envelope.payload, envelope.timeout):
            # A schedule created before bodies named it: the header is believed only when the
            # schedule it names was created with this very body.
            log.warning(
                "Upstash-Schedule-Id %r names a schedule with another body; ignored",
                header,
                extra={**extra, "action": "delivery_schedule_ignored"},
            )
            return None, DEFAULT_RETRIES
        return schedule_id, schedule.retries

    async def _record_firing(
        self,
        envelope: Envelope,
        message_id: str,
        retried: int,
        header: str | None,
        extra: Mapping[str, object],
    ) -> uuid.UUID:
        schedule_id, retries = await self._firing_schedule(envelope, header, extra)
        job = self._firing(
            envelope, message_id, schedule_id, max(retries, min(retried, MAX_RETRIES))
        )
        try:
            stored, deduplicated = await asyncio.to_thread(self._job_log.insert, job)
        except AlreadyExists:
            return job.id  # the same firing, recorded by a concurrent redelivery
        if not deduplicated:
            log.info(
                "cron firing recorded",
                extra={
                    "action": "cron_firing_recorded",
                    "job_id": str(stored.id),
                    "qstash_message_id": message_id,
                    "schedule_id": schedule_id,
                },
            )
            if schedule_id is not None:
                with contextlib.suppress(ScheduleNotFound):
                    await asyncio.to_thread(
                        self._job_log.schedules.record_run, schedule_id, stored.created_at
                    )
        return stored.id

    async def _record_failed_firing(
        self, envelope: Envelope, report: FailureReport, error: str
    ) -> None:
        retries = min(report.max_retries or DEFAULT_RETRIES, MAX_RETRIES)
        # The body names its schedule (bodies from before that: the callback's own scheduleId,
        # which is signed too).
        schedule_id = envelope.schedule_id or report.schedule_id
        job = self._firing(envelope, report.source_message_id, schedule_id, retries)
        job = replace(
            job,
            state=JobState.FAILED,
            error=error,
            dlq_id=report.dlq_id,
            finished_at=job.created_at,
        )
        with contextlib.suppress(AlreadyExists):  # a concurrent callback recorded it
            await asyncio.to_thread(self._job_log.insert, job)

    def _firing(
        self, envelope: Envelope, message_id: str, schedule_id: str | None, retries: int
    ) -> Job:
        return Job(
            id=firing_job_id(message_id),
            type=envelope.job_type,
            payload=envelope.payload,
            max_retries=retries,
            created_at=self._clock(),
            qstash_message_id=message_id,  # counts as published: the relay leaves it alone
            deduplication_id=f"qstash:{message_id}",
            schedule_id=schedule_id,
            timeout=envelope.timeout,
        )

    async def _refused(
        self, job_id: uuid.UUID, extra: dict[str, object], *, reason: str = "JOB_BUSY"
    ) -> DeliveryResult:
        """The answer for a delivery whose claim or record the row refused, from its state."""
        try:
            job = await asyncio.to_thread(self._job_log.get, job_id)
        except JobNotFound:
            log.error("no such job", extra={**extra, "action": "delivery_unmatched"})
            return DeliveryResult.permanent("JOB_NOT_FOUND", f"job {job_id} not found", job_id)
        if job.state.is_final:
            log.info("job already %s", job.state, extra={**extra, "action": "delivery_duplicate"})
            reason = f"ALREADY_{job.state.value.upper()}"
            return DeliveryResult.done(reason, f"job already {job.state}", job_id)
        log.info("job busy", extra={**extra, "action": "delivery_busy"})
        message = f"job {job_id} is {job.state} under another delivery"
        return DeliveryResult.retry(reason, message, job_id, self._lease_left(job))

    def _lease_left(self, job: Job) -> timedelta | None:
        """Roughly when the running attempt's lease ends (the job log does not expose it)."""
        if job.state is not JobState.PROCESSING or not job.history:
            return None
        lease = (job.timeout or self._timeout) + self._margin
        left = job.history[-1].started_at + lease - self._clock()
        return timedelta(seconds=max(1, math.ceil(left.total_seconds())))
