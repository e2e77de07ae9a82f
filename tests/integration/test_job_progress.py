"""A job's progress notes in the job log, on SQLite and PostgreSQL: recorded and replaced by key,
read back, tied to their job, and refusals forgotten when an operator re-drives it."""

from __future__ import annotations

import uuid

import pytest

from jobsvc.db import JobLog, utc_now
from jobsvc.errors import JobNotFound
from jobsvc.jobs import Job, JobState, JobType
from jobsvc.service.progress import JobProgress


def stored(job_log: JobLog) -> Job:
    job = Job(id=uuid.uuid4(), type=JobType.CRM_MATCH, payload={"n": 1}, created_at=utc_now())
    job_log.insert(job)
    return job


async def test_notes_are_recorded_replaced_and_read_back(job_log: JobLog) -> None:
    job, other = stored(job_log), stored(job_log)
    progress = JobProgress(job_log.progress, job.id)
    assert await progress.get("email") is None
    assert await progress.all() == {}
    await progress.record("email", {"status": "failed", "error": "451"})
    await progress.record("email", {"status": "sent", "id": "<m@x>"})
    await progress.record("platform:zillow", {"status": "published", "listingId": "z1"})
    await JobProgress(job_log.progress, other.id).record("email", {"status": "sent"})
    assert await progress.get("email") == {"status": "sent", "id": "<m@x>"}
    assert await progress.all() == {
        "email": {"status": "sent", "id": "<m@x>"},
        "platform:zillow": {"status": "published", "listingId": "z1"},
    }


async def test_a_note_needs_its_job(job_log: JobLog) -> None:
    with pytest.raises(JobNotFound):
        await JobProgress(job_log.progress, uuid.uuid4()).record("email", {"status": "sent"})
    with pytest.raises(ValueError, match="1 to 200"):
        job_log.progress.record(stored(job_log).id, "", {"status": "sent"})


async def test_an_operators_retry_forgets_refusals_and_keeps_what_was_done(
    job_log: JobLog,
) -> None:
    job = stored(job_log)
    progress = JobProgress(job_log.progress, job.id)
    await progress.record("platform:zillow", {"status": "published", "listingId": "z1"})
    await progress.record("platform:facebook", {"status": "rejected", "error": "bad price"})
    assert job_log.claim(job.id, qstash_message_id="m1", retried=0, lease_seconds=30)
    assert job_log.attempt_failed(job.id, "every platform rejected it", final=True)
    requeued = job_log.requeue_failed(job.id)
    assert requeued.state is JobState.PENDING
    assert await progress.all() == {"platform:zillow": {"status": "published", "listingId": "z1"}}
