"""End to end through the real composed service (``jobsvc.runtime.running``): the gRPC server, the
Starlette sidecar, the relay and the embedded local QStash server, each on a real port, over
SQLite and PostgreSQL. Calls go through a real ``grpc.aio`` channel with the generated stub;
QStash delivers over HTTP to the sidecar, which runs the test's handlers.

The local QStash server runs at ``time_scale`` 0.001 unless a test says otherwise: its retry
backoff (12 s, 148 s, ...) takes 12 ms, 148 ms, and a ``* * * * *`` schedule fires every 60 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qstash import AsyncQStash
from qstash.log import LogState

from jobsvc.broker import Envelope, LocalQStashBroker
from jobsvc.db.transitions import LEASE_EXPIRED
from jobsvc.handlers import HandlerContext, HandlerRegistry, PermanentFailure
from jobsvc.jobs import Attempt, Job, JobState, JobType
from jobsvc.localqstash import LocalQStashSettings
from jobsvc.localqstash.signing import new_signing_key, sign
from jobsvc.localqstash.users import DEV_USERS
from jobsvc.payloads import CrmMatch, SendNotification, SendReminder, SyndicateListing
from jobsvc.runtime import Parts, running
from jobsvc.service.jobs import passed_through
from jobsvc.settings import BrokerKind, Settings
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, payloads_pb2
from tests.polling import eventually

T = TypeVar("T")
PENDING = jobs_pb2.JOB_STATE_PENDING
PROCESSING = jobs_pb2.JOB_STATE_PROCESSING
RETRYING = jobs_pb2.JOB_STATE_RETRYING
COMPLETED = jobs_pb2.JOB_STATE_COMPLETED
FAILED = jobs_pb2.JOB_STATE_FAILED
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED


# -- the handlers the tests script ----------------------------------------------------------------


@dataclass
class Call:
    key: str
    job_id: uuid.UUID
    attempt: int
    at: float  # time.monotonic()


@dataclass
class Script:
    """Handlers for the four job types, steered per key (a crm-match or syndicate-listing job's
    listing id, a reminder's applicant id, a notification's recipient id)."""

    calls: list[Call] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # key -> failures still to come
    failing: set[str] = field(default_factory=set)  # fail until removed
    permanent: set[str] = field(default_factory=set)
    sleeps: dict[str, list[float]] = field(default_factory=dict)  # key -> one sleep per call

    def of(self, key: str) -> list[Call]:
        return [call for call in self.calls if call.key == key]

    async def run(self, key: str, ctx: HandlerContext) -> dict[str, Any]:
        self.calls.append(Call(key, ctx.job_id, ctx.attempt, time.monotonic()))
        if self.sleeps.get(key):
            await asyncio.sleep(self.sleeps[key].pop(0))
        if key in self.permanent:
            raise PermanentFailure(f"{key} cannot be done")
        if key in self.failing or self.failures.get(key, 0) > 0:
            if key not in self.failing:
                self.failures[key] -= 1
            raise RuntimeError(f"{key} failed on attempt {ctx.attempt}")
        return {"handled": key, "attempt": ctx.attempt}

    def registry(self) -> HandlerRegistry:
        async def crm(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
            return await self.run(payload.listing_id, ctx)

        async def syndication(payload: SyndicateListing, ctx: HandlerContext) -> dict[str, Any]:
            return await self.run(payload.listing_id, ctx)

        async def reminder(payload: SendReminder, ctx: HandlerContext) -> dict[str, Any]:
            return await self.run(payload.applicant_id, ctx)

        async def notification(payload: SendNotification, ctx: HandlerContext) -> dict[str, Any]:
            return await self.run(payload.recipient_id, ctx)

        registry = HandlerRegistry()
        registry.register(CrmMatch, crm)
        registry.register(SyndicateListing, syndication)
        registry.register(SendReminder, reminder)
        registry.register(SendNotification, notification)
        return registry


# -- the running service --------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now (another process could take it before us: a small race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    parts: Parts
    stub: job_service_pb2_grpc.JobServiceStub
    channel: grpc.aio.Channel
    script: Script

    @property
    def sidecar_url(self) -> str:
        return self.parts.settings.sidecar_url

    def signing_keys(self) -> tuple[str, str]:
        broker = self.parts.broker
        assert isinstance(broker, LocalQStashBroker)
        env = broker.server.env()
        return env["QSTASH_CURRENT_SIGNING_KEY"], env["QSTASH_NEXT_SIGNING_KEY"]

    async def status(self, job_id: str) -> jobs_pb2.Job:
        return (await self.stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job

    async def jobs(self, **filters: Any) -> list[jobs_pb2.Job]:
        return list((await self.stub.ListJobs(pb.ListJobsRequest(page_size=1000, **filters))).jobs)

    async def until(
        self,
        job_id: str,
        done: Callable[[jobs_pb2.Job], bool],
        what: str,
        timeout: float = 10,  # noqa: ASYNC109
    ) -> jobs_pb2.Job:
        async def check() -> jobs_pb2.Job | None:
            job = await self.status(job_id)
            return job if done(job) else None

        return await eventually(check, timeout=timeout, what=what)


def settings_for(database_url: str, *, time_scale: float = 0.001, **overrides: Any) -> Settings:
    port = free_port()
    values: dict[str, Any] = {
        "database_url": database_url,
        "grpc_port": 0,
        "sidecar_port": port,
        # Known before anything is published: QStash signs deliveries for this URL.
        "public_url": f"http://127.0.0.1:{port}",
        # The same database as the job log: on PostgreSQL both run on PostgreSQL.
        "local_qstash": LocalQStashSettings(
            port=0, database_url=database_url, time_scale=time_scale
        ),
        "relay_interval": timedelta(milliseconds=50),
        "handler_timeout": timedelta(seconds=5),
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def started(
    settings: Settings, script: Script, *, embed_local_qstash: bool = True
) -> AsyncIterator[Stack]:
    async with running(
        settings,
        rpc=True,
        sidecar=True,
        relay=True,
        embed_local_qstash=embed_local_qstash,
        migrate=True,
        registry=script.registry(),
    ) as parts:
        assert parts.rpc_port is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{parts.rpc_port}")
        try:
            stub: Any = job_service_pb2_grpc.JobServiceStub(channel)
            yield Stack(parts=parts, stub=stub, channel=channel, script=script)
        finally:
            await channel.close()


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def stack(database_url: str, script: Script) -> AsyncIterator[Stack]:
    async with started(settings_for(database_url), script) as stack:
        yield stack


def crm(listing_id: str, **options: Any) -> pb.EnqueueRequest:
    return pb.EnqueueRequest(
        crm_match=payloads_pb2.CrmMatch(listing_id=listing_id, agent_id="A1"), **options
    )


def is_final(job: jobs_pb2.Job) -> bool:
    return job.state in (COMPLETED, FAILED, CANCELLED)


def outcomes(job: jobs_pb2.Job) -> list[str]:
    """Each attempt's outcome, ``retry`` for ATTEMPT_OUTCOME_RETRY."""
    names = jobs_pb2.AttemptOutcome.Name
    return [names(a.outcome).removeprefix("ATTEMPT_OUTCOME_").lower() for a in job.history]


