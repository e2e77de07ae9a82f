"""The four job handlers through the real pipeline: gRPC Enqueue → the embedded local QStash
server → the sidecar → the handler → the systems around the service, played by real local
servers (``tests.standins``: HTTP stand-ins for the listing and application services, the CRM,
the platforms and the SMS gateway; an aiosmtpd SMTP server), on SQLite and PostgreSQL.

Time runs fast: the local QStash server at ``time_scale`` 0.001 (a 12 s backoff takes 12 ms)
and reminder steps 1 s apart (1 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.duration_pb2 import Duration

from jobsvc.adapters.settings import AdapterSettings, HttpSystem
from jobsvc.adapters.settings import SmtpServer as SmtpSettings
from jobsvc.localqstash import LocalQStashSettings
from jobsvc.payloads import Platform
from jobsvc.runtime import Parts, running
from jobsvc.settings import Settings
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, payloads_pb2
from tests.polling import eventually
from tests.standins.http import SMS_GATEWAY, CrmContact, ExternalSystems
from tests.standins.records import ADDRESS, applicant, seeded
from tests.standins.smtp import SmtpServer

T = TypeVar("T")
COMPLETED = jobs_pb2.JOB_STATE_COMPLETED
FAILED = jobs_pb2.JOB_STATE_FAILED
FINAL = (COMPLETED, FAILED, jobs_pb2.JOB_STATE_CANCELLED)


@pytest.fixture(scope="module")
def systems() -> Iterator[ExternalSystems]:
    with ExternalSystems() as systems:
        yield systems


@pytest.fixture
def external(systems: ExternalSystems) -> ExternalSystems:
    return seeded(systems)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Pipeline:
    parts: Parts
    stub: Any
    external: ExternalSystems
    smtp: SmtpServer
    outbox: Path

    async def enqueue(self, **payload: Any) -> str:
        response = await self.stub.Enqueue(pb.EnqueueRequest(**payload))
        return str(response.job.id)

    async def status(self, job_id: str) -> jobs_pb2.Job:
        return (await self.stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job

    async def final(self, job_id: str, timeout: float = 15) -> jobs_pb2.Job:  # noqa: ASYNC109
        async def check() -> jobs_pb2.Job | None:
            job = await self.status(job_id)
            return job if job.state in FINAL else None

        return await eventually(check, what=f"job {job_id} to end", timeout=timeout)

    async def reminders(self) -> list[jobs_pb2.Job]:
        request = pb.ListJobsRequest(page_size=100, types=[jobs_pb2.JOB_TYPE_SEND_REMINDER])
        jobs = list((await self.stub.ListJobs(request)).jobs)
        return sorted(jobs, key=lambda job: job.create_time.ToDatetime())


def step_of(job: jobs_pb2.Job) -> str:
    name = payloads_pb2.ReminderType.Name(job.send_reminder.reminder_type)
    return name.removeprefix("REMINDER_TYPE_").lower()


def result_of(job: jobs_pb2.Job) -> dict[str, Any]:
    return json_format.MessageToDict(job.result)


@contextlib.asynccontextmanager
async def pipeline_on(
    database_url: str,
    external: ExternalSystems,
    smtp: SmtpServer,
    outbox: Path,
    *,
    reminder_interval: timedelta = timedelta(seconds=1),
) -> AsyncIterator[Pipeline]:
    port = free_port()
    settings = Settings(
        database_url=database_url,
        grpc_port=0,
        sidecar_port=port,
        public_url=f"http://127.0.0.1:{port}",
        local_qstash=LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001),
        relay_interval=timedelta(milliseconds=50),
        handler_timeout=timedelta(seconds=5),
        reminder_interval=reminder_interval,
        adapters=AdapterSettings(
            listing_service=HttpSystem(url=external.listing_service_url, timeout_seconds=2),
            application_service=HttpSystem(url=external.application_service_url),
            crm=HttpSystem(url=external.crm_url),
            platforms={p: HttpSystem(url=external.platform_url(p)) for p in Platform},
            smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, starttls=False),
            sms_gateway=HttpSystem(url=external.sms_gateway_url),
            sms_sender="+15550000000",
            email_from="Leasing <leasing@example.com>",
            outbox_dir=outbox,
        ),
    )
    async with running(
        settings, rpc=True, sidecar=True, relay=True, embed_local_qstash=True, migrate=True
    ) as parts:
        assert parts.rpc_port is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{parts.rpc_port}")
        try:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            yield Pipeline(parts, stub, external, smtp, outbox)
        finally:
            await channel.close()


@pytest.fixture
async def pipeline(
    database_url: str, external: ExternalSystems, smtp: SmtpServer, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    async with pipeline_on(database_url, external, smtp, tmp_path / "outbox") as pipeline:
        yield pipeline


def reminder(applicant_id: str, step: str = "day1") -> dict[str, Any]:
    return {
        "send_reminder": payloads_pb2.SendReminder(
            applicant_id=applicant_id,
            reminder_type=f"REMINDER_TYPE_{step.upper()}",
            missing_docs=["proof_of_income"],
        ),
        "deduplication_id": f"reminder:{applicant_id}:{step}",
    }


# -- reminders ------------------------------------------------------------------------------------


async def test_a_reminder_sequence_runs_day1_to_day7_each_step_once(pipeline: Pipeline) -> None:
    await pipeline.enqueue(**reminder("A1"))

    async def four_done() -> list[jobs_pb2.Job] | None:
        jobs = await pipeline.reminders()
        return jobs if len(jobs) == 4 and all(j.state == COMPLETED for j in jobs) else None

    jobs = await eventually(four_done, what="four completed reminder steps", timeout=15)
    steps = [step_of(job) for job in jobs]
    assert steps == ["day1", "day3", "day5", "day7"]
    results = [result_of(job) for job in jobs]
    assert [r["next"]["step"] if r["next"] else None for r in results] == [
        "day3",
        "day5",
        "day7",
        None,
    ]
    # Each step was created once, under its deduplication id, 1 s (scaled) after the previous.
    for earlier, later in itertools.pairwise(jobs):
        assert result_of(earlier)["next"]["jobId"] == later.id
    # Four emails and four texts, one per step, to the applicant, naming what is missing.
    mails = pipeline.smtp.messages
    assert len(mails) == 4
    assert all(mail.rcpt_tos == ("dana@applicants.example",) for mail in mails)
    assert all("Dana Reyes" in mail.message.get_body(("plain",)).get_content() for mail in mails)  # type: ignore[union-attr]
    assert all("photo ID" in str(mail.raw) or "photo_id" in str(mail.raw) for mail in mails)
    texts = pipeline.external.sms_messages
    assert len(texts) == 4
    assert {sms.to for sms in texts} == {"+15551230001"}
    assert all(r["channels"]["email"]["status"] == "sent" for r in results)
    # Nothing still waiting.
    await asyncio.sleep(0.2)
    assert len(await pipeline.reminders()) == 4


async def test_documents_completing_after_day3_end_the_sequence(
    database_url: str, external: ExternalSystems, smtp: SmtpServer, tmp_path: Path
) -> None:
    # Steps 500 s apart (0.5 s here): time to complete the documents between day3 and day5.
    async with pipeline_on(
        database_url, external, smtp, tmp_path, reminder_interval=timedelta(seconds=500)
    ) as pipeline:
        await pipeline.enqueue(**reminder("A1"))

        async def day3_done() -> list[jobs_pb2.Job] | None:
            jobs = await pipeline.reminders()
            done = [j for j in jobs if j.state == COMPLETED]
            return jobs if [step_of(j) for j in done] == ["day1", "day3"] else None

        await eventually(day3_done, what="day1 and day3", timeout=15)
        with external.lock:
            external.applicants["A1"]["documentsComplete"] = True

        async def ended() -> list[jobs_pb2.Job] | None:
            jobs = await pipeline.reminders()
            return jobs if len(jobs) == 3 and all(j.state in FINAL for j in jobs) else None

        jobs = await eventually(ended, what="day5 to end the sequence", timeout=15)
        assert [step_of(j) for j in jobs] == ["day1", "day3", "day5"]
        assert [j.state for j in jobs] == [COMPLETED] * 3
        day5 = result_of(jobs[-1])
        assert (day5["skipped"], day5["reason"]) == (True, "documents complete")
        assert len(pipeline.smtp.messages) == 2  # day1 and day3 only
        await asyncio.sleep(0.7)  # a day7 would have come by now
        assert len(await pipeline.reminders()) == 3


async def test_an_unknown_applicant_fails_at_once_without_retries(pipeline: Pipeline) -> None:
    job_id = await pipeline.enqueue(**reminder("nobody"))
    job = await pipeline.final(job_id)
    assert job.state == FAILED
    assert job.attempts == 1
    assert "applicant nobody not found" in job.last_error
    assert pipeline.smtp.messages == []


async def test_a_retried_step_sends_each_channel_once_and_enqueues_the_next_step_once(
    pipeline: Pipeline,
) -> None:
    pipeline.external.applicants["A2"] = applicant("A2")
    # As if an earlier attempt of day5 had enqueued day7 already. It waits 30 days (43 min
    # here), so it cannot come due and send its own email however slowly day5 runs.
    day7 = (
        await pipeline.stub.Enqueue(
            pb.EnqueueRequest(**reminder("A2", "day7"), delay=Duration(seconds=30 * 86400))
        )
    ).job.id
    # The gateway fails day5's first text: the attempt is retried.
    pipeline.external.answer_next(SMS_GATEWAY, status=503, times=1)
    job = await pipeline.final(await pipeline.enqueue(**reminder("A2", "day5")))
    assert (job.state, job.attempts) == (COMPLETED, 2)
    result = result_of(job)
    assert result["next"] == {"step": "day7", "jobId": day7}  # the existing day7, not a second
    assert len([j for j in await pipeline.reminders() if step_of(j) == "day7"]) == 1
    assert len(pipeline.smtp.messages) == 1  # the email of attempt 1 was not sent again
    assert len(pipeline.external.sms_messages) == 1
    await pipeline.stub.CancelJob(pb.CancelJobRequest(job_id=day7))


# -- syndication ----------------------------------------------------------------------------------


def syndicate(*platforms: str) -> dict[str, Any]:
    return {
        "syndicate_listing": payloads_pb2.SyndicateListing(listing_id="L1", platforms=platforms)
    }


async def test_partial_syndication_failure_then_recovery(pipeline: Pipeline) -> None:
    external = pipeline.external
    # Zillow is down for the first two attempts, Craigslist asks to come back in 30 s
    # (30 ms here), Facebook refuses the listing as invalid: reported, not retried.
    external.answer_next("/platforms/zillow", status=503, times=2)
    external.answer_next(
        "/platforms/craigslist", status=429, headers={"Retry-After": "30"}, times=1
    )
    external.reject_listings(Platform.FACEBOOK, "price must include utilities")
    job_id = await pipeline.enqueue(**syndicate("zillow", "craigslist", "facebook", "apartments"))
    job = await pipeline.final(job_id)
    assert job.state == COMPLETED
    assert job.attempts == 3
    outcome = result_of(job)["platforms"]
    assert set(outcome) == {"zillow", "craigslist", "facebook", "apartments"}
    assert outcome["facebook"]["status"] == "rejected"
    assert "price must include utilities" in outcome["facebook"]["error"]
    for name in ("zillow", "craigslist", "apartments"):
        assert outcome[name]["status"] == "published"
        [listed] = external.published(name)
        assert outcome[name]["listingId"] == listed.id
    # Each platform that took the listing was asked until it did, and no more.
    assert len(external.requests_to("/platforms/apartments")) == 1
    assert len(external.requests_to("/platforms/craigslist")) == 2
    assert len(external.requests_to("/platforms/zillow")) == 3
    assert len(external.requests_to("/platforms/facebook")) == 1
    # The failed attempts are in the history, with why.
    errors = [attempt.error for attempt in job.history if attempt.error]
    assert any("zillow" in error for error in errors)
    # Craigslist's Retry-After (30 s, 30 ms here) set the second attempt's time, not QStash's
    # first backoff (12 s, 12 ms here).
    first, second = job.history[0], job.history[1]
    gap = second.start_time.ToDatetime() - first.finish_time.ToDatetime()
    assert gap >= timedelta(milliseconds=28)


async def test_a_listing_the_listing_service_does_not_know_fails_permanently(
    pipeline: Pipeline,
) -> None:
    job_id = await pipeline.enqueue(
        syndicate_listing=payloads_pb2.SyndicateListing(listing_id="L404", platforms=["zillow"])
    )
    job = await pipeline.final(job_id)
    assert (job.state, job.attempts) == (FAILED, 1)
    assert "listing L404 not found" in job.last_error
    assert pipeline.external.published("zillow") == []


async def test_an_unknown_platform_is_refused_at_enqueue(pipeline: Pipeline) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pipeline.enqueue(**syndicate("zillow", "myspace"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "syndicate_listing.platforms[1]" in (caught.value.details() or "")


# -- CRM ------------------------------------------------------------------------------------------


async def test_crm_matches_are_found_and_recorded_once(pipeline: Pipeline) -> None:
    external = pipeline.external
    external.crm_contacts["AG1"] = [
        CrmContact(id="c1", name="Lee", max_rent=2500, min_bedrooms=2),
        CrmContact(id="c2", name="Sam", max_rent=2000, min_bedrooms=1),
        CrmContact(id="c3", name="Kim", max_rent=3000, min_bedrooms=1),
    ]
    # The first attempt's recording fails: the retry records the same matches again.
    external.answer_next("/crm/agents/AG1/listings", status=500, times=1)
    job_id = await pipeline.enqueue(
        crm_match=payloads_pb2.CrmMatch(listing_id="L1", agent_id="AG1")
    )
    job = await pipeline.final(job_id)
    assert (job.state, job.attempts) == (COMPLETED, 2)
    matches = result_of(job)["matches"]
    assert [m["contactId"] for m in matches] == ["c1", "c3"]
    assert external.crm_matches[("AG1", "L1")] == ["c1", "c3"]


# -- notifications --------------------------------------------------------------------------------


def adverse_action(recipient: str) -> dict[str, Any]:
    data = struct_pb2.Struct()
    data.update(
        {
            "listing_address": ADDRESS,
            "decision_date": "2026-11-27",
            "reasons": ["Insufficient credit history"],
            "agency_name": "Example Screening Co.",
            "agency_address": "PO Box 100, Springfield",
            "agency_phone": "+1 800 555 0100",
        }
    )
    return {
        "send_notification": payloads_pb2.SendNotification(
            type="NOTIFICATION_TYPE_ADVERSE_ACTION",
            recipient_id=recipient,
            template_id="adverse_action_notice",
            template_data=data,
        )
    }


async def test_an_adverse_action_notice_survives_a_dropped_connection_and_goes_out_once(
    pipeline: Pipeline,
) -> None:
    pipeline.smtp.drop_next_messages(1)
    job_id = await pipeline.enqueue(**adverse_action("A1"))
    job = await pipeline.final(job_id)
    assert (job.state, job.attempts) == (COMPLETED, 2)
    [mail] = pipeline.smtp.messages
    assert pipeline.smtp.transactions == 2  # tried twice, delivered once
    assert mail.rcpt_tos == ("dana@applicants.example",)
    assert mail.message["Message-ID"] == f"<{job_id}.email@jobsvc.invalid>"
    assert "Example Screening Co." in mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # The text went out on the first attempt and was not sent again.
    assert len(pipeline.external.sms_messages) == 1
    channels = result_of(job)["channels"]
    assert channels["email"]["status"] == "sent"
    assert channels["sms"]["status"] == "sent"


async def test_a_notification_missing_template_data_is_refused_at_enqueue(
    pipeline: Pipeline,
) -> None:
    request = adverse_action("A1")
    del request["send_notification"].template_data["agency_phone"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pipeline.enqueue(**request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send_notification.template_data.agency_phone" in (caught.value.details() or "")
    listed = await pipeline.stub.ListJobs(pb.ListJobsRequest(page_size=10))
    assert list(listed.jobs) == []


# -- where the handlers run -----------------------------------------------------------------------


@pytest.mark.parametrize(("sidecar", "announced"), [(False, False), (True, True)])
async def test_only_a_part_that_runs_handlers_builds_their_adapters(
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sidecar: bool,
    announced: bool,
) -> None:
    # `jobsvc rpc` beside a QStash does not run handlers: no adapters, no warnings about them.
    port = free_port()
    settings = Settings(
        database_url=database_url,
        grpc_port=0,
        sidecar_port=port,
        public_url=f"http://127.0.0.1:{port}",
        local_qstash=LocalQStashSettings(port=0, database_url=database_url),
        adapters=AdapterSettings(outbox_dir=tmp_path / "outbox"),
    )
    caplog.set_level(logging.WARNING, logger="jobsvc.adapters")
    async with running(
        settings, rpc=True, sidecar=sidecar, relay=False, embed_local_qstash=True, migrate=True
    ) as parts:
        assert (parts.adapters is not None) is announced
    warned = [r for r in caplog.records if getattr(r, "action", None) == "dev_adapter"]
    assert bool(warned) is announced
