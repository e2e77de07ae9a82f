"""The JobService use cases: enqueue, look up, cancel, retry, watch, schedule.

The job row is committed before anything is handed to the broker (an outbox): if the broker
cannot be reached, Enqueue still succeeds and the relay publishes the job later, so a job whose
Enqueue returned always runs. Transports call these methods with domain types only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from jobsvc.broker import Broker, CronSchedule, Delivery, Envelope, SidecarUrls
from jobsvc.db import JobLog
from jobsvc.db.transitions import LEASE_EXPIRED
from jobsvc.errors import (
    AlreadyExists,
    BrokerUnavailable,
    FieldViolation,
    InvalidArgument,
    JobServiceError,
)
from jobsvc.jobs import MAX_RETRIES, EnqueueOptions, Job, JobState, JobType, Schedule
from jobsvc.payloads import Payload
from jobsvc.service.inserts import GroupedInserts
from jobsvc.service.publisher import Publisher

log = logging.getLogger("jobsvc.service")

# The relay leaves a job alone this long after Enqueue, which publishes it itself; and this
# long after Enqueue's own publish failed (the relay's first backoff).
OWN_PUBLISH_GRACE = timedelta(seconds=10)
RELAY_AFTER_OWN_FAILURE = timedelta(seconds=1)
MAX_DELAY = timedelta(days=365)
MAX_BATCH = 1000


@dataclass(frozen=True, kw_only=True)
class EnqueueRequest:
    """One job to enqueue: its validated payload and how to run it."""

    payload: Payload
    options: EnqueueOptions = field(default_factory=EnqueueOptions)


def deduplication_id_for(job: Job) -> str:
    """The id QStash deduplicates a publish of ``job`` on: the same for every publish of one
    run-through (Enqueue and the relay racing, a relay retry) and new once attempts were made
    or the job was re-driven."""
    return f"{job.id}:{job.attempts}" + (f":redrive{job.redrives}" if job.redrives else "")


def passed_through(job: Job, *, since: tuple[JobState, int]) -> list[Job]:
    """The states ``job`` went through after being in ``since`` (state, attempts) and before
    its current one, as its attempt history records them, each as the job was then; empty
    when the history cannot place ``since``."""
    timeline: list[tuple[JobState, int]] = [(JobState.PENDING, 0)]
    for attempt in job.history:
        timeline.append((JobState.PROCESSING, attempt.number))
        # Still retrying now, or a later attempt (or a cancel, a failure callback) followed.
        left = attempt.number < job.attempts or job.state is not JobState.RETRYING
        if attempt.outcome == "retry" and left and attempt.error != LEASE_EXPIRED:
            timeline.append((JobState.RETRYING, attempt.number))  # (a takeover goes straight on)
        elif attempt.outcome == "failed":
            timeline.append((JobState.FAILED, attempt.number))
            if attempt.number < job.attempts:  # an operator retried it
                timeline.append((JobState.PENDING, attempt.number))
    current = (job.state, job.attempts)
    if timeline[-1] != current:
        timeline.append(current)
    starts = [i for i, moment in enumerate(timeline) if moment == since]
    if not starts:
        return []
    return [_as_it_was(job, state, n) for state, n in timeline[starts[-1] + 1 : -1]]


def _as_it_was(job: Job, state: JobState, attempts: int) -> Job:
    history = [replace(a) for a in job.history if a.number <= attempts]
    if state is JobState.PROCESSING and history:
        history[-1] = replace(history[-1], finished_at=None, outcome=None, error=None)
    finished = [a for a in history if a.outcome is not None]
    return replace(
        job,
        state=state,
        attempts=attempts,
        history=history,
        started_at=history[0].started_at if history else None,
        finished_at=finished[-1].finished_at if state is JobState.FAILED and finished else None,
        result=None,
        error=finished[-1].error if finished else None,
        qstash_message_id=history[-1].qstash_message_id if history else job.qstash_message_id,
        dlq_id=None,
    )


class JobService:
    """The use cases behind the gRPC API (and the CLI, through it)."""

    def __init__(
        self,
        *,
        job_log: JobLog,
        broker: Broker,
        urls: SidecarUrls,
        handler_timeout: timedelta,
        clock: Callable[[], datetime],
        watch_interval: timedelta = timedelta(milliseconds=50),
        background_publishing: bool = True,
        payload_check: Callable[[Payload], Sequence[FieldViolation]] | None = None,
    ) -> None:
        """``background_publishing`` False publishes each job inside Enqueue (for the inline
        broker, where publishing runs the job). ``payload_check`` looks further at a payload
        than its own validation can (a notification's template and its fields); the fields
        it names are relative to the request."""
        self.job_log = job_log
        self.broker = broker
        self.urls = urls
        self.handler_timeout = handler_timeout
        self.clock = clock
        self.watch_interval = watch_interval
        self.payload_check = payload_check
        self.publisher: Publisher | None = (
            Publisher(job_log=job_log, broker=broker, delivery=self.delivery, clock=clock)
            if background_publishing
            else None
        )
        self._grouped_inserts = GroupedInserts(
            lambda jobs, at: job_log.insert_many(jobs, next_publish_at=at),
            next_publish_at=lambda: self.clock() + OWN_PUBLISH_GRACE,
        )

    async def aclose(self) -> None:
        """Hand what the publisher still holds to the broker (briefly), then stop it."""
        if self.publisher is not None:
            await self.publisher.aclose()

    # -- enqueueing -----------------------------------------------------------------------------

    async def enqueue(self, request: EnqueueRequest) -> tuple[Job, bool]:
        """Record the job, then hand it to the broker; the job and whether it was deduplicated.

        ``InvalidArgument`` for bad options (nothing written). It returns once the job is
        committed: the publisher hands it to the broker in the background (with the inline
        broker, which runs the job itself, before returning). A broker that cannot be reached
        does not fail the call: the job stays in the outbox for the relay.
        """
        job = self._new_job(request, field_prefix="")
        if job.deduplication_id is None:
            stored, deduplicated = await self._grouped_inserts.insert(job), False
        else:
            stored, deduplicated = await asyncio.to_thread(
                self.job_log.insert, job, next_publish_at=self.clock() + OWN_PUBLISH_GRACE
            )
        if not deduplicated:
            if self.publisher is None:
                stored = await self._publish(stored)
            else:
                self.publisher.submit([stored])
        return stored, deduplicated

    async def enqueue_batch(self, requests: Sequence[EnqueueRequest]) -> list[tuple[Job, bool]]:
        """Record up to 1,000 jobs in one transaction (all or none), then publish them; per
        request, in order, the job and whether it was deduplicated.

        An entry whose ``deduplication_id`` a recorded job already holds is answered with that
        job, as Enqueue would, and creates nothing; the others are inserted together or not at
        all. Two entries with the same deduplication id are the caller's error (InvalidArgument).
        """
        if not requests:
            raise InvalidArgument(FieldViolation("requests", "must hold at least one job"))
        if len(requests) > MAX_BATCH:
            raise InvalidArgument(FieldViolation("requests", f"at most {MAX_BATCH} jobs"))
        jobs = [
            self._new_job(request, field_prefix=f"requests[{index}].")
            for index, request in enumerate(requests)
        ]
        keys = [job.deduplication_id for job in jobs if job.deduplication_id is not None]
        if len(set(keys)) != len(keys):
            raise InvalidArgument(
                FieldViolation("requests", "two requests have the same deduplication_id")
            )
        existing: dict[str, Job] = {}
        for _ in range(3):
            existing = await asyncio.to_thread(self.job_log.by_deduplication_ids, keys)
            new = [job for job in jobs if job.deduplication_id not in existing]
            try:
                stored = await asyncio.to_thread(
                    self.job_log.insert_many, new, next_publish_at=self.clock() + OWN_PUBLISH_GRACE
                )
                break
            except AlreadyExists:
                # A concurrent Enqueue took one of the ids after the lookup: look again. (An id
                # taken by a job's own id or message id fails the same way three times.)
                continue
        else:
            raise AlreadyExists("the batch kept colliding with concurrent enqueues; try again")
        if self.publisher is None:
            stored = [await self._publish(job) for job in stored]
        else:
            self.publisher.submit(stored)
        published = iter(stored)
        answers: list[tuple[Job, bool]] = []
        for job in jobs:
            found = existing.get(job.deduplication_id) if job.deduplication_id else None
            answers.append((found, True) if found is not None else (next(published), False))
        return answers

    def _new_job(self, request: EnqueueRequest, *, field_prefix: str) -> Job:
        options = request.options
        violations: list[FieldViolation] = []
        now = self.clock()
        not_before: datetime | None = None
        if options.delay is not None and options.not_before is not None:
            violations.append(
                FieldViolation(f"{field_prefix}delay", "give delay or not_before_time, not both")
            )
        if options.delay is not None:
            if not timedelta(0) <= options.delay <= MAX_DELAY:
                violations.append(
                    FieldViolation(f"{field_prefix}delay", "must be between 0 and 365 days")
                )
            else:
                not_before = now + options.delay if options.delay > timedelta(0) else None
        if options.not_before is not None:
            if options.not_before - now > MAX_DELAY:
                violations.append(
                    FieldViolation(f"{field_prefix}not_before_time", "must be within 365 days")
                )
            not_before = options.not_before if options.not_before > now else None
        if not 0 <= options.retries <= MAX_RETRIES:
            violations.append(
                FieldViolation(f"{field_prefix}retries", f"must be between 0 and {MAX_RETRIES}")
            )
        if options.timeout is not None and not (
            timedelta(seconds=1) <= options.timeout <= timedelta(minutes=15)
        ):
            violations.append(
                FieldViolation(f"{field_prefix}handler_timeout", "must be between 1 s and 15 min")
            )
        if options.deduplication_id is not None and not 0 < len(options.deduplication_id) <= 128:
            violations.append(
                FieldViolation(f"{field_prefix}deduplication_id", "must be 1 to 128 characters")
            )
        if self.payload_check is not None:
            violations += [
                FieldViolation(f"{field_prefix}{v.field}", v.description)
                for v in self.payload_check(request.payload)
            ]
        if violations:
            raise InvalidArgument(violations)
        payload = request.payload
        return Job(
            id=uuid.uuid4(),
            type=payload.job_type,
            payload=payload.to_dict(),
            max_retries=options.retries,
            created_at=now,
            not_before=not_before,
            deduplication_id=options.deduplication_id,
            timeout=options.timeout,
        )

    async def _publish(self, job: Job, *, deduplication_id: str | None = None) -> Job:
        """Hand a stored job to the broker and record its message id; on failure leave it to
        the relay."""
        try:
            message_id = await self.broker.publish(
                self.delivery(job, deduplication_id=deduplication_id)
            )
        except BrokerUnavailable as exc:
            log.warning(
                "broker unavailable, job %s left to the relay: %s",
                job.id,
                exc,
                extra={"action": "publish_deferred", "job_id": str(job.id)},
            )
            # Counted as the relay counts its own failures, and due after the relay's first
            # backoff instead of the grace that only keeps the relay from racing this publish.
            with contextlib.suppress(JobServiceError):  # then the grace it is
                await asyncio.to_thread(
                    self.job_log.publish_failed, job.id, self.clock() + RELAY_AFTER_OWN_FAILURE
                )
            return job
        await asyncio.to_thread(self.job_log.mark_published, job.id, message_id)
        job.qstash_message_id = message_id
        return job

    def delivery(self, job: Job, *, deduplication_id: str | None = None) -> Delivery:
        """What the broker gets for ``job``: its envelope to its type's endpoint, with a
        QStash timeout a little above the handler's so the sidecar can record the outcome."""
        timeout = (job.timeout or self.handler_timeout) + timedelta(seconds=5)
        return Delivery.for_job(
            job,
            urls=self.urls,
            deduplication_id=deduplication_id or deduplication_id_for(job),
            timeout=timeout,
        )

    # -- reading --------------------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID) -> Job:
        """The job with its attempt history; ``JobNotFound`` if there is none."""
        return await asyncio.to_thread(self.job_log.get, job_id)

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        types: Collection[JobType] = (),
        schedule_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, one page; and the next page's token (None at the end).

        Filters combine with AND: in one of ``states``, of one of ``types`` (empty: any),
        started by the cron schedule ``schedule_id``, created in [``created_after``,
        ``created_before``). InvalidArgument for a negative page size or a page token issued
        for other filters.
        """
        return await asyncio.to_thread(
            self.job_log.list,
            states=states,
            types=types,
            schedule_id=schedule_id,
            created_after=created_after,
            created_before=created_before,
            page_size=page_size,
            page_token=page_token,
        )

    async def watch(self, job_id: uuid.UUID) -> AsyncIterator[Job]:
        """The job now, then again at every change of state or attempts, until it is final.

        It polls the job log every ``watch_interval``. Changes that fall between two polls are
        read back from the attempt history: every attempt shows as ``processing`` (and a failed
        one that was retried as ``retrying``, then ``failed`` and ``pending`` again when an
        operator retried it), as the job was then, with the history it had. The limit of
        polling: a change the history keeps no trace of is still missed when it is undone
        within one interval (an attempt's ``retrying`` followed by a failure callback and an
        operator's retry before the next attempt), and each message comes up to one interval
        late. JobNotFound if there is no such job.
        """
        last: tuple[JobState, int] | None = None
        interval = self.watch_interval.total_seconds()
        while True:
            job = await self.get(job_id)
            if last is not None:
                for passed in passed_through(job, since=last):
                    yield passed
            current = (job.state, job.attempts)
            if current != last:
                yield job
                last = current
            if job.state.is_final:
                return
            await asyncio.sleep(interval)

    # -- changing jobs --------------------------------------------------------------------------

    async def cancel(self, job_id: uuid.UUID) -> Job:
        """Cancel a pending or retrying job (``InvalidState`` otherwise); its QStash message is
        cancelled too where the broker still holds it. A delivery that arrives anyway finds the
        job cancelled and does nothing."""
        job = await asyncio.to_thread(self.job_log.cancel, job_id)
        if job.qstash_message_id is not None:
            try:
                await self.broker.cancel(job.qstash_message_id)
            except BrokerUnavailable as exc:
                log.warning(
                    "could not cancel message %s: %s",
                    job.qstash_message_id,
                    exc,
                    extra={"action": "cancel_message_failed", "job_id": str(job_id)},
                )
        return job

    async def retry(self, job_id: uuid.UUID) -> Job:
        """Re-drive a failed job from the dead-letter queue with a fresh retry budget
        (``InvalidState`` unless failed); its DLQ entry is removed."""
        failed = await self.get(job_id)
        job = await asyncio.to_thread(
            self.job_log.requeue_failed, job_id, next_publish_at=self.clock() + OWN_PUBLISH_GRACE
        )
        # A deduplication id of its own: under the first run's, QStash would answer with the
        # old message for ten minutes. The relay keeps off during the grace period, so the two
        # cannot race; should this publish fail, the relay takes over under its own id.
        job = await self._publish(job, deduplication_id=f"{job.id}:retry:{uuid.uuid4().hex}")
        if failed.dlq_id is not None:
            try:
                await self.broker.delete_dlq(failed.dlq_id)
            except JobServiceError as exc:
                log.warning(
                    "could not remove DLQ entry %s: %s",
                    failed.dlq_id,
                    exc,
                    extra={"action": "dlq_delete_failed", "job_id": str(job_id)},
                )
        return job

    # -- schedules ------------------------------------------------------------------------------

    async def schedule(
        self,
        *,
        payload: Payload,
        cron: str,
        time_zone: str | None,
        schedule_id: str | None,
        retries: int,
        handler_timeout: timedelta | None,
    ) -> Schedule:
        """Create a recurring job, or replace the schedule with ``schedule_id``. The broker
        takes it first: if it cannot, nothing is recorded (``BrokerUnavailable``). ``cron`` and
        ``time_zone`` follow ``jobsvc.crons``' rules, which the transport checked."""
        if self.payload_check is not None and (violations := list(self.payload_check(payload))):
            raise InvalidArgument(violations)
        schedule_id = schedule_id or f"sched_{uuid.uuid4().hex}"
        now = self.clock()
        envelope = Envelope(
            job_type=payload.job_type,
            payload=payload.to_dict(),
            timeout=handler_timeout,
            schedule_id=schedule_id,  # signed with the body: the sidecar's proof of the schedule
        )
        try:
            cron_schedule = CronSchedule(
                job_type=payload.job_type,
                cron=cron,
                body=envelope.encode(),
                url=self.urls.job(payload.job_type),
                time_zone=time_zone,
                schedule_id=schedule_id,
                retries=retries,
                timeout=(handler_timeout or self.handler_timeout) + timedelta(seconds=5),
                failure_callback=self.urls.failure_callback,
            )
        except ValueError as exc:
            raise InvalidArgument(FieldViolation("cron", str(exc))) from None
        qstash_schedule_id = await self.broker.create_schedule(cron_schedule)
        schedule = Schedule(
            id=schedule_id,
            cron=cron,
            time_zone=time_zone,
            type=payload.job_type,
            payload=payload.to_dict(),
            retries=retries,
            timeout=handler_timeout,
            qstash_schedule_id=qstash_schedule_id,
            created_at=now,
            updated_at=now,
        )
        try:
            return await asyncio.to_thread(self.job_log.schedules.save, schedule)
        except Exception:
            # Not recorded: do not leave the broker firing a schedule nobody knows of.
            await self.broker.delete_schedule(qstash_schedule_id)
            raise

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return await asyncio.to_thread(self.job_log.schedules.get, schedule_id)

    async def list_schedules(
        self, *, page_size: int | None = None, page_token: str | None = None
    ) -> tuple[list[Schedule], str | None]:
        return await asyncio.to_thread(
            self.job_log.schedules.list, page_size=page_size, page_token=page_token
        )

    async def delete_schedule(self, schedule_id: str) -> Schedule:
        """Stop the schedule in the broker, then forget it; jobs it started stay."""
        schedule = await self.get_schedule(schedule_id)
        await self.broker.delete_schedule(schedule.qstash_schedule_id or schedule.id)
        return await asyncio.to_thread(self.job_log.schedules.delete, schedule_id)

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        schedule = await self.get_schedule(schedule_id)
        if schedule.paused:
            return schedule
        await self.broker.pause_schedule(schedule.qstash_schedule_id or schedule.id)
        return await asyncio.to_thread(self.job_log.schedules.set_paused, schedule_id, True)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        schedule = await self.get_schedule(schedule_id)
        if not schedule.paused:
            return schedule
        await self.broker.resume_schedule(schedule.qstash_schedule_id or schedule.id)
        return await asyncio.to_thread(self.job_log.schedules.set_paused, schedule_id, False)