async def post_delivery(
    stack: Stack, job_type: JobType, body: bytes, *, key: str, message_id: str
) -> httpx.Response:
    """POST ``body`` to the sidecar as QStash would, signed with ``key``."""
    url = f"{stack.sidecar_url}/api/jobs/{job_type.value}"
    headers = {
        "Upstash-Signature": sign(key, url=url, body=body),
        "Upstash-Message-Id": message_id,
        "Upstash-Retried": "0",
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, content=body, headers=headers)


# -- the happy path -------------------------------------------------------------------------------


async def test_enqueue_is_delivered_to_its_handler_and_completes(stack: Stack) -> None:
    response = await stack.stub.Enqueue(
        pb.EnqueueRequest(
            syndicate_listing=payloads_pb2.SyndicateListing(
                listing_id="L1", platforms=["zillow", "craigslist"]
            )
        )
    )
    assert response.job.state == PENDING
    job = await stack.until(response.job.id, is_final, "the job to finish")
    assert job.state == COMPLETED
    assert job.attempts == 1
    assert [call.job_id for call in stack.script.of("L1")] == [uuid.UUID(job.id)]
    assert dict(job.result) == {"handled": "L1", "attempt": 1}
    assert job.qstash_message_id.startswith("msg_")
    assert outcomes(job) == ["completed"]
    [attempt] = job.history
    assert attempt.number == 1
    assert attempt.qstash_message_id == job.qstash_message_id
    assert job.HasField("start_time")
    assert job.HasField("finish_time")


