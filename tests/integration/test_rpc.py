"""The gRPC server end to end: a real ``grpc.aio`` server on port 0 over the real JobService (job
log on SQLite and PostgreSQL, the local QStash server, a receiver standing in for the sidecar),
called through a real channel with the generated stub, and through the real grpcurl binary.

The sidecar is not part of these tests: where a job must move on, the test drives the job log's
own guarded transitions (claim, complete, fail) as the sidecar would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from qstash import QStash
from sqlalchemy import Engine

from jobsvc.broker import QStashBroker, SidecarUrls
from jobsvc.db import JobLog, pages, utc_now
from jobsvc.errors import InvalidArgument
from jobsvc.jobs import EnqueueOptions, Schedule
from jobsvc.localqstash import LocalQStashServer
from jobsvc.payloads import CrmMatch
from jobsvc.rpc import (
    AsyncJobClient,
    EnqueueResult,
    JobClient,
    JobServer,
    ServiceUnavailable,
    build_server,
    serve,
)
from jobsvc.rpc.errors import unary
from jobsvc.service.jobs import JobService
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, payloads_pb2
from tests.receiver import Receiver
from tests.standins.grpc_proxy import CommitThenDrop

GRPCURL = Path(sys.executable).parent / "grpcurl"
ENQUEUE_JSON = '{"syndicateListing": {"listingId": "L1", "platforms": ["zillow"]}}'
SCHEDULE_JSON = '{"cron": "0 9 * * *", "crmMatch": {"listingId": "L1", "agentId": "A1"}}'
# Tests of the transport itself (auth, TLS, limits, shutdown): the database is not their subject.
transport_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def service(
    job_log: JobLog, server: LocalQStashServer, receiver: Receiver
) -> AsyncIterator[JobService]:
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    service = JobService(
        job_log=job_log,
        broker=broker,
        urls=SidecarUrls(public_url=receiver.url),
        handler_timeout=timedelta(seconds=30),
        clock=utc_now,
        watch_interval=timedelta(milliseconds=20),
    )
    yield service
    await service.aclose()
    await broker.aclose()


@dataclass
class Running:
    server: JobServer
    port: int
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stub(self, channel: grpc.aio.Channel | None = None) -> job_service_pb2_grpc.JobServiceStub:
        if channel is None:
            channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[return-value]

    def health(self) -> health_pb2_grpc.HealthStub:
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return health_pb2_grpc.HealthStub(channel)


MakeRpc = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_rpc(service: JobService) -> AsyncIterator[MakeRpc]:
    """``await make_rpc(auth_token=..., tls=...)``: a started server on port 0; all are
    stopped, and their channels closed, at teardown."""
    made: list[Running] = []

    async def make(**options: Any) -> Running:
        server, port = build_server(service, host="127.0.0.1", port=0, **options)
        await server.start()
        running = Running(server, port)
        made.append(running)
        return running

    yield make
    for running in made:
        for channel in running.channels:
            await channel.close()
        await running.server.stop(0)


@pytest.fixture
async def rpc(make_rpc: MakeRpc) -> Running:
    return await make_rpc()


@pytest.fixture
def stub(rpc: Running) -> job_service_pb2_grpc.JobServiceStub:
    return rpc.stub()


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Rejection:
    code: grpc.StatusCode
    reason: str
    domain: str
    fields: list[str]


def rejection_of(error: grpc.aio.AioRpcError) -> Rejection:
    """The status of a failed call with its ErrorInfo and BadRequest details decoded."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status in {error.code()}: {error.details()}"
    reasons: list[error_details_pb2.ErrorInfo] = []
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    assert len(reasons) == 1, f"expected one ErrorInfo, got {reasons}"
    return Rejection(error.code(), reasons[0].reason, reasons[0].domain, fields)


async def rejected(call: Awaitable[Any]) -> Rejection:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return rejection_of(info.value)


async def rejected_stream(call: Any) -> Rejection:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    return rejection_of(info.value)


async def next_of(call: Any) -> Any:
    """The next message of a stream (or EOF), failing the test instead of hanging."""
    return await asyncio.wait_for(call.read(), 5)


def enqueue_request(text: str = ENQUEUE_JSON) -> pb.EnqueueRequest:
    return json_format.Parse(text, pb.EnqueueRequest())


def crm(listing_id: str = "L1", **options: Any) -> pb.EnqueueRequest:
    return pb.EnqueueRequest(
        crm_match=payloads_pb2.CrmMatch(listing_id=listing_id, agent_id="A1"), **options
    )


def big_notification() -> payloads_pb2.SendNotification:
    data = Struct()
    data.update({"body": "x" * (64 * 1024)})
    return payloads_pb2.SendNotification(
        type=payloads_pb2.NOTIFICATION_TYPE_CONFIRMATION,
        recipient_id="R1",
        template_id="T1",
        template_data=data,
    )


async def all_jobs(stub: job_service_pb2_grpc.JobServiceStub) -> list[jobs_pb2.Job]:
    response = await stub.ListJobs(pb.ListJobsRequest(page_size=1000))
    return list(response.jobs)


