"""The JobService use cases against the real job log and the real local QStash server: the row
is committed before the publish, the relay publishes what the broker could not take."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from jobsvc.broker import QStashBroker, SidecarUrls
from jobsvc.db import JobLog, utc_now
from jobsvc.errors import InvalidArgument, InvalidState
from jobsvc.jobs import EnqueueOptions, JobState, JobType
from jobsvc.localqstash import LocalQStashServer
from jobsvc.payloads import CrmMatch, SyndicateListing
from jobsvc.service.jobs import EnqueueRequest, JobService
from jobsvc.service.relay import Relay
from tests.receiver import Receiver


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def broker(server: LocalQStashServer) -> AsyncIterator[QStashBroker]:
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    yield broker
    await broker.aclose()


_made: list[JobService] = []


@pytest.fixture(autouse=True)
async def _close_services() -> AsyncIterator[None]:
    yield
    while _made:
        await _made.pop().aclose()


def _service(job_log: JobLog, broker: QStashBroker, receiver: Receiver) -> JobService:
    service = JobService(
        job_log=job_log,
        broker=broker,
        urls=SidecarUrls(public_url=receiver.url),
        handler_timeout=timedelta(seconds=30),
        clock=utc_now,
    )
    _made.append(service)
    return service


async def test_enqueue_stores_then_publishes(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    job, deduplicated = await service.enqueue(
        EnqueueRequest(payload=CrmMatch(listing_id="L1", agent_id="A1"))
    )
    assert deduplicated is False
    assert job.state is JobState.PENDING
    # Committed before Enqueue returned; the publisher hands it over in the background.
    assert (await service.get(job.id)).state is JobState.PENDING
    [delivery] = await receiver.wait_for_async(1, path="/api/jobs/crm-match")
    assert delivery.signature_ok, delivery.signature_error
    envelope = json.loads(delivery.body)
    assert envelope["jobId"] == str(job.id)
    assert envelope["payload"] == {"listingId": "L1", "agentId": "A1"}
    assert service.publisher is not None
    await service.publisher.flush()
    stored = await service.get(job.id)
    assert stored.qstash_message_id == delivery.header("Upstash-Message-Id")
    assert stored.published_at is not None


async def test_deduplication_id_returns_the_same_job_and_publishes_once(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    request = EnqueueRequest(
        payload=SyndicateListing(listing_id="L9"),
        options=EnqueueOptions(deduplication_id="listing-L9-created"),
    )
    first, first_dup = await service.enqueue(request)
    second, second_dup = await service.enqueue(request)
    assert (first_dup, second_dup) == (False, True)
    assert second.id == first.id
    await receiver.wait_for_async(1, path="/api/jobs/syndicate-listing")
    jobs, _ = await service.list_jobs(types=[JobType.SYNDICATE_LISTING])
    assert [j.id for j in jobs] == [first.id]


async def test_bad_options_write_nothing(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    with pytest.raises(InvalidArgument) as caught:
        await service.enqueue(
            EnqueueRequest(
                payload=CrmMatch(listing_id="L1", agent_id="A1"),
                options=EnqueueOptions(delay=timedelta(seconds=-1), retries=99),
            )
        )
    assert {v.field for v in caught.value.violations} == {"delay", "retries"}
    with pytest.raises(InvalidArgument) as batch:
        await service.enqueue_batch(
            [
                EnqueueRequest(payload=CrmMatch(listing_id="L1", agent_id="A1")),
                EnqueueRequest(
                    payload=CrmMatch(listing_id="L2", agent_id="A2"),
                    options=EnqueueOptions(retries=-1),
                ),
            ]
        )
    assert [v.field for v in batch.value.violations] == ["requests[1].retries"]
    assert (await service.list_jobs())[0] == []


async def test_broker_down_keeps_the_job_and_the_relay_publishes_it(
    engine: Engine, job_log: JobLog, server: LocalQStashServer, receiver: Receiver
) -> None:
    down = QStashBroker(token=server.user.token, base_url=f"http://127.0.0.1:{_closed_port()}")
    up = QStashBroker(token=server.user.token, base_url=server.url)
    try:
        failing = _service(job_log, down, receiver)
        job, _ = await failing.enqueue(
            EnqueueRequest(payload=CrmMatch(listing_id="L1", agent_id="A1"))
        )
        assert failing.publisher is not None
        await failing.publisher.flush()
        stored = job_log.get(job.id)
        assert stored.state is JobState.PENDING
        assert stored.published_at is None
        assert stored.publish_attempts == 1  # counted, and due again after the first backoff
        assert receiver.deliveries() == []

        # The relay leaves Enqueue's own publish a grace period; a minute later it is due.
        def later() -> datetime:
            return utc_now() + timedelta(minutes=1)

        relay_service = _service(JobLog(engine, clock=later), up, receiver)
        relay = Relay(service=relay_service, interval=timedelta(seconds=1), clock=later)
        assert await relay.run_once() == 1
        assert await relay.run_once() == 0  # published: it left the outbox
        [delivery] = await receiver.wait_for_async(1, path="/api/jobs/crm-match")
        assert json.loads(delivery.body)["jobId"] == str(job.id)
        assert job_log.get(job.id).published_at is not None
    finally:
        await down.aclose()
        await up.aclose()


async def test_cancel_and_retry_guards(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    job, _ = await service.enqueue(
        EnqueueRequest(
            payload=CrmMatch(listing_id="L1", agent_id="A1"),
            options=EnqueueOptions(delay=timedelta(hours=1)),
        )
    )
    cancelled = await service.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    with pytest.raises(InvalidState):
        await service.cancel(job.id)
    with pytest.raises(InvalidState):
        await service.retry(job.id)


async def test_retry_redrives_a_failed_job_with_a_new_message(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    job, _ = await service.enqueue(EnqueueRequest(payload=CrmMatch(listing_id="L", agent_id="A")))
    [first] = await receiver.wait_for_async(1, path="/api/jobs/crm-match")
    assert job_log.mark_failed(job.id, "dlq-1", "gave up")
    retried = await service.retry(job.id)
    assert retried.state is JobState.PENDING
    deliveries = await receiver.wait_for_async(2, path="/api/jobs/crm-match")
    assert deliveries[1].header("Upstash-Message-Id") != first.header("Upstash-Message-Id")
    assert json.loads(deliveries[1].body)["jobId"] == str(job.id)


async def test_schedules_are_created_paused_resumed_and_deleted(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver, server: LocalQStashServer
) -> None:
    service = _service(job_log, broker, receiver)
    schedule = await service.schedule(
        payload=CrmMatch(listing_id="L1", agent_id="A1"),
        cron="0 9 * * *",
        time_zone="Europe/Berlin",
        schedule_id="daily-match",
        retries=2,
        handler_timeout=None,
    )
    assert schedule.id == "daily-match"
    assert (await service.get_schedule("daily-match")).cron == "0 9 * * *"
    paused = await service.pause_schedule("daily-match")
    assert paused.paused is True
    assert (await service.resume_schedule("daily-match")).paused is False
    listed, _ = await service.list_schedules()
    assert [s.id for s in listed] == ["daily-match"]
    await service.delete_schedule("daily-match")
    assert (await service.list_schedules())[0] == []


async def test_watch_streams_until_final(
    job_log: JobLog, broker: QStashBroker, receiver: Receiver
) -> None:
    service = _service(job_log, broker, receiver)
    job, _ = await service.enqueue(
        EnqueueRequest(
            payload=CrmMatch(listing_id="L1", agent_id="A1"),
            options=EnqueueOptions(delay=timedelta(hours=1)),
        )
    )
    seen: list[JobState] = []
    async for update in service.watch(job.id):
        seen.append(update.state)
        if len(seen) == 1:
            await service.cancel(job.id)
    assert seen == [JobState.PENDING, JobState.CANCELLED]