async def test_delay_is_honoured(database_url: str, script: Script) -> None:
    # 10 s at time_scale 0.05: delivered 0.5 s (up to 0.55 s: QStash counts whole seconds) on.
    async with started(settings_for(database_url, time_scale=0.05), script) as stack:
        enqueued_at = time.monotonic()
        job = (await stack.stub.Enqueue(crm("late", delay=Duration(seconds=10)))).job
        await asyncio.sleep(0.3)
        assert (await stack.status(job.id)).state == PENDING
        assert script.of("late") == []
        done = await stack.until(job.id, is_final, "the delayed job")
        assert done.state == COMPLETED
        [call] = script.of("late")
        assert call.at - enqueued_at >= 0.45


# -- failures -------------------------------------------------------------------------------------


async def test_failed_attempts_are_retried_until_one_succeeds(stack: Stack) -> None:
    # Attempt 1 raises, attempt 2 outlives its 1 s handler timeout, attempt 3 succeeds.
    stack.script.failures["flaky"] = 1
    stack.script.sleeps["flaky"] = [0, 1.5, 0]
    job = (await stack.stub.Enqueue(crm("flaky", handler_timeout=Duration(seconds=1)))).job
    done = await stack.until(job.id, is_final, "the flaky job")
    assert done.state == COMPLETED
    assert done.attempts == 3
    assert outcomes(done) == ["retry", "retry", "completed"]
    assert "failed on attempt 1" in done.history[0].error
    assert "timed out" in done.history[1].error.lower()
    assert [call.attempt for call in stack.script.of("flaky")] == [1, 2, 3]
    assert dict(done.result) == {"handled": "flaky", "attempt": 3}


async def test_exhausted_retries_dead_letter_the_job_and_retry_job_redrives_it(
    stack: Stack,
) -> None:
    stack.script.failing.add("doomed")
    job = (await stack.stub.Enqueue(crm("doomed", retries=1))).job
    failed = await stack.until(job.id, lambda j: bool(j.dlq_id), "the DLQ id")
    assert failed.state == FAILED
    assert failed.attempts == 2
    assert outcomes(failed) == ["retry", "failed"]
    assert "failed on attempt 2" in failed.last_error

    assert stack.parts.local_qstash_url is not None
    qstash = AsyncQStash(DEV_USERS[0].token, base_url=stack.parts.local_qstash_url)
    try:
        entry = await qstash.dlq.get(failed.dlq_id)
        assert entry.message_id == failed.qstash_message_id
        assert json.loads(entry.body)["jobId"] == job.id

        stack.script.failing.discard("doomed")
        retried = (await stack.stub.RetryJob(pb.RetryJobRequest(job_id=job.id))).job
        assert retried.state == PENDING
        assert retried.dlq_id == ""
        done = await stack.until(job.id, is_final, "the retried job")
        assert done.state == COMPLETED
        assert done.attempts == 3  # the history is kept; numbers continue
        assert outcomes(done) == ["retry", "failed", "completed"]
        assert done.qstash_message_id not in ("", failed.qstash_message_id)
        assert [call.attempt for call in stack.script.of("doomed")] == [1, 2, 3]
    finally:
        await qstash.http._client.aclose()


async def test_a_permanent_failure_is_not_retried(stack: Stack) -> None:
    stack.script.permanent.add("hopeless")
    job = (await stack.stub.Enqueue(crm("hopeless", retries=3))).job
    failed = await stack.until(job.id, lambda j: bool(j.dlq_id), "the DLQ id")
    assert failed.state == FAILED
    assert failed.attempts == 1
    assert outcomes(failed) == ["failed"]
    assert "hopeless cannot be done" in failed.last_error
    await asyncio.sleep(0.3)  # what a retry would need at this time scale, several times over
    assert len(stack.script.of("hopeless")) == 1


# -- schedules ------------------------------------------------------------------------------------