def aware(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


# -- jobs -----------------------------------------------------------------------------------------


async def test_enqueue_contract_json_stores_publishes_and_reads_back(
    stub: job_service_pb2_grpc.JobServiceStub, service: JobService, receiver: Receiver
) -> None:
    before = datetime.now(UTC)
    response = await stub.Enqueue(enqueue_request())
    job = response.job
    assert uuid.UUID(job.id).version == 4
    assert job.id == str(uuid.UUID(job.id))  # lowercase canonical form
    assert job.state == jobs_pb2.JOB_STATE_PENDING
    assert json_format.MessageToDict(response)["job"]["state"] == "JOB_STATE_PENDING"
    assert job.type == jobs_pb2.JOB_TYPE_SYNDICATE_LISTING
    assert job.WhichOneof("payload") == "syndicate_listing"
    assert list(job.syndicate_listing.platforms) == ["zillow"]
    assert job.max_retries == 3
    assert response.deduplicated is False
    assert before - timedelta(seconds=1) <= aware(job.create_time) <= datetime.now(UTC)

    [delivery] = await receiver.wait_for_async(1, path="/api/jobs/syndicate-listing")
    assert delivery.signature_ok, delivery.signature_error
    envelope = json.loads(delivery.body)
    assert envelope["jobId"] == job.id
    assert envelope["payload"] == {"listingId": "L1", "platforms": ["zillow"]}

    assert service.publisher is not None
    await service.publisher.flush()  # the message id is recorded after the publish
    status = await stub.GetStatus(pb.GetStatusRequest(job_id=job.id))
    assert status.job.id == job.id
    assert status.job.state == jobs_pb2.JOB_STATE_PENDING
    assert status.job.qstash_message_id == delivery.header("Upstash-Message-Id")
    assert status.job.syndicate_listing == job.syndicate_listing
    assert not status.job.HasField("start_time")


async def test_enqueue_options_round_trip(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    delayed = await stub.Enqueue(
        crm(
            delay=Duration(seconds=3600),
            retries=0,
            handler_timeout=Duration(seconds=90),
            deduplication_id="order-7",
        )
    )
    job = delayed.job
    expected = datetime.now(UTC) + timedelta(hours=1)
    assert abs(aware(job.not_before_time) - expected) < timedelta(seconds=5)
    assert job.max_retries == 0
    assert job.handler_timeout.ToTimedelta() == timedelta(seconds=90)
    assert job.deduplication_id == "order-7"

    again = await stub.Enqueue(crm("L2", deduplication_id="order-7"))
    assert again.deduplicated is True
    assert again.job.id == job.id
    assert again.job.crm_match.listing_id == "L1"  # the first job, whatever the payload

    reminder = await stub.Enqueue(
        pb.EnqueueRequest(
            send_reminder=payloads_pb2.SendReminder(
                applicant_id="AP1",
                reminder_type=payloads_pb2.REMINDER_TYPE_DAY3,
                missing_docs=["pay_stub", "id"],
            )
        )
    )
    status = await stub.GetStatus(pb.GetStatusRequest(job_id=reminder.job.id))
    assert status.job.send_reminder.reminder_type == payloads_pb2.REMINDER_TYPE_DAY3
    assert list(status.job.send_reminder.missing_docs) == ["pay_stub", "id"]
    assert len(await all_jobs(stub)) == 2


async def test_enqueue_batch_is_all_or_none(
    stub: job_service_pb2_grpc.JobServiceStub, receiver: Receiver
) -> None:
    bad = await rejected(
        stub.EnqueueBatch(
            pb.EnqueueBatchRequest(
                requests=[
                    crm("L0"),
                    enqueue_request(
                        '{"syndicateListing": {"listingId": "L1", "platforms": ["myspace"]}}'
                    ),
                    pb.EnqueueRequest(),
                    crm("L3", deduplication_id="d"),
                    crm("L4", deduplication_id="d"),
                ]
            )
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.reason == "INVALID_ARGUMENT"
    assert bad.fields == [
        "requests[1].syndicate_listing.platforms[0]",
        "requests[2].payload",
        "requests[4].deduplication_id",
    ]
    options = await rejected(
        stub.EnqueueBatch(
            pb.EnqueueBatchRequest(requests=[crm("L0"), crm("L1", delay=Duration(seconds=-1))])
        )
    )
    assert options.fields == ["requests[1].delay"]
    empty = await rejected(stub.EnqueueBatch(pb.EnqueueBatchRequest()))
    assert empty.fields == ["requests"]
    assert await all_jobs(stub) == []

    response = await stub.EnqueueBatch(
        pb.EnqueueBatchRequest(requests=[crm(f"L{i}") for i in range(3)])
    )
    assert [r.job.crm_match.listing_id for r in response.responses] == ["L0", "L1", "L2"]
    assert all(r.job.state == jobs_pb2.JOB_STATE_PENDING for r in response.responses)
    stored = {job.id for job in await all_jobs(stub)}
    assert stored == {r.job.id for r in response.responses}
    deliveries = await receiver.wait_for_async(3, path="/api/jobs/crm-match")
    assert {json.loads(d.body)["jobId"] for d in deliveries} == stored


async def test_list_jobs_filters_and_pages(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    ids = [(await stub.Enqueue(crm(f"L{i}"))).job.id for i in range(5)]
    reminder = await stub.Enqueue(
        pb.EnqueueRequest(
            send_reminder=payloads_pb2.SendReminder(
                applicant_id="AP1", reminder_type=payloads_pb2.REMINDER_TYPE_DAY1
            )
        )
    )
    await stub.CancelJob(pb.CancelJobRequest(job_id=ids[1]))

    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [job.id for job in listed.jobs] == [reminder.job.id, *reversed(ids)]  # newest first
    assert listed.next_page_token == ""
    assert all(len(job.history) == 0 for job in listed.jobs)

    cancelled = await stub.ListJobs(pb.ListJobsRequest(states=[jobs_pb2.JOB_STATE_CANCELLED]))
    assert [job.id for job in cancelled.jobs] == [ids[1]]
    reminders = await stub.ListJobs(pb.ListJobsRequest(types=[jobs_pb2.JOB_TYPE_SEND_REMINDER]))
    assert [job.id for job in reminders.jobs] == [reminder.job.id]
    pending_crm = await stub.ListJobs(
        pb.ListJobsRequest(states=[jobs_pb2.JOB_STATE_PENDING], types=[jobs_pb2.JOB_TYPE_CRM_MATCH])
    )
    assert [job.id for job in pending_crm.jobs] == [ids[4], ids[3], ids[2], ids[0]]

    after_all = Timestamp()
    after_all.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    assert not (await stub.ListJobs(pb.ListJobsRequest(min_create_time=after_all))).jobs
    assert len((await stub.ListJobs(pb.ListJobsRequest(max_create_time=after_all))).jobs) == 6

    seen: list[str] = []
    tokens: list[str] = []
    token = ""
    while True:
        page = await stub.ListJobs(
            pb.ListJobsRequest(types=[jobs_pb2.JOB_TYPE_CRM_MATCH], page_size=2, page_token=token)
        )
        assert len(page.jobs) <= 2
        seen.extend(job.id for job in page.jobs)
        token = page.next_page_token
        if not token:
            break
        tokens.append(token)
    assert seen == list(reversed(ids))
    assert len(tokens) == 2  # three pages

    # A token issued for the type filter, replayed without it.
    wrong_filters = await rejected(
        stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=tokens[0]))
    )
    assert wrong_filters.fields == ["page_token"]
    garbage = await rejected(stub.ListJobs(pb.ListJobsRequest(page_token="not-a-token")))
    assert garbage.fields == ["page_token"]


async def test_cancel_and_retry_guards(
    stub: job_service_pb2_grpc.JobServiceStub, job_log: JobLog, receiver: Receiver
) -> None:
    pending = (await stub.Enqueue(crm("L1"))).job
    cancelled = (await stub.CancelJob(pb.CancelJobRequest(job_id=pending.id))).job
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert cancelled.HasField("finish_time")
    again = (await stub.CancelJob(pb.CancelJobRequest(job_id=pending.id))).job
    assert again.state == jobs_pb2.JOB_STATE_CANCELLED  # unchanged, not an error

    not_failed = await rejected(stub.RetryJob(pb.RetryJobRequest(job_id=pending.id)))
    assert (not_failed.code, not_failed.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )

    done = (await stub.Enqueue(crm("L2"))).job
    job_id = uuid.UUID(done.id)
    assert job_log.claim(job_id, qstash_message_id="m-1", retried=0, lease_seconds=30)
    assert job_log.complete(job_id, {"matched": True})
    too_late = await rejected(stub.CancelJob(pb.CancelJobRequest(job_id=done.id)))
    assert (too_late.code, too_late.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    completed = (await stub.GetStatus(pb.GetStatusRequest(job_id=done.id))).job
    assert completed.state == jobs_pb2.JOB_STATE_COMPLETED
    assert json_format.MessageToDict(completed.result) == {"matched": True}
    [attempt] = completed.history
    assert (attempt.number, attempt.outcome, attempt.qstash_message_id) == (
        1,
        jobs_pb2.ATTEMPT_OUTCOME_COMPLETED,
        "m-1",
    )

    failing = (await stub.Enqueue(crm("L3"))).job
    failing_id = uuid.UUID(failing.id)
    await receiver.wait_for_async(3, path="/api/jobs/crm-match")
    first_message = (await stub.GetStatus(pb.GetStatusRequest(job_id=failing.id))).job
    assert job_log.claim(failing_id, qstash_message_id="m-2", retried=0, lease_seconds=30)
    assert job_log.attempt_failed(failing_id, "listing service down", final=True)
    failed = (await stub.GetStatus(pb.GetStatusRequest(job_id=failing.id))).job
    assert failed.state == jobs_pb2.JOB_STATE_FAILED
    assert failed.last_error == "listing service down"
    assert failed.history[0].outcome == jobs_pb2.ATTEMPT_OUTCOME_FAILED
    not_cancellable = await rejected(stub.CancelJob(pb.CancelJobRequest(job_id=failing.id)))
    assert not_cancellable.reason == "INVALID_STATE"

    retried = (await stub.RetryJob(pb.RetryJobRequest(job_id=failing.id))).job
    assert retried.state == jobs_pb2.JOB_STATE_PENDING
    assert retried.attempts == 1  # history kept
    assert retried.qstash_message_id not in ("", first_message.qstash_message_id)
    deliveries = await receiver.wait_for_async(4, path="/api/jobs/crm-match")
    assert [json.loads(d.body)["jobId"] for d in deliveries].count(failing.id) == 2


# -- schedules ------------------------------------------------------------------------------------


async def test_cron_schedules_create_read_list_pause_resume_delete(
    stub: job_service_pb2_grpc.JobServiceStub, client: QStash
) -> None:
    created = (await stub.Schedule(json_format.Parse(SCHEDULE_JSON, pb.ScheduleRequest()))).schedule
    assert created.schedule_id
    assert created.cron == "0 9 * * *"
    assert created.time_zone == "UTC"
    assert created.crm_match.listing_id == "L1"
    assert created.retries == 3
    assert not created.paused
    next_run = aware(created.next_run_time)
    assert (next_run.hour, next_run.minute) == (9, 0)
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(days=1)

    new_york = pb.ScheduleRequest(
        cron="30 8 * * 1-5",
        time_zone="America/New_York",
        schedule_id="ny-morning",
        retries=5,
        syndicate_listing=payloads_pb2.SyndicateListing(listing_id="L9"),
    )
    zoned = (await stub.Schedule(new_york)).schedule
    assert (zoned.schedule_id, zoned.time_zone, zoned.retries) == (
        "ny-morning",
        "America/New_York",
        5,
    )
    local = aware(zoned.next_run_time).astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.weekday() < 5) == (8, 30, True)
    # The default platforms are filled in, as for Enqueue.
    assert list(zoned.syndicate_listing.platforms) == [
        "zillow",
        "apartments",
        "craigslist",
        "facebook",
        "streeteasy",
    ]
    assert len(client.schedule.list()) == 2  # both reached QStash

    new_york.cron = "0 7 * * *"
    updated = (await stub.Schedule(new_york)).schedule
    assert updated.cron == "0 7 * * *"
    assert updated.create_time == zoned.create_time
    in_qstash = {s.schedule_id: s.cron for s in client.schedule.list()}  # replaced, not added
    assert in_qstash == {
        created.schedule_id: "0 9 * * *",
        "ny-morning": "CRON_TZ=America/New_York 0 7 * * *",
    }

    got = (await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="ny-morning"))).schedule
    assert got == updated

    first = await stub.ListSchedules(pb.ListSchedulesRequest(page_size=1))
    second = await stub.ListSchedules(
        pb.ListSchedulesRequest(page_size=1, page_token=first.next_page_token)
    )
    listed = [s.schedule_id for s in (*first.schedules, *second.schedules)]
    assert sorted(listed) == listed == sorted([created.schedule_id, "ny-morning"])
    assert second.next_page_token == ""

    paused = (await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="ny-morning"))).schedule
    assert paused.paused
    assert not paused.HasField("next_run_time")
    assert [s.paused for s in client.schedule.list() if s.schedule_id == "ny-morning"] == [True]
    still = (await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="ny-morning"))).schedule
    assert still.paused
    resumed = (
        await stub.ResumeSchedule(pb.ResumeScheduleRequest(schedule_id="ny-morning"))
    ).schedule
    assert not resumed.paused
    assert resumed.HasField("next_run_time")

    await stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id="ny-morning"))
    gone = await rejected(stub.GetSchedule(pb.GetScheduleRequest(schedule_id="ny-morning")))
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    assert [s.schedule_id for s in client.schedule.list()] == [created.schedule_id]


