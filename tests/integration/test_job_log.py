"""The job log on PostgreSQL and SQLite: inserts and deduplication, reads and pagination, the
outbox, the guarded state transitions, schedules, and driver errors at the boundary."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.exc import SQLAlchemyError

from jobsvc.db import JobLog, create_database_engine, upgrade
from jobsvc.db.transitions import LEASE_EXPIRED
from jobsvc.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidState,
    JobNotFound,
    ScheduleNotFound,
    StorageUnavailable,
)
from jobsvc.jobs import REDRIVEN, Attempt, Job, JobState, JobType, Schedule
from jobsvc.service.jobs import deduplication_id_for

START = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
LEASE = 60.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def job_log(database_url: str, clock: FakeClock) -> Iterator[JobLog]:
    engine = create_database_engine(database_url)
    upgrade(engine)
    yield JobLog(engine, clock=clock)
    engine.dispose()


MakeJob = Callable[..., Job]


@pytest.fixture
def make_job(clock: FakeClock) -> MakeJob:
    def make(**fields: Any) -> Job:
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "type": JobType.CRM_MATCH,
            "payload": {"listingId": "L1", "agentId": "A1"},
            "created_at": clock.now,
        }
        values.update(fields)
        return Job(**values)

    return make


def _claim(job_log: JobLog, job_id: uuid.UUID, retried: int = 0) -> Job | None:
    """Claim for a delivery of the job's message ``msg_<job id>``."""
    return job_log.claim(
        job_id, qstash_message_id=f"msg_{job_id}", retried=retried, lease_seconds=LEASE
    )


# -- insert and get --------------------------------------------------------------------------


def test_insert_then_get_returns_the_same_job(job_log: JobLog, make_job: MakeJob) -> None:
    job = make_job(
        type=JobType.SEND_NOTIFICATION,
        payload={"type": "reminder", "templateData": {"name": "Ana", "n": [1, 2.5, None]}},
        max_retries=5,
        not_before=START + timedelta(hours=2),
        timeout=timedelta(seconds=12.5),
        deduplication_id="dedup-1",
        schedule_id="nightly",
    )
    inserted, deduplicated = job_log.insert(job)
    assert deduplicated is False
    assert inserted == job  # nothing published yet: published_at stays None
    assert job_log.get(job.id) == job
    with pytest.raises(JobNotFound):
        job_log.get(uuid.uuid4())

    # Times in any zone are stored as instants and read back in UTC.
    local = START.astimezone(ZoneInfo("America/New_York"))
    job_log.insert(other := make_job(created_at=local))
    created = job_log.get(other.id).created_at
    assert (created, created.tzinfo) == (START, UTC)


def test_a_job_with_a_message_id_is_recorded_as_published(
    job_log: JobLog, make_job: MakeJob
) -> None:
    job = make_job(qstash_message_id="msg_cron_1", schedule_id="nightly")
    inserted, _ = job_log.insert(job)
    assert inserted.published_at == START
    assert job_log.get(job.id).published_at == START
    assert job_log.unpublished(10) == []


def test_deduplication_returns_the_existing_job(job_log: JobLog, make_job: MakeJob) -> None:
    first, deduplicated = job_log.insert(make_job(deduplication_id="listing-L1"))
    assert deduplicated is False
    again, deduplicated = job_log.insert(
        make_job(deduplication_id="listing-L1", payload={"listingId": "other", "agentId": "x"})
    )
    assert deduplicated is True
    assert again == first
    # Only the deduplication id is deduplicated: a taken message id is an error.
    job_log.insert(make_job(qstash_message_id="msg_1"))
    with pytest.raises(AlreadyExists):
        job_log.insert(make_job(qstash_message_id="msg_1", deduplication_id="fresh"))
    jobs, _ = job_log.list()
    assert len(jobs) == 2
    assert "fresh" not in {job.deduplication_id for job in jobs}


def test_concurrent_inserts_with_one_deduplication_id_leave_one_row(
    job_log: JobLog, make_job: MakeJob
) -> None:
    candidates = [make_job(deduplication_id="same") for _ in range(8)]
    start = threading.Barrier(len(candidates))

    def insert(job: Job) -> tuple[Job, bool]:
        start.wait()
        return job_log.insert(job)

    with ThreadPoolExecutor(len(candidates)) as pool:
        results = list(pool.map(insert, candidates))
    winners = [job for job, deduplicated in results if not deduplicated]
    assert len(winners) == 1
    assert {job.id for job, _ in results} == {winners[0].id}
    jobs, _ = job_log.list()
    assert [job.id for job in jobs] == [winners[0].id]