async def test_a_cron_schedule_fires_jobs_and_obeys_pause_resume_and_delete(stack: Stack) -> None:
    created = await stack.stub.Schedule(
        pb.ScheduleRequest(
            cron="* * * * *",
            schedule_id="every-minute",
            crm_match=payloads_pb2.CrmMatch(listing_id="cron", agent_id="A1"),
        )
    )
    assert created.schedule.schedule_id == "every-minute"

    async def fired(at_least: int) -> list[jobs_pb2.Job] | None:
        jobs = await stack.jobs(schedule_id="every-minute")
        return jobs if len(jobs) >= at_least else None

    async def quiet() -> int:
        """The number of firings once none is in flight any more."""
        await asyncio.sleep(0.3)
        count = len(await stack.jobs(schedule_id="every-minute"))
        await asyncio.sleep(0.5)  # eight scaled minutes
        assert len(await stack.jobs(schedule_id="every-minute")) == count
        return count

    jobs = await eventually(lambda: fired(3), timeout=10, what="three firings")
    assert len({job.id for job in jobs}) == len(jobs)  # each firing is its own job
    assert {job.schedule_id for job in jobs} == {"every-minute"}
    assert {job.crm_match.listing_id for job in jobs} == {"cron"}
    done = await stack.until(jobs[-1].id, is_final, "the first firing")
    assert done.state == COMPLETED

    paused = await stack.stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="every-minute"))
    assert paused.schedule.paused
    while_paused = await quiet()

    await stack.stub.ResumeSchedule(pb.ResumeScheduleRequest(schedule_id="every-minute"))
    await eventually(lambda: fired(while_paused + 2), timeout=10, what="firings after resume")

    await stack.stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id="every-minute"))
    after_delete = await quiet()
    assert after_delete >= while_paused + 2
    # Every firing ran its handler once, as a job of its own.
    ran = {call.job_id for call in stack.script.of("cron")}
    assert len(ran) == len(stack.script.of("cron"))
    assert {str(job_id) for job_id in ran} <= {
        job.id for job in await stack.jobs(schedule_id="every-minute")
    }
    assert await stack.jobs(schedule_id="another") == []


# -- deduplication and cancellation ---------------------------------------------------------------


async def test_deduplication_returns_the_same_job_and_runs_it_once(stack: Stack) -> None:
    first = await stack.stub.Enqueue(crm("once", deduplication_id="order-1"))
    second = await stack.stub.Enqueue(crm("other", deduplication_id="order-1"))
    assert (first.deduplicated, second.deduplicated) == (False, True)
    assert second.job.id == first.job.id
    assert second.job.crm_match.listing_id == "once"
    done = await stack.until(first.job.id, is_final, "the job")
    assert done.state == COMPLETED
    again = await stack.stub.Enqueue(crm("once", deduplication_id="order-1"))
    assert (again.deduplicated, again.job.state) == (True, COMPLETED)
    await asyncio.sleep(0.3)
    assert len(stack.script.of("once")) == 1
    assert stack.script.of("other") == []
    assert [job.id for job in await stack.jobs()] == [first.job.id]


async def test_a_job_cancelled_before_its_delivery_never_runs(stack: Stack) -> None:
    # 50 minutes are 3 s at this time scale: cancelled long before (even on a loaded machine),
    # and waited out.
    job = (await stack.stub.Enqueue(crm("cancel-me", delay=Duration(seconds=3000)))).job
    cancelled = (await stack.stub.CancelJob(pb.CancelJobRequest(job_id=job.id))).job
    assert cancelled.state == CANCELLED
    await asyncio.sleep(3.5)
    # A delivery that comes anyway (QStash had already sent it) is acknowledged, not run.
    envelope = Envelope(
        job_type=JobType.CRM_MATCH,
        payload={"listingId": "cancel-me", "agentId": "A1"},
        job_id=uuid.UUID(job.id),
    ).encode()
    late = await post_delivery(
        stack, JobType.CRM_MATCH, envelope, key=stack.signing_keys()[0], message_id="msg_late"
    )
    assert late.status_code == 200
    after = await stack.status(job.id)
    assert (after.state, after.attempts) == (CANCELLED, 0)
    assert stack.script.of("cancel-me") == []


# -- WatchJob -------------------------------------------------------------------------------------


async def test_watch_job_streams_each_state_to_the_end(stack: Stack) -> None:
    stack.script.sleeps["slow"] = [0.3]
    # Due in 2 s (scaled): the watch starts long before, so it sees the job pending.
    job = (await stack.stub.Enqueue(crm("slow", delay=Duration(seconds=2000)))).job
    call = stack.stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    seen = [(m.job.state, m.job.attempts) async for m in call]
    assert seen == [(PENDING, 0), (PROCESSING, 1), (COMPLETED, 1)]
    assert await call.code() == grpc.StatusCode.OK