async def test_one_off_schedule_returns_a_job(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    delayed = await stub.Schedule(
        pb.ScheduleRequest(
            delay=Duration(seconds=7200),
            crm_match=payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1"),
        )
    )
    assert delayed.WhichOneof("created") == "job"
    assert delayed.job.state == jobs_pb2.JOB_STATE_PENDING
    expected = datetime.now(UTC) + timedelta(hours=2)
    assert abs(aware(delayed.job.not_before_time) - expected) < timedelta(seconds=5)

    at = Timestamp()
    at.FromDatetime(datetime.now(UTC) + timedelta(days=3))
    timed = await stub.Schedule(
        pb.ScheduleRequest(
            run_time=at, crm_match=payloads_pb2.CrmMatch(listing_id="L2", agent_id="A1")
        )
    )
    assert timed.job.not_before_time.seconds == at.seconds

    too_far = Timestamp()
    too_far.FromDatetime(datetime.now(UTC) + timedelta(days=400))
    far = await rejected(
        stub.Schedule(
            pb.ScheduleRequest(
                run_time=too_far, crm_match=payloads_pb2.CrmMatch(listing_id="L", agent_id="A")
            )
        )
    )
    assert far.fields == ["run_time"]
    assert {job.id for job in await all_jobs(stub)} == {delayed.job.id, timed.job.id}


# -- WatchJob -------------------------------------------------------------------------------------


async def test_watch_job_streams_each_change_until_the_final_state(
    stub: job_service_pb2_grpc.JobServiceStub, job_log: JobLog
) -> None:
    job = (await stub.Enqueue(crm())).job
    job_id = uuid.UUID(job.id)
    call = stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    first = await next_of(call)
    assert (first.job.id, first.job.state) == (job.id, jobs_pb2.JOB_STATE_PENDING)

    assert job_log.claim(job_id, qstash_message_id="m-1", retried=0, lease_seconds=30)
    second = await next_of(call)
    assert (second.job.state, second.job.attempts) == (jobs_pb2.JOB_STATE_PROCESSING, 1)

    assert job_log.complete(job_id, {"ok": True})
    third = await next_of(call)
    assert third.job.state == jobs_pb2.JOB_STATE_COMPLETED
    assert len(third.job.history) == 1
    assert await next_of(call) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK

    # A job already final: exactly one message.
    again = [r.job.state async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    assert again == [jobs_pb2.JOB_STATE_COMPLETED]


# -- errors ---------------------------------------------------------------------------------------


async def test_bad_requests_are_rejected_with_codes_reasons_and_fields(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    crm_payload = payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1")
    cases: list[tuple[str, Awaitable[Any], grpc.StatusCode, str, list[str]]] = [
        ("empty job id", stub.GetStatus(pb.GetStatusRequest()), *_invalid("job_id")),
        ("bad uuid", stub.GetStatus(pb.GetStatusRequest(job_id="nope")), *_invalid("job_id")),
        ("bad uuid cancel", stub.CancelJob(pb.CancelJobRequest(job_id="x")), *_invalid("job_id")),
        ("bad uuid retry", stub.RetryJob(pb.RetryJobRequest(job_id="")), *_invalid("job_id")),
        (
            "unknown job",
            stub.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4()))),
            grpc.StatusCode.NOT_FOUND,
            "JOB_NOT_FOUND",
            [],
        ),
        (
            "unknown job cancel",
            stub.CancelJob(pb.CancelJobRequest(job_id=str(uuid.uuid4()))),
            grpc.StatusCode.NOT_FOUND,
            "JOB_NOT_FOUND",
            [],
        ),
        ("no payload", stub.Enqueue(pb.EnqueueRequest()), *_invalid("payload")),
        (
            "unknown platform",
            stub.Enqueue(
                enqueue_request(
                    '{"syndicateListing": {"listingId": "L1", "platforms": ["zillow", "myspace"]}}'
                )
            ),
            *_invalid("syndicate_listing.platforms[1]"),
        ),
        (
            "empty ids",
            stub.Enqueue(pb.EnqueueRequest(crm_match=payloads_pb2.CrmMatch())),
            *_invalid("crm_match.listing_id", "crm_match.agent_id"),
        ),
        (
            "reminder type unset",
            stub.Enqueue(
                pb.EnqueueRequest(send_reminder=payloads_pb2.SendReminder(applicant_id="A"))
            ),
            *_invalid("send_reminder.reminder_type"),
        ),
        (
            "negative delay",
            stub.Enqueue(pb.EnqueueRequest(crm_match=crm_payload, delay=Duration(seconds=-5))),
            *_invalid("delay"),
        ),
        (
            "retries out of range",
            stub.Enqueue(pb.EnqueueRequest(crm_match=crm_payload, retries=21)),
            *_invalid("retries"),
        ),
        (
            "oversized payload",
            stub.Enqueue(pb.EnqueueRequest(send_notification=big_notification())),
            *_invalid("send_notification"),
        ),
        (
            "oversized payload in a batch",
            stub.EnqueueBatch(
                pb.EnqueueBatchRequest(
                    requests=[pb.EnqueueRequest(send_notification=big_notification())]
                )
            ),
            *_invalid("requests[0].send_notification"),
        ),
        (
            "oversized scheduled payload",
            stub.Schedule(
                pb.ScheduleRequest(cron="0 9 * * *", send_notification=big_notification())
            ),
            *_invalid("send_notification"),
        ),
        (
            "four cron fields",
            stub.Schedule(pb.ScheduleRequest(cron="0 9 * *", crm_match=crm_payload)),
            *_invalid("cron"),
        ),
        (
            "cron out of range",
            stub.Schedule(pb.ScheduleRequest(cron="61 9 * * *", crm_match=crm_payload)),
            *_invalid("cron"),
        ),
        (
            "cron with seconds",
            stub.Schedule(pb.ScheduleRequest(cron="0 0 9 * * *", crm_match=crm_payload)),
            *_invalid("cron"),
        ),
        (
            "CRON_TZ prefix",
            stub.Schedule(pb.ScheduleRequest(cron="CRON_TZ=UTC 0 9 * * *", crm_match=crm_payload)),
            *_invalid("cron"),
        ),
        (
            "unknown time zone",
            stub.Schedule(
                pb.ScheduleRequest(
                    cron="0 9 * * *", time_zone="Mars/Olympus", crm_match=crm_payload
                )
            ),
            *_invalid("time_zone"),
        ),
        (
            "bad schedule id",
            stub.Schedule(
                pb.ScheduleRequest(cron="0 9 * * *", schedule_id="a b", crm_match=crm_payload)
            ),
            *_invalid("schedule_id"),
        ),
        (
            "time zone with a delay",
            stub.Schedule(
                pb.ScheduleRequest(
                    delay=Duration(seconds=5), time_zone="UTC", crm_match=crm_payload
                )
            ),
            *_invalid("time_zone"),
        ),
        (
            "no timing",
            stub.Schedule(pb.ScheduleRequest(crm_match=crm_payload)),
            *_invalid("timing"),
        ),
        (
            "negative schedule delay",
            stub.Schedule(pb.ScheduleRequest(delay=Duration(seconds=-1), crm_match=crm_payload)),
            *_invalid("delay"),
        ),
        (
            "schedule without payload",
            stub.Schedule(pb.ScheduleRequest(cron="0 9 * * *")),
            *_invalid("payload"),
        ),
        ("empty schedule id", stub.GetSchedule(pb.GetScheduleRequest()), *_invalid("schedule_id")),
        (
            "unknown schedule",
            stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "SCHEDULE_NOT_FOUND",
            [],
        ),
        (
            "unknown schedule delete",
            stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "SCHEDULE_NOT_FOUND",
            [],
        ),
        (
            "negative page size",
            stub.ListJobs(pb.ListJobsRequest(page_size=-1)),
            *_invalid("page_size"),
        ),
        (
            "unspecified state filter",
            stub.ListJobs(pb.ListJobsRequest(states=[jobs_pb2.JOB_STATE_UNSPECIFIED])),
            *_invalid("states[0]"),
        ),
        (
            "inverted time range",
            stub.ListJobs(
                pb.ListJobsRequest(
                    min_create_time=Timestamp(seconds=2_000_000_000),
                    max_create_time=Timestamp(seconds=1_000_000_000),
                )
            ),
            *_invalid("max_create_time"),
        ),
    ]
    for name, call, code, reason, fields in cases:
        got = await rejected(call)
        assert (got.code, got.reason, got.domain, got.fields) == (code, reason, "jobsvc", fields), (
            name
        )
    watch = await rejected_stream(stub.WatchJob(pb.WatchJobRequest(job_id="nope")))
    assert (watch.code, watch.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["job_id"])
    unknown = await rejected_stream(stub.WatchJob(pb.WatchJobRequest(job_id=str(uuid.uuid4()))))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    # Nothing was written by any of them.
    assert await all_jobs(stub) == []
    assert not (await stub.ListSchedules(pb.ListSchedulesRequest())).schedules