def test_insert_many_writes_all(job_log: JobLog, make_job: MakeJob, clock: FakeClock) -> None:
    jobs = [make_job(created_at=clock.advance(0.001)) for _ in range(300)]
    # Every kind of value once, through the batch path (one JSON document on PostgreSQL).
    jobs[7] = make_job(
        created_at=clock.advance(0.001),
        type=JobType.SEND_REMINDER,
        payload={"applicantId": "A7", "missingDocs": ["id", "paystub"], "nested": {"x": 1.5}},
        state=JobState.FAILED,
        attempts=1,
        max_retries=0,
        not_before=START + timedelta(days=2),
        started_at=START,
        finished_at=START + timedelta(seconds=3),
        result={"ok": False},
        error="boom",
        qstash_message_id="msg_7",
        dlq_id="dlq_7",
        deduplication_id="dedup-7",
        schedule_id="daily",
        timeout=timedelta(seconds=0.25),
        history=[
            Attempt(
                number=1,
                started_at=START,
                finished_at=START + timedelta(seconds=3),
                outcome="failed",
                error="boom",
                qstash_message_id="msg_7",
                retried=0,
            )
        ],
    )
    inserted = job_log.insert_many(jobs)
    assert inserted == [
        replace(jobs[7], published_at=jobs[7].created_at) if i == 7 else job
        for i, job in enumerate(jobs)
    ]
    listed, token = job_log.list(page_size=1000)
    assert token is None
    assert listed == sorted(inserted, key=lambda job: job.created_at, reverse=True)
    assert job_log.get(jobs[7].id) == inserted[7]
    assert job_log.insert_many([]) == []


def test_insert_many_writes_nothing_when_one_row_is_refused(
    job_log: JobLog, make_job: MakeJob
) -> None:
    existing, _ = job_log.insert(make_job(deduplication_id="taken"))
    for bad, error in [
        (make_job(deduplication_id="taken"), AlreadyExists),  # already in the log
        (make_job(deduplication_id="twice"), AlreadyExists),  # repeated in the batch
        (make_job(max_retries=21), InvalidArgument),  # a CHECK constraint
    ]:
        batch = [make_job() for _ in range(50)]
        batch[10] = make_job(deduplication_id="twice")
        batch[40] = bad
        with pytest.raises(error):
            job_log.insert_many(batch)
        listed, _ = job_log.list()
        assert [job.id for job in listed] == [existing.id]


# -- list ------------------------------------------------------------------------------------


