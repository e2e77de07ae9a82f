"""Enqueue's background half: grouped inserts share transactions, the publisher hands jobs to
the real local QStash server in batches and records their message ids, and what the broker
does not take stays in the outbox for the relay."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from jobsvc.broker import Delivery, QStashBroker, SidecarUrls
from jobsvc.db import JobLog, utc_now
from jobsvc.errors import AlreadyExists
from jobsvc.jobs import Job, JobState, JobType
from jobsvc.localqstash import LocalQStashServer
from jobsvc.payloads import CrmMatch
from jobsvc.service.inserts import GroupedInserts
from jobsvc.service.jobs import EnqueueRequest, JobService
from jobsvc.service.publisher import Publisher
from tests.receiver import Receiver


class CountingBroker(QStashBroker):
    """The real SDK broker, recording the size of each batch it sends."""

    def __init__(self, *, token: str, base_url: str) -> None:
        super().__init__(token=token, base_url=base_url)
        self.batches: list[int] = []

    async def publish_batch(self, deliveries: Sequence[Delivery]) -> list[str]:
        self.batches.append(len(deliveries))
        return await super().publish_batch(deliveries)


@pytest.fixture
async def broker(server: LocalQStashServer) -> AsyncIterator[CountingBroker]:
    broker = CountingBroker(token=server.user.token, base_url=server.url)
    yield broker
    await broker.aclose()


@pytest.fixture
async def service(
    job_log: JobLog, broker: CountingBroker, receiver: Receiver
) -> AsyncIterator[JobService]:
    service = JobService(
        job_log=job_log,
        broker=broker,
        urls=SidecarUrls(public_url=receiver.url),
        handler_timeout=timedelta(seconds=30),
        clock=utc_now,
    )
    yield service
    await service.aclose()


def _request(n: int) -> EnqueueRequest:
    return EnqueueRequest(payload=CrmMatch(listing_id=f"L{n}", agent_id="A1"))


async def test_concurrent_enqueues_are_published_in_batches(
    service: JobService, broker: CountingBroker, receiver: Receiver
) -> None:
    answers = await asyncio.gather(*(service.enqueue(_request(n)) for n in range(300)))
    jobs = [job for job, _ in answers]
    assert len({job.id for job in jobs}) == 300
    assert service.publisher is not None
    await service.publisher.flush()
    # Every job went out exactly once, most of them sharing a request with others.
    assert sum(broker.batches) == 300
    assert len(broker.batches) < 300
    assert max(broker.batches) > 1
    deliveries = await receiver.wait_for_async(300, path="/api/jobs/crm-match")
    delivered = {json.loads(d.body)["jobId"]: d.header("Upstash-Message-Id") for d in deliveries}
    assert delivered.keys() == {str(job.id) for job in jobs}
    for job in jobs:
        stored = await service.get(job.id)
        assert stored.published_at is not None
        assert stored.qstash_message_id == delivered[str(job.id)]


async def test_enqueue_batch_goes_out_as_one_request(
    service: JobService, broker: CountingBroker, receiver: Receiver
) -> None:
    answers = await service.enqueue_batch([_request(n) for n in range(100)])
    assert service.publisher is not None
    await service.publisher.flush()
    assert broker.batches == [100]
    await receiver.wait_for_async(100, path="/api/jobs/crm-match")
    stored = [await service.get(job.id) for job, _ in answers]
    assert len({job.qstash_message_id for job in stored}) == 100


async def test_a_refused_entry_does_not_hold_back_the_rest_of_its_batch(
    job_log: JobLog, broker: CountingBroker, receiver: Receiver
) -> None:
    urls = SidecarUrls(public_url=receiver.url)
    now = utc_now()
    jobs = [
        Job(id=uuid.uuid4(), type=JobType.CRM_MATCH, payload={"n": n}, created_at=now)
        for n in range(5)
    ]
    job_log.insert_many(jobs, next_publish_at=now + timedelta(seconds=10))
    bad = jobs[2].id

    def delivery(job: Job) -> Delivery:
        plain = Delivery.for_job(job, urls=urls)
        # More retries than the server's plan allows: it answers 412 to the whole batch.
        return replace(plain, retries=99) if job.id == bad else plain

    publisher = Publisher(job_log=job_log, broker=broker, delivery=delivery, clock=utc_now)
    publisher.submit(jobs)
    await publisher.aclose()
    assert broker.batches[0] == 5  # refused as a whole, then sent one by one
    await receiver.wait_for_async(4, path="/api/jobs/crm-match")
    for job in jobs:
        stored = job_log.get(job.id)
        if job.id == bad:
            assert stored.published_at is None
            assert stored.publish_attempts == 1  # the relay tries it again after its backoff
        else:
            assert stored.published_at is not None
            assert stored.qstash_message_id is not None


async def test_jobs_the_broker_cannot_take_stay_in_the_outbox(
    job_log: JobLog, server: LocalQStashServer, receiver: Receiver
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = QStashBroker(token=server.user.token, base_url=f"http://127.0.0.1:{closed}")
    service = JobService(
        job_log=job_log,
        broker=down,
        urls=SidecarUrls(public_url=receiver.url),
        handler_timeout=timedelta(seconds=30),
        clock=utc_now,
    )
    try:
        answers = await asyncio.gather(*(service.enqueue(_request(n)) for n in range(20)))
        assert service.publisher is not None
        await service.publisher.flush()
        before = utc_now()
        for job, _ in answers:
            stored = job_log.get(job.id)
            assert stored.state is JobState.PENDING
            assert stored.published_at is None
            assert stored.publish_attempts == 1
        assert receiver.deliveries() == []
        # Due for the relay after its first backoff, not after the grace of an own publish.
        assert job_log.unpublished(100, now=before) == []
        due = job_log.unpublished(100, now=before + timedelta(seconds=2))
        assert {job.id for job in due} == {job.id for job, _ in answers}
    finally:
        await service.aclose()
        await down.aclose()


async def test_grouped_inserts_share_transactions(job_log: JobLog) -> None:
    groups: list[int] = []

    def insert_many(jobs: Sequence[Job], at: datetime | None) -> list[Job]:
        groups.append(len(jobs))
        return job_log.insert_many(jobs, next_publish_at=at)

    inserts = GroupedInserts(insert_many, next_publish_at=utc_now)
    now = utc_now()
    jobs = [
        Job(id=uuid.uuid4(), type=JobType.CRM_MATCH, payload={"n": n}, created_at=now)
        for n in range(200)
    ]
    stored = await asyncio.gather(*(inserts.insert(job) for job in jobs))
    assert [job.id for job in stored] == [job.id for job in jobs]
    assert sum(groups) == 200
    assert len(groups) < 200
    listed, _ = job_log.list(page_size=1000)
    assert {job.id for job in listed} == {job.id for job in jobs}


async def test_a_failed_group_fails_every_caller_and_stores_nothing(job_log: JobLog) -> None:
    inserts = GroupedInserts(
        lambda jobs, at: job_log.insert_many(jobs, next_publish_at=at), next_publish_at=utc_now
    )
    now = utc_now()
    jobs = [
        Job(id=uuid.uuid4(), type=JobType.CRM_MATCH, payload={"n": n}, created_at=now)
        for n in range(10)
    ]
    job_log.insert(jobs[3])  # one of the group collides with a stored job
    results = await asyncio.gather(*(inserts.insert(job) for job in jobs), return_exceptions=True)
    assert all(isinstance(result, AlreadyExists) for result in results)
    listed, _ = job_log.list(page_size=1000)
    assert [job.id for job in listed] == [jobs[3].id]