async def test_watch_job_reports_states_that_fall_between_two_polls(stack: Stack) -> None:
    # Each attempt takes milliseconds and the retry comes 12 ms later: well inside one poll
    # interval (50 ms). The attempt history still shows every state the job went through.
    stack.script.failures["quick"] = 1
    job = (await stack.stub.Enqueue(crm("quick", delay=Duration(seconds=1500)))).job
    call = stack.stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    messages = [m.job async for m in call]
    assert [(m.state, m.attempts) for m in messages] == [
        (PENDING, 0),
        (PROCESSING, 1),
        (RETRYING, 1),
        (PROCESSING, 2),
        (COMPLETED, 2),
    ]
    assert [len(m.history) for m in messages] == [0, 1, 1, 2, 2]
    assert outcomes(messages[1]) == ["unspecified"]  # as it was: still running
    assert outcomes(messages[2]) == ["retry"]
    assert "failed on attempt 1" in messages[2].last_error


# -- what is rejected -----------------------------------------------------------------------------


async def test_bad_payloads_and_bad_signatures_write_nothing(stack: Stack) -> None:
    bad_requests: list[Awaitable[Any]] = [
        stack.stub.Enqueue(pb.EnqueueRequest()),
        stack.stub.Enqueue(
            pb.EnqueueRequest(
                syndicate_listing=payloads_pb2.SyndicateListing(
                    listing_id="L1", platforms=["myspace"]
                )
            )
        ),
        stack.stub.Enqueue(crm("")),
        stack.stub.Enqueue(crm("L1", delay=Duration(seconds=-1))),
        stack.stub.Schedule(
            pb.ScheduleRequest(
                cron="61 * * * *", crm_match=payloads_pb2.CrmMatch(listing_id="L", agent_id="A")
            )
        ),
        stack.stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[crm("ok"), crm("")])),
    ]
    for request in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await request
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A cron firing's body (no job id): accepted, it would create its job row.
    firing = Envelope(
        job_type=JobType.CRM_MATCH, payload={"listingId": "forged", "agentId": "A1"}
    ).encode()
    forged = await post_delivery(
        stack, JobType.CRM_MATCH, firing, key=new_signing_key(), message_id="msg_forged"
    )
    assert forged.status_code == 401
    assert await stack.jobs() == []
    assert not (await stack.stub.ListSchedules(pb.ListSchedulesRequest())).schedules
    assert stack.script.calls == []

    # The same body signed with the server's key is taken: the 401 was the signature's.
    genuine = await post_delivery(
        stack, JobType.CRM_MATCH, firing, key=stack.signing_keys()[1], message_id="msg_genuine"
    )
    assert genuine.status_code == 200
    [job] = await stack.jobs()
    assert job.state == COMPLETED
    assert [call.key for call in stack.script.calls] == ["forged"]


async def test_a_duplicate_delivery_runs_the_handler_once(stack: Stack) -> None:
    # QStash delivers it 3 s on (3000 s at this time scale); the test delivers it first, twice
    # at once and once more, and QStash's own delivery then comes as the fourth. (Had QStash's
    # come while the handler runs, see test_a_dead_lettered_duplicate_message_...)
    stack.script.sleeps["dup"] = [0.15]
    enqueued = (await stack.stub.Enqueue(crm("dup", delay=Duration(seconds=3000)))).job
    # Enqueue answers once the job is stored; its message id comes with the publish after.
    job = await stack.until(enqueued.id, lambda j: j.qstash_message_id != "", "the publish")
    body = Envelope(
        job_type=JobType.CRM_MATCH,
        payload={"listingId": "dup", "agentId": "A1"},
        job_id=uuid.UUID(job.id),
    ).encode()
    key = stack.signing_keys()[0]
    first, second = await asyncio.gather(
        post_delivery(stack, JobType.CRM_MATCH, body, key=key, message_id=job.qstash_message_id),
        post_delivery(stack, JobType.CRM_MATCH, body, key=key, message_id=job.qstash_message_id),
    )
    # One ran it; the other found it running and asks QStash to come back later.
    assert sorted([first.status_code, second.status_code]) == [200, 503]
    again = await post_delivery(
        stack, JobType.CRM_MATCH, body, key=key, message_id=job.qstash_message_id
    )
    assert again.status_code == 200
    assert again.json()["reason"] == "ALREADY_COMPLETED"

    assert stack.parts.local_qstash_url is not None
    qstash = AsyncQStash(DEV_USERS[0].token, base_url=stack.parts.local_qstash_url)
    try:

        async def delivered() -> bool | None:
            logs = await qstash.log.list(filter={"message_id": job.qstash_message_id})
            return True if any(log.state == LogState.DELIVERED for log in logs.logs) else None

        await eventually(delivered, timeout=10, what="QStash's own delivery")
    finally:
        await qstash.http._client.aclose()
    done = await stack.status(job.id)
    assert (done.state, done.attempts) == (COMPLETED, 1)
    assert outcomes(done) == ["completed"]
    assert len(stack.script.of("dup")) == 1