def test_list_filters_and_pages_return_each_job_exactly_once(
    job_log: JobLog, make_job: MakeJob
) -> None:
    jobs = []
    for i in range(23):
        # Pairs of jobs share a creation time: the id breaks the tie.
        created = START + timedelta(seconds=i // 2)
        state = [JobState.PENDING, JobState.COMPLETED, JobState.FAILED][i % 3]
        kind = [JobType.CRM_MATCH, JobType.SEND_REMINDER][i % 2]
        jobs.append(make_job(created_at=created, state=state, type=kind))
    job_log.insert_many(jobs)

    def everything(**filters: Any) -> list[Job]:
        collected: list[Job] = []
        token: str | None = None
        while True:
            page, token = job_log.list(page_size=4, page_token=token, **filters)
            assert len(page) <= 4
            collected.extend(page)
            if token is None:
                return collected

    def expected(keep: Callable[[Job], bool]) -> list[Job]:
        chosen = [job for job in jobs if keep(job)]
        return sorted(chosen, key=lambda job: (job.created_at, job.id), reverse=True)

    assert everything() == expected(lambda job: True)
    assert everything(state=JobState.FAILED) == expected(lambda j: j.state is JobState.FAILED)
    assert everything(type=JobType.SEND_REMINDER) == expected(
        lambda j: j.type is JobType.SEND_REMINDER
    )
    after, before = START + timedelta(seconds=3), START + timedelta(seconds=8)
    assert everything(created_after=after, created_before=before) == expected(
        lambda j: after <= j.created_at < before
    )
    assert everything(state=JobState.PENDING, type=JobType.CRM_MATCH) == expected(
        lambda j: j.state is JobState.PENDING and j.type is JobType.CRM_MATCH
    )
    assert everything(state=JobState.CANCELLED) == []


def test_jobs_created_during_paging_do_not_disturb_later_pages(
    job_log: JobLog, make_job: MakeJob
) -> None:
    jobs = [make_job(created_at=START + timedelta(seconds=i)) for i in range(6)]
    job_log.insert_many(jobs)
    first, token = job_log.list(page_size=3)
    job_log.insert(make_job(created_at=START + timedelta(hours=1)))
    second, token = job_log.list(page_size=3, page_token=token)
    assert token is None
    assert [job.id for job in first + second] == [job.id for job in reversed(jobs)]


def test_list_rejects_bad_pages(job_log: JobLog, make_job: MakeJob) -> None:
    job_log.insert_many([make_job() for _ in range(3)])
    _, token = job_log.list(page_size=1, state=JobState.PENDING)
    assert token is not None
    for bad in [
        {"page_token": token},  # issued for other filters
        {"page_token": token, "state": JobState.FAILED},
        {"page_token": "not-a-token"},
        {"page_token": "eyJrIjpbXX0"},  # valid base64 and JSON, not ours
        {"page_size": -1},
    ]:
        with pytest.raises(InvalidArgument) as raised:
            job_log.list(**bad)
        assert raised.value.violations[0].field in ("page_token", "page_size")
    page, _ = job_log.list(page_size=1, page_token=token, state=JobState.PENDING)
    assert len(page) == 1


# -- the outbox ------------------------------------------------------------------------------


def test_unpublished_leases_due_jobs_oldest_first(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    old = make_job(created_at=START - timedelta(minutes=2))
    new = make_job(created_at=START - timedelta(minutes=1))
    later = make_job()
    job_log.insert(new)
    job_log.insert(old)
    job_log.insert(later, next_publish_at=START + timedelta(seconds=30))
    job_log.insert(make_job(qstash_message_id="msg_published"))

    assert [job.id for job in job_log.unpublished(1, lease_seconds=60)] == [old.id]
    assert [job.id for job in job_log.unpublished(10, lease_seconds=60)] == [new.id]  # old leased
    assert job_log.unpublished(10) == []
    clock.advance(30)
    assert [job.id for job in job_log.unpublished(10, lease_seconds=120)] == [later.id]
    clock.advance(29.999)
    assert job_log.unpublished(10) == []
    clock.advance(0.001)  # the leases ran out (the relay died): the jobs come back
    assert [job.id for job in job_log.unpublished(10)] == [old.id, new.id]


def test_concurrent_relays_never_take_the_same_job(job_log: JobLog, make_job: MakeJob) -> None:
    jobs = [make_job() for _ in range(200)]
    job_log.insert_many(jobs)
    start = threading.Barrier(4)

    def relay(_: int) -> list[uuid.UUID]:
        start.wait()
        taken: list[uuid.UUID] = []
        while batch := job_log.unpublished(7):
            taken.extend(job.id for job in batch)
        return taken

    with ThreadPoolExecutor(4) as pool:
        taken = [job_id for batch in pool.map(relay, range(4)) for job_id in batch]
    assert sorted(taken) == sorted(job.id for job in jobs)


def test_mark_published_and_publish_failed(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    (taken,) = job_log.unpublished(10)
    assert taken.publish_attempts == 0
    retry_at = START + timedelta(seconds=4)
    assert job_log.publish_failed(job.id, retry_at) is True
    clock.now = retry_at - timedelta(microseconds=1)
    assert job_log.unpublished(10) == []
    clock.now = retry_at
    (taken,) = job_log.unpublished(10)
    assert taken.publish_attempts == 1

    assert job_log.mark_published(job.id, "msg_1") is True
    stored = job_log.get(job.id)
    assert (stored.published_at, stored.qstash_message_id) == (retry_at, "msg_1")
    assert stored.state is JobState.PENDING
    assert job_log.mark_published(job.id, "msg_2") is False
    assert job_log.publish_failed(job.id, retry_at) is False
    assert job_log.get(job.id) == stored
    clock.advance(3600)
    assert job_log.unpublished(10) == []


def test_the_outbox_skips_cancelled_and_delivered_jobs(job_log: JobLog, make_job: MakeJob) -> None:
    job_log.insert(cancelled := make_job())
    job_log.insert(delivered := make_job())
    job_log.cancel(cancelled.id)
    claimed = _claim(job_log, delivered.id)  # the delivery came before the relay's record
    assert claimed is not None
    assert claimed.published_at == START
    assert claimed.qstash_message_id == f"msg_{delivered.id}"
    assert job_log.unpublished(10) == []
    assert job_log.publish_failed(cancelled.id, START) is False
    assert job_log.unpublished(10) == []


# -- transitions -----------------------------------------------------------------------------


def test_claim_starts_an_attempt(job_log: JobLog, make_job: MakeJob) -> None:
    job_log.insert(job := make_job())
    claimed = _claim(job_log, job.id, retried=0)
    assert claimed is not None
    assert claimed.state is JobState.PROCESSING
    assert claimed.attempts == 1
    assert claimed.started_at == START
    assert claimed.history == [
        Attempt(number=1, started_at=START, qstash_message_id=f"msg_{job.id}", retried=0)
    ]
    assert job_log.get(job.id) == claimed


def test_a_duplicate_delivery_is_refused_while_the_lease_lives(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    assert _claim(job_log, job.id) is not None
    before = job_log.get(job.id)
    clock.advance(LEASE - 1)
    assert _claim(job_log, job.id, retried=0) is None
    assert job_log.get(job.id) == before


def test_an_expired_lease_lets_another_delivery_take_over(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    assert _claim(job_log, job.id, retried=0) is not None
    takeover_at = clock.advance(LEASE)
    taken = _claim(job_log, job.id, retried=1)
    assert taken is not None
    assert taken.attempts == 2
    assert taken.started_at == START  # the first start
    assert taken.history == [
        Attempt(
            number=1,
            started_at=START,
            finished_at=takeover_at,
            outcome="retry",
            error=LEASE_EXPIRED,
            qstash_message_id=f"msg_{job.id}",
            retried=0,
        ),
        Attempt(number=2, started_at=takeover_at, qstash_message_id=f"msg_{job.id}", retried=1),
    ]
    # The vanished worker comes back: it cannot finish its successor's attempt.
    assert job_log.complete(job.id, {"ok": True}, attempt=1) is False
    assert job_log.attempt_failed(job.id, "late", final=False, attempt=1) is False
    assert job_log.complete(job.id, {"ok": True}, attempt=2) is True


def test_only_one_of_concurrent_claims_wins(job_log: JobLog, make_job: MakeJob) -> None:
    job_log.insert(job := make_job())
    start = threading.Barrier(6)

    def claim(retried: int) -> Job | None:
        start.wait()
        return _claim(job_log, job.id, retried=retried)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(claim, range(6)))
    assert sum(result is not None for result in results) == 1
    assert [a.number for a in job_log.get(job.id).history] == [1]


def test_complete_records_the_result_once(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    _claim(job_log, job.id)
    done_at = clock.advance(2)
    assert job_log.complete(job.id, {"matched": 3}) is True
    done = job_log.get(job.id)
    assert (done.state, done.result, done.finished_at) == (
        JobState.COMPLETED,
        {"matched": 3},
        done_at,
    )
    assert [(a.outcome, a.finished_at) for a in done.history] == [("completed", done_at)]
    clock.advance(1)
    assert job_log.complete(job.id, {"matched": 4}) is False
    assert _claim(job_log, job.id, retried=1) is None  # a late delivery after completion
    assert job_log.attempt_failed(job.id, "late", final=True) is False
    assert job_log.get(job.id) == done

    job_log.insert(skipped := make_job())
    _claim(job_log, skipped.id)
    assert job_log.complete(skipped.id, {"skipped": "documents complete"}, skipped=True)
    assert [a.outcome for a in job_log.get(skipped.id).history] == ["skipped"]


def test_failed_attempts_retry_then_fail_and_the_callback_records_the_dlq_id(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job(max_retries=1))
    _claim(job_log, job.id, retried=0)
    assert job_log.attempt_failed(job.id, "HTTP 503 from zillow", final=False) is True
    retrying = job_log.get(job.id)
    assert (retrying.state, retrying.error, retrying.finished_at) == (
        JobState.RETRYING,
        "HTTP 503 from zillow",
        None,
    )
    clock.advance(12)
    assert _claim(job_log, job.id, retried=1) is not None
    failed_at = clock.advance(1)
    assert job_log.attempt_failed(job.id, "HTTP 500 from zillow", final=True) is True
    failed = job_log.get(job.id)
    assert (failed.state, failed.finished_at, failed.dlq_id) == (JobState.FAILED, failed_at, None)
    assert [(a.number, a.outcome, a.error) for a in failed.history] == [
        (1, "retry", "HTTP 503 from zillow"),
        (2, "failed", "HTTP 500 from zillow"),
    ]
    clock.advance(1)
    assert job_log.mark_failed(job.id, "dlq_1") is True
    recorded = job_log.get(job.id)
    assert recorded == replace(failed, dlq_id="dlq_1")  # the error and finish time are kept
    assert job_log.mark_failed(job.id, "dlq_2", "again") is False
    assert job_log.get(job.id) == recorded


def test_the_failure_callback_fails_a_job_mid_attempt(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    _claim(job_log, job.id)
    at = clock.advance(1)
    assert job_log.mark_failed(job.id, "dlq_9", "callback: retries exhausted") is True
    failed = job_log.get(job.id)
    assert (failed.state, failed.dlq_id, failed.error, failed.finished_at) == (
        JobState.FAILED,
        "dlq_9",
        "callback: retries exhausted",
        at,
    )
    assert [(a.outcome, a.finished_at) for a in failed.history] == [("failed", at)]
    assert job_log.complete(job.id, {}) is False  # the worker finishing late changes nothing


def test_cancel(job_log: JobLog, make_job: MakeJob, clock: FakeClock) -> None:
    job_log.insert(job := make_job())
    at = clock.advance(1)
    cancelled = job_log.cancel(job.id)
    assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, at)
    assert job_log.get(job.id) == cancelled
    assert _claim(job_log, job.id) is None
    with pytest.raises(InvalidState):
        job_log.cancel(job.id)
    with pytest.raises(JobNotFound):
        job_log.cancel(uuid.uuid4())
    assert job_log.get(job.id) == cancelled


def test_requeue_failed_sends_the_job_round_again(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    job_log.mark_published(job.id, "msg_first")
    _claim(job_log, job.id)
    job_log.attempt_failed(job.id, "boom", final=True)
    job_log.mark_failed(job.id, "dlq_1")
    at = clock.advance(60)
    requeued = job_log.requeue_failed(job.id)
    assert requeued.state is JobState.PENDING
    assert (requeued.dlq_id, requeued.qstash_message_id, requeued.published_at) == (
        None,
        None,
        None,
    )
    assert requeued.finished_at is None
    assert requeued.error == "boom"  # the last error stays until a run succeeds
    assert [job.id for job in job_log.unpublished(10)] == [job.id]
    with pytest.raises(InvalidState):
        job_log.requeue_failed(job.id)
    job_log.mark_published(job.id, "msg_second")
    again = _claim(job_log, job.id, retried=0)
    assert again is not None
    assert [a.number for a in again.history] == [1, 2]
    assert again.history[1].started_at == at
    with pytest.raises(JobNotFound):
        job_log.requeue_failed(uuid.uuid4())


# Which state each operation may move a job out of; everything else must be refused and leave
# the row as it was. Written out here rather than derived from jobs.TRANSITIONS, so a change
# to either side shows up as a failure.
ALLOWED_FROM: dict[str, set[JobState]] = {
    "claim": {JobState.PENDING, JobState.RETRYING},  # processing: only with an expired lease
    "complete": {JobState.PROCESSING},
    "retry": {JobState.PROCESSING},
    "fail": {JobState.PROCESSING},
    "dead-letter": {JobState.PENDING, JobState.PROCESSING, JobState.RETRYING},
    "cancel": {JobState.PENDING, JobState.RETRYING},
    "requeue": {JobState.FAILED},
}
RESULTING_STATE = {
    "claim": JobState.PROCESSING,
    "complete": JobState.COMPLETED,
    "retry": JobState.RETRYING,
    "fail": JobState.FAILED,
    "dead-letter": JobState.FAILED,
    "cancel": JobState.CANCELLED,
    "requeue": JobState.PENDING,
}


def _job_in(job_log: JobLog, make_job: MakeJob, state: JobState) -> uuid.UUID:
    job_log.insert(job := make_job())
    if state is JobState.CANCELLED:
        job_log.cancel(job.id)
    if state in (JobState.PROCESSING, JobState.RETRYING, JobState.COMPLETED, JobState.FAILED):
        _claim(job_log, job.id)
    if state is JobState.RETRYING:
        job_log.attempt_failed(job.id, "transient", final=False)
    if state is JobState.COMPLETED:
        job_log.complete(job.id, {"done": True})
    if state is JobState.FAILED:
        job_log.mark_failed(job.id, f"dlq_{job.id}", "exhausted")
    assert job_log.get(job.id).state is state
    return job.id


def _apply(job_log: JobLog, operation: str, job_id: uuid.UUID) -> bool:
    if operation == "claim":
        return _claim(job_log, job_id, retried=7) is not None
    if operation == "complete":
        return job_log.complete(job_id, {"x": 1})
    if operation in ("retry", "fail"):
        return job_log.attempt_failed(job_id, "err", final=operation == "fail")
    if operation == "dead-letter":
        return job_log.mark_failed(job_id, "dlq_other", "callback")
    try:
        if operation == "cancel":
            job_log.cancel(job_id)
        else:
            job_log.requeue_failed(job_id)
    except InvalidState:
        return False
    return True


def test_each_transition_applies_only_from_its_states(job_log: JobLog, make_job: MakeJob) -> None:
    wrong: list[str] = []
    for operation in ALLOWED_FROM:
        for state in JobState:
            job_id = _job_in(job_log, make_job, state)
            before = job_log.get(job_id)
            applied = _apply(job_log, operation, job_id)
            after = job_log.get(job_id)
            if state in ALLOWED_FROM[operation]:
                if not applied or after.state is not RESULTING_STATE[operation]:
                    wrong.append(f"{operation} from {state}: refused or wrong target {after.state}")
            elif applied or after != before:
                wrong.append(f"{operation} from {state}: applied={applied}, row changed")
    assert wrong == []


# -- schedules -------------------------------------------------------------------------------


def _schedule(**fields: Any) -> Schedule:
    values: dict[str, Any] = {
        "id": "nightly-match",
        "cron": "0 9 * * *",
        "time_zone": "America/New_York",
        "type": JobType.CRM_MATCH,
        "payload": {"listingId": "L1", "agentId": "A1"},
        "retries": 2,
        "timeout": timedelta(seconds=30),
        "created_at": START,
        "updated_at": START,
    }
    values.update(fields)
    return Schedule(**values)


def test_schedules_create_update_pause_and_delete(job_log: JobLog, clock: FakeClock) -> None:
    schedules = job_log.schedules
    created = schedules.save(_schedule(qstash_schedule_id="scd_1"))
    assert created == _schedule(qstash_schedule_id="scd_1")
    assert schedules.get("nightly-match") == created

    at = clock.advance(10)
    updated = schedules.save(
        _schedule(cron="30 8 * * 1-5", time_zone=None, created_at=at, updated_at=at)
    )
    assert (updated.cron, updated.time_zone, updated.created_at, updated.updated_at) == (
        "30 8 * * 1-5",
        None,
        START,
        at,
    )
    assert updated.qstash_schedule_id == "scd_1"  # kept: the update named none

    assert schedules.set_paused("nightly-match", True).paused is True
    assert schedules.get("nightly-match").paused is True
    assert schedules.set_paused("nightly-match", False).paused is False
    assert schedules.set_qstash_schedule_id("nightly-match", "scd_2").qstash_schedule_id == "scd_2"
    fired = clock.advance(5)
    assert schedules.record_run("nightly-match", fired).last_run_at == fired

    deleted = schedules.delete("nightly-match")
    assert deleted.id == "nightly-match"
    for operation in (
        lambda: schedules.get("nightly-match"),
        lambda: schedules.delete("nightly-match"),
        lambda: schedules.set_paused("nightly-match", True),
        lambda: schedules.record_run("nightly-match", fired),
    ):
        with pytest.raises(ScheduleNotFound):
            operation()


def test_schedules_refuse_a_qstash_id_of_another_schedule(job_log: JobLog) -> None:
    job_log.schedules.save(_schedule(id="a", qstash_schedule_id="scd_1"))
    with pytest.raises(AlreadyExists):
        job_log.schedules.save(_schedule(id="b", qstash_schedule_id="scd_1"))
    assert [s.id for s in job_log.schedules.list()[0]] == ["a"]


def test_schedules_list_pages(job_log: JobLog) -> None:
    ids = [f"schedule-{i:02}" for i in range(7)]
    for schedule_id in reversed(ids):
        job_log.schedules.save(_schedule(id=schedule_id))
    seen: list[str] = []
    token: str | None = None
    while True:
        page, token = job_log.schedules.list(page_size=3, page_token=token)
        seen.extend(schedule.id for schedule in page)
        if token is None:
            break
    assert seen == ids


# -- driver errors ---------------------------------------------------------------------------


def test_an_unreachable_database_is_storage_unavailable(make_job: MakeJob) -> None:
    engine = create_database_engine("postgresql://root@127.0.0.1:1/jobs")
    job_log = JobLog(engine)
    try:
        with pytest.raises(StorageUnavailable) as raised:
            job_log.insert(make_job())
        assert isinstance(raised.value.__cause__, SQLAlchemyError)
        assert raised.value.reason == "STORAGE_UNAVAILABLE"
        with pytest.raises(StorageUnavailable):
            job_log.get(uuid.uuid4())
    finally:
        engine.dispose()


# -- re-drives --------------------------------------------------------------------------------


def _redrive(job_log: JobLog, job_id: uuid.UUID, message_id: str, due: datetime) -> Job | None:
    return job_log.redrive(
        job_id, qstash_message_id=message_id, max_redrives=2, not_before=due, detail=message_id
    )


def test_a_redrive_republishes_a_job_for_its_current_message_only_and_is_bounded(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock
) -> None:
    job_log.insert(job := make_job())
    assert job_log.mark_published(job.id, "msg_1")
    due = clock.now + timedelta(seconds=10)
    assert _redrive(job_log, job.id, "msg_other", due) is None  # not its message

    first = _redrive(job_log, job.id, "msg_1", due)
    assert first is not None
    assert (first.state, first.redrives, first.qstash_message_id) == (JobState.PENDING, 1, None)
    assert (first.published_at, first.not_before, first.attempts) == (None, due, 0)
    assert [j.id for j in job_log.unpublished(10, clock.now)] == [job.id]  # the relay's again
    assert _redrive(job_log, job.id, "msg_1", due) is None  # a repeated callback: once only
    assert deduplication_id_for(first) != deduplication_id_for(job)

    # Retrying (its last deliveries never reached a handler): re-driven too, up to the bound.
    assert job_log.mark_published(job.id, "msg_2")
    assert _claim(job_log, job.id) is not None
    assert job_log.attempt_failed(job.id, "transient", final=False)
    clock.advance(1)
    second = _redrive(job_log, job.id, "msg_2", due)
    assert second is not None
    assert (second.state, second.redrives, second.attempts) == (JobState.PENDING, 2, 1)
    assert job_log.mark_published(job.id, "msg_3")
    assert _redrive(job_log, job.id, "msg_3", due) is None  # max_redrives reached

    # Published, but its message id never recorded (the publisher stopped in between): the
    # given-up message re-drives it once.
    job_log.insert(unrecorded := make_job())
    assert _redrive(job_log, unrecorded.id, "msg_unrecorded", due) is not None
    assert _redrive(job_log, unrecorded.id, "msg_unrecorded", due) is None

    events = job_log.get(job.id).events
    assert [(e.kind, e.qstash_message_id, e.detail) for e in events] == [
        (REDRIVEN, "msg_1", "msg_1"),
        (REDRIVEN, "msg_2", "msg_2"),
    ]
    assert events[1].at == clock.now
    assert job_log.list(page_size=10)[0][0].events == []  # lists leave them out


@pytest.mark.parametrize("state", [JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED])
def test_a_redrive_leaves_running_and_finished_jobs_alone(
    job_log: JobLog, make_job: MakeJob, clock: FakeClock, state: JobState
) -> None:
    job_id = _job_in(job_log, make_job, state)
    before = job_log.get(job_id)
    assert before.qstash_message_id is not None
    assert _redrive(job_log, job_id, before.qstash_message_id, clock.now) is None
    assert job_log.get(job_id) == before