def _invalid(*fields: str) -> tuple[grpc.StatusCode, str, list[str]]:
    return grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", list(fields)


@transport_only
async def test_messages_above_the_receive_limit_are_refused(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    data = Struct()
    data.update({"body": "x" * 5000})
    note = payloads_pb2.SendNotification(
        type=payloads_pb2.NOTIFICATION_TYPE_REMINDER,
        recipient_id="R",
        template_id="T",
        template_data=data,
    )
    huge = pb.EnqueueBatchRequest(
        requests=[pb.EnqueueRequest(send_notification=note) for _ in range(1000)]
    )
    assert huge.ByteSize() > 4 * 1024 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EnqueueBatch(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await all_jobs(stub) == []


async def test_unexpected_errors_become_a_generic_internal_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error decorator on a servicer method of its own (nothing of JobService fails
    unexpectedly on purpose): INTERNAL, reason INTERNAL, no detail leaked, traceback logged."""

    class Servicer:
        @unary
        async def Explode(self, request: bytes, context: Any) -> bytes:
            raise RuntimeError("secret connection string")

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(Servicer().Explode)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Boom", {"Explode": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Boom/Explode")
            with caplog.at_level(logging.ERROR, logger="jobsvc.rpc"):
                got = await rejected(call(b""))
    finally:
        await server.stop(0)
    assert (got.code, got.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "rpc_internal_error"]
    assert "secret connection string" in str(record.exc_info[1] if record.exc_info else "")


# -- authentication and TLS -----------------------------------------------------------------------


@transport_only
async def test_bearer_token_is_required_except_for_health_and_reflection(
    make_rpc: MakeRpc,
) -> None:
    rpc = await make_rpc(auth_token="s3cret")
    stub = rpc.stub()
    for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
        got = await rejected(stub.Enqueue(crm(), metadata=metadata))
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    stream = await rejected_stream(stub.WatchJob(pb.WatchJobRequest(job_id=str(uuid.uuid4()))))
    assert stream.code == grpc.StatusCode.UNAUTHENTICATED

    job = (await stub.Enqueue(crm(), metadata=(("authorization", "Bearer s3cret"),))).job
    status = await stub.GetStatus(
        pb.GetStatusRequest(job_id=job.id), metadata=(("authorization", "bearer s3cret"),)
    )
    assert status.job.id == job.id

    health = await rpc.health().Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = await _grpcurl("-plaintext", rpc.address, "list")
    assert "jobsvc.v1.JobService" in listed.split()


def _self_signed(directory: Path) -> tuple[bytes, bytes]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


@transport_only
async def test_tls(make_rpc: MakeRpc, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    rpc = await make_rpc(tls=(cert, key))
    secure = grpc.aio.secure_channel(
        rpc.address, grpc.ssl_channel_credentials(root_certificates=cert)
    )
    stub = rpc.stub(secure)
    job = (await stub.Enqueue(crm())).job
    assert (await stub.GetStatus(pb.GetStatusRequest(job_id=job.id))).job.id == job.id

    plaintext = rpc.stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await plaintext.GetStatus(pb.GetStatusRequest(job_id=job.id), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- health and graceful shutdown -----------------------------------------------------------------


@transport_only
async def test_health_flips_to_not_serving_and_in_flight_calls_finish(
    rpc: Running, job_log: JobLog
) -> None:
    health = rpc.health()
    for service in ("", "jobsvc.v1.JobService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    stub = rpc.stub()
    job = (await stub.Enqueue(crm())).job
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_PENDING
    health_watch = health.Watch(health_pb2.HealthCheckRequest(service="jobsvc.v1.JobService"))
    assert (await next_of(health_watch)).status == health_pb2.HealthCheckResponse.SERVING

    started = time.monotonic()
    stopping = asyncio.create_task(rpc.server.stop(60.0, drain_seconds=0.3))
    assert (await next_of(health_watch)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    health_watch.cancel()
    # During the drain new calls still arrive, and health says NOT_SERVING.
    drained = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert drained.status == health_pb2.HealthCheckResponse.NOT_SERVING

    await asyncio.sleep(0.4)  # past the drain: the server takes no new calls now
    assert not stopping.done()  # the watch is still in flight
    job_id = uuid.UUID(job.id)
    assert job_log.claim(job_id, qstash_message_id="m", retried=0, lease_seconds=30)
    assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_PROCESSING
    assert job_log.complete(job_id, None)
    assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_COMPLETED
    assert await next_of(watch) is grpc.aio.EOF
    assert await watch.code() == grpc.StatusCode.OK
    await stopping
    assert time.monotonic() - started < 30  # ended when the last call did, not at the grace


@transport_only
async def test_streams_still_open_when_the_grace_ends_get_unavailable(rpc: Running) -> None:
    stub = rpc.stub()
    job = (await stub.Enqueue(crm())).job
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_PENDING
    await rpc.server.stop(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await next_of(watch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@transport_only
async def test_serve_drains_on_sigterm(service: JobService, job_log: JobLog) -> None:
    """SIGTERM: health goes NOT_SERVING, a WatchJob in flight still gets its job's end."""

    def before(signum: int, frame: Any) -> None:
        raise AssertionError("serve() should have handled SIGTERM")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        server, port = build_server(service, host="127.0.0.1", port=0)
        serving = asyncio.create_task(serve(server, grace_seconds=5.0, signals=(signal.SIGTERM,)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            health_watch = health.Watch(health_pb2.HealthCheckRequest())
            assert (await next_of(health_watch)).status == health_pb2.HealthCheckResponse.SERVING
            stub: Any = job_service_pb2_grpc.JobServiceStub(channel)
            job = (await stub.Enqueue(crm())).job
            watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
            assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_PENDING

            os.kill(os.getpid(), signal.SIGTERM)
            status = (await next_of(health_watch)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            health_watch.cancel()
            assert not serving.done()
            job_id = uuid.UUID(job.id)
            assert job_log.claim(job_id, qstash_message_id="m", retried=0, lease_seconds=30)
            assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_PROCESSING
            assert job_log.complete(job_id, None)
            assert (await next_of(watch)).job.state == jobs_pb2.JOB_STATE_COMPLETED
            assert await next_of(watch) is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
            await asyncio.wait_for(serving, 5)
        assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


@transport_only
async def test_serve_stops_when_asked(service: JobService) -> None:
    server, port = build_server(service, host="127.0.0.1", port=0)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(server, stop=stop, signals=()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = job_service_pb2_grpc.JobServiceStub(channel)
        job = (await stub.Enqueue(crm(), wait_for_ready=True)).job
        assert job.state == jobs_pb2.JOB_STATE_PENDING
        stop.set()
        await asyncio.wait_for(serving, 5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetStatus(pb.GetStatusRequest(job_id=job.id), timeout=1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- reflection and grpcurl -----------------------------------------------------------------------


async def _grpcurl(*args: str) -> str:
    """Run the real grpcurl without blocking the loop that serves it; its stdout."""
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"grpcurl {' '.join(args)}: {stderr.decode()}"
    return stdout.decode()


async def test_grpcurl_lists_describes_and_calls_the_contract(
    rpc: Running, job_log: JobLog
) -> None:
    services = (await _grpcurl("-plaintext", rpc.address, "list")).split()
    assert "jobsvc.v1.JobService" in services
    assert "grpc.health.v1.Health" in services
    methods = (await _grpcurl("-plaintext", rpc.address, "list", "jobsvc.v1.JobService")).split()
    assert len(methods) == 13
    described = await _grpcurl("-plaintext", rpc.address, "describe", "jobsvc.v1.JobService")
    assert "rpc Enqueue ( .jobsvc.v1.EnqueueRequest ) returns ( .jobsvc.v1.EnqueueResponse );" in (
        described
    )
    assert (
        "rpc WatchJob ( .jobsvc.v1.WatchJobRequest )"
        " returns ( stream .jobsvc.v1.WatchJobResponse );" in described
    )
    payload = await _grpcurl("-plaintext", rpc.address, "describe", "jobsvc.v1.SyndicateListing")
    assert "repeated string platforms = 2;" in payload

    enqueued = json.loads(
        await _grpcurl(
            "-plaintext", "-d", ENQUEUE_JSON, rpc.address, "jobsvc.v1.JobService/Enqueue"
        )
    )
    job_id = enqueued["job"]["id"]
    assert enqueued["job"]["state"] == "JOB_STATE_PENDING"
    # grpcurl prints the proto field names, not the camelCase JSON names it also reads.
    assert enqueued["job"]["syndicate_listing"] == {"listing_id": "L1", "platforms": ["zillow"]}

    status_call = (
        "-plaintext", "-d", json.dumps({"jobId": job_id}), rpc.address,
        "jobsvc.v1.JobService/GetStatus",
    )  # fmt: skip
    status = json.loads(await _grpcurl(*status_call))
    assert (status["job"]["id"], status["job"]["state"]) == (job_id, "JOB_STATE_PENDING")

    # What the sidecar does once the handler ran; then GetStatus answers COMPLETED.
    assert job_log.claim(uuid.UUID(job_id), qstash_message_id="m", retried=0, lease_seconds=30)
    assert job_log.complete(uuid.UUID(job_id), {"published": ["zillow"]})
    done = json.loads(await _grpcurl(*status_call))
    assert (done["job"]["id"], done["job"]["state"]) == (job_id, "JOB_STATE_COMPLETED")
    assert done["job"]["result"] == {"published": ["zillow"]}

    scheduled = json.loads(
        await _grpcurl(
            "-plaintext", "-d", SCHEDULE_JSON, rpc.address, "jobsvc.v1.JobService/Schedule"
        )
    )
    assert scheduled["schedule"]["cron"] == "0 9 * * *"
    assert scheduled["schedule"]["crm_match"] == {"listing_id": "L1", "agent_id": "A1"}
    assert scheduled["schedule"]["schedule_id"]


# -- hostile input --------------------------------------------------------------------------------


def _notification(data: dict[str, Any]) -> pb.EnqueueRequest:
    template_data = Struct()
    template_data.update(data)
    return pb.EnqueueRequest(
        send_notification=payloads_pb2.SendNotification(
            type=payloads_pb2.NOTIFICATION_TYPE_CONFIRMATION,
            recipient_id="R1",
            template_id="T1",
            template_data=template_data,
        )
    )


def _cron(cron: str, **options: Any) -> pb.ScheduleRequest:
    return pb.ScheduleRequest(
        crm_match=payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1"), cron=cron, **options
    )


async def _counts(stub: job_service_pb2_grpc.JobServiceStub) -> tuple[int, int]:
    schedules = await stub.ListSchedules(pb.ListSchedulesRequest(page_size=1000))
    return len(await all_jobs(stub)), len(schedules.schedules)


async def test_hostile_well_formed_requests_are_invalid_argument_naming_the_field(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    """Values that reached unguarded code (INTERNAL), the broker (UNAVAILABLE) or, on
    PostgreSQL only, the database (UNAVAILABLE): refused alike on both databases, nothing
    written."""
    await stub.Enqueue(crm())
    await stub.Schedule(_cron("0 9 * * *", schedule_id="daily"))
    before = await _counts(stub)
    cases: list[tuple[Awaitable[Any], list[str]]] = [
        (stub.Enqueue(_notification({"n": float("nan")})), ["send_notification.template_data"]),
        (stub.Enqueue(_notification({"n": [float("inf")]})), ["send_notification.template_data"]),
        (
            stub.Enqueue(_notification({"a": {"b": -float("inf")}})),
            ["send_notification.template_data"],
        ),
        (stub.Schedule(_cron("0 9 * * *", time_zone="America")), ["time_zone"]),
        (stub.Schedule(_cron("0 9 * * *", time_zone="Asia")), ["time_zone"]),
        (stub.Schedule(_cron("0 9 * * *", time_zone="Etc")), ["time_zone"]),
        (stub.Schedule(_cron("0 9 * * *", time_zone="Europe/" + "x" * 300)), ["time_zone"]),
        # 31 February: valid syntax, never fires.
        (stub.Schedule(_cron("0 0 31 2 *")), ["cron"]),
        (stub.Schedule(_cron("0 0 30 2 *", schedule_id="daily")), ["cron"]),
        # NUL, which PostgreSQL text cannot hold.
        (stub.Schedule(_cron("0 9 * * *\x00")), ["cron"]),
        (stub.GetSchedule(pb.GetScheduleRequest(schedule_id="daily\x00")), ["schedule_id"]),
        (stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="\x00")), ["schedule_id"]),
        (stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id="d\x00")), ["schedule_id"]),
        (stub.ListJobs(pb.ListJobsRequest(schedule_id="daily\x00")), ["schedule_id"]),
        (
            stub.Enqueue(_notification({"k": "a\x00b"})),
            ["send_notification.template_data.k"],
        ),
        (
            stub.EnqueueBatch(
                pb.EnqueueBatchRequest(requests=[crm(), _notification({"l": ["ok", "\x00"]})])
            ),
            ["requests[1].send_notification.template_data.l[1]"],
        ),
    ]
    for call, fields in cases:
        got = await rejected(call)
        assert (got.code, got.reason, got.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            fields,
        ), fields
    assert await _counts(stub) == before
    # The schedule a refused update named is untouched.
    daily = await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="daily"))
    assert daily.schedule.cron == "0 9 * * *"


def _signed(document: bytes, key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    mac = hmac.new(key, document, hashlib.sha256).digest()[:16]
    return f"{b64(document)}.{b64(mac)}"


def _tampered(text: str) -> str:
    """``text`` with its middle character changed (every bit of it counts in base64, unlike
    the last character's, and the replacement always differs)."""
    middle = len(text) // 2
    return text[:middle] + ("B" if text[middle] == "A" else "A") + text[middle + 1 :]


async def test_page_tokens_cannot_be_forged_and_are_read_defensively(
    stub: job_service_pb2_grpc.JobServiceStub, engine: Engine
) -> None:
    for listing in ("L1", "L2", "L3"):
        await stub.Enqueue(crm(listing))
    await stub.Schedule(_cron("0 9 * * *", schedule_id="a"))
    await stub.Schedule(_cron("0 9 * * *", schedule_id="b"))
    jobs_token = (await stub.ListJobs(pb.ListJobsRequest(page_size=1))).next_page_token
    schedules_token = (
        await stub.ListSchedules(pb.ListSchedulesRequest(page_size=1))
    ).next_page_token
    body, signature = jobs_token.split(".")
    all_filters = pages.fingerprint([], [], None, None, None)
    # Guessable, unsigned documents as tokens used to be: the fingerprint is no secret.
    unsigned = base64.urlsafe_b64encode(
        json.dumps({"k": ["x", "y"], "f": all_filters}).encode()
    ).decode()
    forged = [
        unsigned,
        f"{unsigned}.{signature}",
        f"{body}.{_tampered(signature)}",
        f"{_tampered(body)}.{signature}",
        schedules_token,
        ".",
        "a.b.c",
        "\u00e9.\u00e9",
        "x" * 100_000,
    ]
    # Signed with the key the server uses, yet unreadable: each still a refusal, never INTERNAL.
    key = pages.derived_key(engine.url.render_as_string(hide_password=False))
    job_id = str(uuid.uuid4())
    signed_but_bad = [
        _signed(json.dumps({"k": position, "f": all_filters}).encode(), key)
        for position in (
            ["2026-01-01T00:00:00", job_id],  # naive
            ["+99999-01-01T00:00:00+00:00", job_id],
            ["2026-01-01T00:00:00+00:00", "garbage"],
            ["2026-01-01T00:00:00+25:00", job_id],
            [1, 2],
            [["nested"], job_id],
        )
    ] + [
        _signed(json.dumps({"x": 1}).encode(), key),
        _signed(b"[" * 100_000 + b"]" * 100_000, key),
        _signed(b"\xff\xfe", key),
    ]
    for token in forged + signed_but_bad:
        got = await rejected(stub.ListJobs(pb.ListJobsRequest(page_size=1, page_token=token)))
        assert (got.code, got.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), token
    for token in [*forged[:4], jobs_token, _signed(b'{"k":[1],"f":"x"}', key)]:
        got = await rejected(stub.ListSchedules(pb.ListSchedulesRequest(page_token=token)))
        assert (got.code, got.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), token
    # A replica with another key (JOBSVC_PAGE_TOKEN_KEY) refuses them; one with the same key reads
    # them.
    with pytest.raises(InvalidArgument):
        JobLog(engine, page_token_key=b"another key").list(page_size=1, page_token=jobs_token)
    keyed = JobLog(engine, page_token_key=b"shared key")
    _, shared_token = keyed.list(page_size=1)
    assert shared_token is not None
    assert len(JobLog(engine, page_token_key=b"shared key").list(page_token=shared_token)[0]) == 2
    # The real ones still page.
    rest = await stub.ListJobs(pb.ListJobsRequest(page_size=5, page_token=jobs_token))
    assert len(rest.jobs) == 2
    after = await stub.ListSchedules(pb.ListSchedulesRequest(page_token=schedules_token))
    assert [s.schedule_id for s in after.schedules] == ["b"]


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@transport_only
async def test_undecodable_bytes_are_invalid_argument_and_log_no_traceback(
    rpc: Running, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11, b"\x12\x80\x80\x80\x80\x10"]
    async with grpc.aio.insecure_channel(rpc.address) as channel:
        with caplog.at_level(logging.DEBUG):
            for method in ("Enqueue", "EnqueueBatch", "GetStatus", "Schedule", "ListJobs"):
                call = channel.unary_unary(f"/jobsvc.v1.JobService/{method}")
                for data in garbage:
                    got = await rejected(call(data))
                    assert (got.code, got.reason) == (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "MALFORMED_REQUEST",
                    ), (method, data)
            watch = channel.unary_stream("/jobsvc.v1.JobService/WatchJob")
            got = await rejected_stream(watch(b"\xff\xff"))
            assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(b"\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _errors_logged(caplog) == []


@transport_only
async def test_unauthenticated_garbage_is_unauthenticated_and_logs_no_traceback(
    make_rpc: MakeRpc, caplog: pytest.LogCaptureFixture
) -> None:
    rpc = await make_rpc(auth_token="s3cret")
    async with grpc.aio.insecure_channel(rpc.address) as channel:
        with caplog.at_level(logging.DEBUG):
            for method in ("Enqueue", "ListJobs"):
                call = channel.unary_unary(f"/jobsvc.v1.JobService/{method}")
                got = await rejected(call(b"\xff\xff\xff"))
                assert (got.code, got.reason) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "UNAUTHENTICATED",
                )
            watch = channel.unary_stream("/jobsvc.v1.JobService/WatchJob")
            got = await rejected_stream(watch(b"\xff\xff"))
            assert got.code == grpc.StatusCode.UNAUTHENTICATED
            # Authenticated, the same bytes are a malformed request.
            call = channel.unary_unary("/jobsvc.v1.JobService/Enqueue")
            got = await rejected(call(b"\xff\xff", metadata=(("authorization", "Bearer s3cret"),)))
            assert got.reason == "MALFORMED_REQUEST"
    assert _errors_logged(caplog) == []


async def test_errors_about_huge_input_stay_small_and_name_the_field(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    """Errors echoing what was sent stayed under gRPC's 16 KiB trailer limit only for small
    input; above it the caller saw RESOURCE_EXHAUSTED instead of the error."""
    before = await _counts(stub)
    platform = "p" * 9000
    cases: list[tuple[Awaitable[Any], grpc.StatusCode, list[str]]] = [
        (
            stub.Enqueue(
                pb.EnqueueRequest(
                    syndicate_listing=payloads_pb2.SyndicateListing(
                        listing_id="L1", platforms=[platform]
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["syndicate_listing.platforms[0]"],
        ),
        (
            stub.Enqueue(
                pb.EnqueueRequest(
                    syndicate_listing=payloads_pb2.SyndicateListing(
                        listing_id="L1", platforms=["zillow", "x" * 9000, "zillow"]
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["syndicate_listing.platforms[1]", "syndicate_listing.platforms[2]"],
        ),
        (
            stub.GetSchedule(pb.GetScheduleRequest(schedule_id="s" * 20_000)),
            grpc.StatusCode.NOT_FOUND,
            [],
        ),
        (
            stub.Schedule(_cron("0 9 * * *", schedule_id="s" * 20_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["schedule_id"],
        ),
        (
            stub.Schedule(_cron("0 9 * * * " + "1" * 20_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["cron"],
        ),
        (
            stub.Schedule(_cron("0 9 * * " + "1" * 20_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["cron"],
        ),
        (
            stub.GetStatus(pb.GetStatusRequest(job_id="j" * 100_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["job_id"],
        ),
    ]
    for call, code, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        got = rejection_of(info.value)
        assert (got.code, got.fields) == (code, fields)
        assert len(info.value.details() or "") < 1000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[pb.EnqueueRequest()] * 200))
    got = rejection_of(info.value)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert got.fields == [f"requests[{i}].payload" for i in range(20)]
    assert re.search(r"; and 1\d\d more$", info.value.details() or "")
    assert await _counts(stub) == before


# -- the typed client's retries -------------------------------------------------------------------

ENQUEUE = "/jobsvc.v1.JobService/Enqueue"
ENQUEUE_BATCH = "/jobsvc.v1.JobService/EnqueueBatch"
SCHEDULE = "/jobsvc.v1.JobService/Schedule"
RETRY = "/jobsvc.v1.JobService/RetryJob"


async def test_client_retries_after_a_lost_answer_create_nothing_twice(
    rpc: Running, stub: job_service_pb2_grpc.JobServiceStub
) -> None:
    """The server commits, its answer is lost (UNAVAILABLE, as when `jobsvc rpc` dies right
    after the commit): the client's retry finds what the first attempt created."""
    crm_payload = CrmMatch(listing_id="L1", agent_id="A1")
    async with CommitThenDrop(rpc.address) as proxy:
        async with AsyncJobClient(proxy.address) as client:
            proxy.lose_next(ENQUEUE)
            result = await client.enqueue(crm_payload)
            assert (proxy.dropped[ENQUEUE], proxy.forwarded[ENQUEUE]) == (1, 2)
            assert result.deduplicated is False  # its own first attempt, not another caller's

            proxy.lose_next(ENQUEUE_BATCH)
            batch = await client.enqueue_batch(
                [crm_payload, (crm_payload, EnqueueOptions(deduplication_id="mine"))]
            )
            assert proxy.forwarded[ENQUEUE_BATCH] == 2
            assert batch[0].deduplicated is False
            # With the caller's own key the client cannot tell its first attempt from another
            # caller's: deduplicated, as the service says.
            assert (batch[1].deduplicated, batch[1].job.deduplication_id) == (True, "mine")

            proxy.lose_next(SCHEDULE)
            schedule = await client.schedule(crm_payload, cron="0 9 * * *")
            assert proxy.forwarded[SCHEDULE] == 2
            assert isinstance(schedule, Schedule)

            # Not safe to repeat: the lost answer is reported, not retried.
            proxy.lose_next(SCHEDULE)
            with pytest.raises(ServiceUnavailable):
                await client.schedule(crm_payload, delay=timedelta(hours=1))
            assert proxy.forwarded[SCHEDULE] == 3

        def blocking() -> EnqueueResult:
            with JobClient(proxy.address) as client:
                return client.enqueue(crm_payload)

        proxy.lose_next(ENQUEUE)
        blocking_result = await asyncio.to_thread(blocking)
        assert proxy.forwarded[ENQUEUE] == 4

    ids = {job.id for job in await all_jobs(stub)}
    assert len(ids) == 5  # enqueue, two batch entries, the one-off run, the blocking enqueue
    assert {str(result.job.id), str(blocking_result.job.id), *(str(r.job.id) for r in batch)} <= ids
    schedules = await stub.ListSchedules(pb.ListSchedulesRequest())
    assert [s.schedule_id for s in schedules.schedules] == [schedule.id]