async def test_a_dead_lettered_duplicate_message_does_not_fail_a_running_job(stack: Stack) -> None:
    # A second message of a running job (the relay racing RetryJob's own publish, or QStash's
    # at-least-once) is answered 503 "busy"; once its retries are spent it is dead-lettered and
    # QStash sends the failure callback, while the first delivery's handler is still running.
    stack.script.sleeps["busy"] = [0.5]
    job = (await stack.stub.Enqueue(crm("busy"))).job
    await stack.until(job.id, lambda j: j.state == PROCESSING, "the handler to start")
    body = Envelope(
        job_type=JobType.CRM_MATCH,
        payload={"listingId": "busy", "agentId": "A1"},
        job_id=uuid.UUID(job.id),
    ).encode()
    assert stack.parts.local_qstash_url is not None
    qstash = AsyncQStash(DEV_USERS[0].token, base_url=stack.parts.local_qstash_url)
    try:
        await qstash.message.publish(
            url=f"{stack.sidecar_url}/api/jobs/crm-match",
            body=body,
            content_type="application/json",
            retries=0,
            failure_callback=f"{stack.sidecar_url}/api/jobs/_failed",
        )
    finally:
        await qstash.http._client.aclose()
    done = await stack.until(job.id, is_final, "the job to finish")
    await asyncio.sleep(0.6)  # the handler's own end
    assert [call.key for call in stack.script.calls] == ["busy"]
    assert (await stack.status(job.id)).state == COMPLETED, done


# -- the broker down at Enqueue -------------------------------------------------------------------


async def test_a_job_enqueued_while_the_broker_is_down_runs_when_it_is_back(
    database_url: str, script: Script
) -> None:
    dev = DEV_USERS[0]
    down = settings_for(
        database_url,
        broker=BrokerKind.QSTASH,
        qstash_url=f"http://127.0.0.1:{free_port()}",
        qstash_token=dev.token,
        qstash_current_signing_key=dev.current_signing_key,
        qstash_next_signing_key=dev.next_signing_key,
    )
    async with started(down, script, embed_local_qstash=False) as stack:
        response = await stack.stub.Enqueue(crm("patient"))
        assert response.job.state == PENDING
        job = await stack.status(response.job.id)
        assert (job.state, job.qstash_message_id) == (PENDING, "")
        assert [j.id for j in await stack.jobs(states=[PENDING])] == [job.id]

    # The same database, the local broker embedded: the relay publishes the job.
    async with started(settings_for(database_url), script) as stack:
        done = await stack.until(job.id, is_final, "the job to run", timeout=15)
        assert done.state == COMPLETED
        assert done.qstash_message_id.startswith("msg_")
        assert [call.job_id for call in script.of("patient")] == [uuid.UUID(job.id)]


# -- the service's gaps, end to end ---------------------------------------------------------------


async def test_list_jobs_filters_on_several_states_and_types_and_a_schedule(stack: Stack) -> None:
    stack.script.permanent.add("bad")
    ok = (await stack.stub.Enqueue(crm("good"))).job
    bad = (await stack.stub.Enqueue(crm("bad", retries=0))).job
    waiting = (await stack.stub.Enqueue(crm("wait", delay=Duration(seconds=3600)))).job
    reminder = (
        await stack.stub.Enqueue(
            pb.EnqueueRequest(
                send_reminder=payloads_pb2.SendReminder(
                    applicant_id="AP1", reminder_type=payloads_pb2.REMINDER_TYPE_DAY1
                )
            )
        )
    ).job
    for job in (ok, bad, reminder):
        await stack.until(job.id, is_final, "the jobs to finish")
    firing = Envelope(
        job_type=JobType.CRM_MATCH,
        payload={"listingId": "f", "agentId": "A"},
        schedule_id="nightly",
    )
    url = f"{stack.sidecar_url}/api/jobs/crm-match"
    body = firing.encode()
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            url,
            content=body,
            headers={
                "Upstash-Signature": sign(stack.signing_keys()[0], url=url, body=body),
                "Upstash-Message-Id": "msg_fired",
                "Upstash-Schedule-Id": "nightly",
            },
        )
    assert answer.status_code == 200

    def ids(jobs: list[jobs_pb2.Job]) -> set[str]:
        return {job.id for job in jobs}

    finished = await stack.jobs(states=[COMPLETED, FAILED])
    assert len(finished) == 4
    assert bad.id in ids(finished)
    assert waiting.id not in ids(finished)
    both_types = await stack.jobs(
        types=[jobs_pb2.JOB_TYPE_SEND_REMINDER, jobs_pb2.JOB_TYPE_SYNDICATE_LISTING]
    )
    assert ids(both_types) == {reminder.id}
    crm_done = await stack.jobs(states=[COMPLETED, PENDING], types=[jobs_pb2.JOB_TYPE_CRM_MATCH])
    assert len(crm_done) == 3
    assert ids(crm_done) >= {ok.id, waiting.id}
    [fired] = await stack.jobs(schedule_id="nightly")
    assert fired.schedule_id == "nightly"
    assert fired.id not in {ok.id, bad.id, waiting.id}
    assert await stack.jobs(schedule_id="nightly", states=[FAILED]) == []

    # Pages carry their filters: several states page through like one.
    first = await stack.stub.ListJobs(pb.ListJobsRequest(states=[COMPLETED, FAILED], page_size=3))
    assert len(first.jobs) == 3
    assert first.next_page_token
    rest = await stack.stub.ListJobs(
        pb.ListJobsRequest(
            states=[FAILED, COMPLETED], page_size=3, page_token=first.next_page_token
        )
    )
    assert ids([*first.jobs, *rest.jobs]) == ids(finished)
    assert not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.ListJobs(
            pb.ListJobsRequest(
                states=[COMPLETED], schedule_id="nightly", page_token=first.next_page_token
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_enqueue_batch_answers_known_deduplication_ids_as_enqueue_does(
    stack: Stack,
) -> None:
    known = (await stack.stub.Enqueue(crm("known", deduplication_id="k-1"))).job
    response = await stack.stub.EnqueueBatch(
        pb.EnqueueBatchRequest(
            requests=[
                crm("new-1", deduplication_id="n-1"),
                crm("ignored", deduplication_id="k-1"),
                crm("new-2"),
            ]
        )
    )
    answers = [(r.job.crm_match.listing_id, r.deduplicated) for r in response.responses]
    assert answers == [("new-1", False), ("known", True), ("new-2", False)]
    assert response.responses[1].job.id == known.id
    for answer in response.responses:
        await stack.until(answer.job.id, is_final, "the batch to run")
    assert sorted(call.key for call in stack.script.calls) == ["known", "new-1", "new-2"]
    assert len(await stack.jobs()) == 3

    # All or none still holds for the new rows: an invalid entry writes none of them.
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.stub.EnqueueBatch(
            pb.EnqueueBatchRequest(
                requests=[crm("new-3"), crm("known-again", deduplication_id="k-1"), crm("")]
            )
        )
    assert len(await stack.jobs()) == 3


# -- SIGTERM --------------------------------------------------------------------------------------


async def test_jobsvc_serve_drains_on_sigterm(database_url: str, tmp_path: Path) -> None:
    """``jobsvc serve`` as its own process: SIGTERM turns health NOT_SERVING, a WatchJob in
    flight still gets its job's end (delivered, run and recorded during the drain), and the
    process exits 0 without a traceback."""
    grpc_port = free_port()
    env = {
        **os.environ,
        "JOBSVC_GRPC_PORT": str(grpc_port),
        "JOBSVC_SIDECAR_PORT": str(free_port()),
        "JOBSVC_QSTASH_DEV_PORT": str(free_port()),
        "JOBSVC_DATABASE_URL": database_url,
        "JOBSVC_QSTASH_DEV_DATABASE_URL": database_url,
        "JOBSVC_QSTASH_DEV_TIME_SCALE": "0.1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsvc",
        "serve",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        banner = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"is running" in banner, banner
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            health_watch = health.Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(health_watch.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stub: Any = job_service_pb2_grpc.JobServiceStub(channel)
            # Delivered 1 s on (10 s at time scale 0.1): after SIGTERM, during the drain.
            job = (await stub.Enqueue(crm("drained", delay=Duration(seconds=10)))).job
            watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
            assert (await asyncio.wait_for(watch.read(), 10)).job.state == PENDING

            process.send_signal(signal.SIGTERM)
            stopping = await asyncio.wait_for(health_watch.read(), 10)
            assert stopping.status == health_pb2.HealthCheckResponse.NOT_SERVING
            health_watch.cancel()
            states = []
            while (message := await asyncio.wait_for(watch.read(), 10)) is not grpc.aio.EOF:
                states.append(message.job.state)
            assert states[-1] == COMPLETED
            assert await watch.code() == grpc.StatusCode.OK
        code = await asyncio.wait_for(process.wait(), 10)
        stderr = (await process.stderr.read()).decode()
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_retry_job_removes_the_dlq_entry(stack: Stack) -> None:
    stack.script.permanent.add("dlq")
    job = (await stack.stub.Enqueue(crm("dlq"))).job
    failed = await stack.until(job.id, lambda j: bool(j.dlq_id), "the DLQ id")
    assert stack.parts.local_qstash_url is not None
    qstash = AsyncQStash(DEV_USERS[0].token, base_url=stack.parts.local_qstash_url)
    try:
        assert [m.dlq_id for m in (await qstash.dlq.list()).messages] == [failed.dlq_id]
        stack.script.permanent.discard("dlq")
        await stack.stub.RetryJob(pb.RetryJobRequest(job_id=job.id))
        assert (await qstash.dlq.list()).messages == []
    finally:
        await qstash.http._client.aclose()


# -- WatchJob's timeline from the attempt history (no I/O) ----------------------------------------

START = datetime(2026, 1, 1, tzinfo=UTC)


def history_job(state: JobState, *attempts: tuple[str | None, str | None]) -> Job:
    """A job in ``state`` whose attempts ended with these (outcome, error)."""
    return Job(
        id=uuid.uuid4(),
        type=JobType.CRM_MATCH,
        payload={"listingId": "L", "agentId": "A"},
        state=state,
        attempts=len(attempts),
        created_at=START,
        history=[
            Attempt(
                number=n,
                started_at=START + timedelta(seconds=n),
                finished_at=None
                if outcome is None
                else START + timedelta(seconds=n, milliseconds=5),
                outcome=outcome,
                error=error,
                qstash_message_id=f"msg_{n}",
            )
            for n, (outcome, error) in enumerate(attempts, start=1)
        ],
    )


def moments(jobs: list[Job]) -> list[tuple[JobState, int]]:
    return [(job.state, job.attempts) for job in jobs]


def test_passed_through_reads_retries_takeovers_and_operator_retries_from_the_history() -> None:
    S = JobState
    retried = history_job(S.COMPLETED, ("retry", "boom"), ("completed", None))
    assert moments(passed_through(retried, since=(S.PENDING, 0))) == [
        (S.PROCESSING, 1),
        (S.RETRYING, 1),
        (S.PROCESSING, 2),
    ]
    assert moments(passed_through(retried, since=(S.RETRYING, 1))) == [(S.PROCESSING, 2)]
    assert passed_through(retried, since=(S.PROCESSING, 2)) == []
    assert passed_through(retried, since=(S.COMPLETED, 2)) == []

    # A lease takeover goes from one attempt straight to the next.
    taken_over = history_job(S.PROCESSING, ("retry", LEASE_EXPIRED), (None, None))
    assert moments(passed_through(taken_over, since=(S.PENDING, 0))) == [(S.PROCESSING, 1)]

    # Dead-lettered, retried by an operator, and running again.
    redriven = history_job(S.PROCESSING, ("failed", "gave up"), (None, None))
    passed = passed_through(redriven, since=(S.PROCESSING, 1))
    assert moments(passed) == [(S.FAILED, 1), (S.PENDING, 1)]
    assert passed[0].error == "gave up"
    assert passed[0].finished_at == START + timedelta(seconds=1, milliseconds=5)

    # Cancelled while retrying: the retrying state is shown first.
    cancelled = history_job(S.CANCELLED, ("retry", "boom"))
    assert moments(passed_through(cancelled, since=(S.PROCESSING, 1))) == [(S.RETRYING, 1)]
    # Still retrying: nothing passed in between.
    retrying = history_job(S.RETRYING, ("retry", "boom"))
    assert passed_through(retrying, since=(S.PROCESSING, 1)) == []

    # Each as it was: the attempt still running, the history of that moment.
    [running_then, retrying_then, second_then] = passed_through(retried, since=(S.PENDING, 0))
    assert retrying_then.history[0].outcome == "retry"
    assert running_then.history[0].outcome is None
    assert running_then.history[0].finished_at is None
    assert running_then.result is None
    assert running_then.error is None
    assert len(second_then.history) == 2
    assert second_then.error == "boom"  # the last error so far
    assert second_then.qstash_message_id == "msg_2"
    assert retried.history[0].outcome == "retry"  # the job itself is not changed

    # A moment the history cannot place: nothing is made up.
    assert passed_through(retried, since=(S.CANCELLED, 0)) == []
