"""Each job handler run directly, one attempt at a time, on the real adapters (HTTP and SMTP)
against local stand-ins and on the real job log, to pin down the outcome of every way an attempt
can end: completed, skipped, retried (and when), failed; and what the next attempt of the same
job does again and what it does not. ``test_job_handlers`` runs the handlers through the whole
pipeline instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from jobsvc.adapters.http import (
    HttpApplicationService,
    HttpCrm,
    HttpEndpoint,
    HttpListingService,
    HttpSmsGateway,
    HttpSyndicationPlatform,
)
from jobsvc.adapters.smtp import SmtpEmailSender
from jobsvc.db import JobLog
from jobsvc.handlers import (
    HandlerContext,
    HandlerPorts,
    HandlerRegistry,
    Outcome,
    OutcomeKind,
    default_registry,
    job_logger,
    run,
)
from jobsvc.handlers.notifier import Notifier
from jobsvc.jobs import Job, JobType
from jobsvc.payloads import (
    CrmMatch,
    NotificationType,
    Payload,
    Platform,
    ReminderType,
    SendNotification,
    SendReminder,
    SyndicateListing,
)
from jobsvc.service.progress import JobProgress
from jobsvc.templates import default_catalog
from tests.handler_ports import FollowUpCall, RecordedFollowUps
from tests.standins import (
    APPLICATION_SERVICE,
    CRM,
    LISTING_SERVICE,
    SMS_GATEWAY,
    CrmContact,
    ExternalSystems,
    platform_prefix,
)
from tests.standins.records import ADDRESS, EMAIL, PHONE, applicant, seeded
from tests.standins.smtp import ReceivedMail, SmtpServer

SMS_SENDER = "+15550000000"
# Not the default two days, so the follow-up's delay shows it comes from the configuration.
REMINDER_INTERVAL = timedelta(hours=36)
HANDLER_TIMEOUT = timedelta(seconds=10)

COMPLETED = OutcomeKind.COMPLETED
RETRY = OutcomeKind.RETRY
FAILED = OutcomeKind.FAILED

ZILLOW = Platform.ZILLOW
APARTMENTS = Platform.APARTMENTS
CRAIGSLIST = Platform.CRAIGSLIST
FACEBOOK = Platform.FACEBOOK


@dataclass(kw_only=True)
class Handlers:
    """The default registry on real adapters, and jobs in the job log to run it on."""

    registry: HandlerRegistry
    job_log: JobLog
    follow_ups: RecordedFollowUps
    attempts: dict[uuid.UUID, int] = field(default_factory=dict)

    def job(self, payload: Payload) -> Job:
        job, _ = self.job_log.insert(
            Job(
                id=uuid.uuid4(),
                type=payload.job_type,
                payload=payload.to_dict(),
                created_at=datetime.now(UTC),
            )
        )
        return job

    async def attempt(self, job: Job) -> Outcome:
        """Run the job's next attempt (1, 2, …) as a delivery would."""
        number = self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
        ctx = HandlerContext(
            job_id=job.id,
            job_type=job.type,
            attempt=number,
            max_retries=job.max_retries,
            logger=job_logger(job_id=job.id, job_type=job.type, attempt=number),
            enqueue=self.follow_ups,
            progress=JobProgress(self.job_log.progress, job.id),
        )
        return await run(self.registry, job.type, job.payload, ctx, HANDLER_TIMEOUT)

    def notes(self, job: Job) -> dict[str, dict[str, Any]]:
        return self.job_log.progress.all(job.id)

    def fail_and_requeue(self, job: Job, error: str) -> None:
        """Move the job as the service does when an attempt fails permanently and an operator
        then retries it from the dead-letter queue: processing → failed → pending."""
        claimed = self.job_log.claim(job.id, qstash_message_id=None, retried=0, lease_seconds=60)
        assert claimed is not None
        assert self.job_log.attempt_failed(job.id, error, final=True, attempt=claimed.attempts)
        self.job_log.requeue_failed(job.id)


HandlersFactory = Callable[..., Handlers]


@pytest.fixture(scope="module")
def running_systems() -> Iterator[ExternalSystems]:
    with ExternalSystems() as systems:
        yield systems


@pytest.fixture
def systems(running_systems: ExternalSystems) -> ExternalSystems:
    """The module's stand-in server, emptied for this test, with listing L1 and applicant A1."""
    return seeded(running_systems)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_handlers(
    systems: ExternalSystems, smtp: SmtpServer, http: httpx.AsyncClient, job_log: JobLog
) -> HandlersFactory:
    """``make_handlers(listing_timeout_seconds=2.0)``: every port on its real adapter."""

    def make(*, listing_timeout_seconds: float = 2.0) -> Handlers:
        def endpoint(url: str, name: str, timeout_seconds: float = 2.0) -> HttpEndpoint:
            return HttpEndpoint(
                url, token=None, timeout_seconds=timeout_seconds, client=http, name=name
            )

        ports = HandlerPorts(
            listings=HttpListingService(
                endpoint(systems.listing_service_url, "listing service", listing_timeout_seconds)
            ),
            applications=HttpApplicationService(
                endpoint(systems.application_service_url, "application service")
            ),
            crm=HttpCrm(endpoint(systems.crm_url, "CRM")),
            platforms={
                p: HttpSyndicationPlatform(p, endpoint(systems.platform_url(p), p.value))
                for p in Platform
            },
            notifier=Notifier(
                templates=default_catalog(),
                email=SmtpEmailSender(
                    host="127.0.0.1",
                    port=smtp.port,
                    starttls=False,
                    from_address="Leasing <leasing@example.com>",
                    timeout_seconds=2,
                ),
                sms=HttpSmsGateway(
                    endpoint(systems.sms_gateway_url, "SMS gateway"), sender=SMS_SENDER
                ),
            ),
            reminder_interval=REMINDER_INTERVAL,
        )
        return Handlers(
            registry=default_registry(ports), job_log=job_log, follow_ups=RecordedFollowUps()
        )

    return make


@pytest.fixture
def handlers(make_handlers: HandlersFactory) -> Handlers:
    return make_handlers()


def published(systems: ExternalSystems, platform: Platform) -> dict[str, Any]:
    """The outcome a platform's one accepted listing should be recorded as."""
    [listed] = systems.published(platform)
    return {"status": "published", "listingId": listed.id, "url": listed.url}


def platform_requests(systems: ExternalSystems, *platforms: Platform) -> list[int]:
    return [len(systems.requests_to(platform_prefix(p))) for p in platforms]


def error_of(outcome: Outcome) -> str:
    assert outcome.error is not None
    return outcome.error


def result_of(outcome: Outcome) -> dict[str, Any]:
    assert outcome.result is not None
    return outcome.result


def subject(mail: ReceivedMail) -> str:
    # A long Subject is folded right after the colon; the parser keeps the fold's space.
    return str(mail.message["Subject"]).strip()


def plain_body(mail: ReceivedMail) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


# -- syndication ----------------------------------------------------------------------------------


async def test_a_429_retries_after_its_retry_after_and_the_next_attempt_publishes_the_rest(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.answer_next(
        platform_prefix(CRAIGSLIST),
        status=429,
        headers={"Retry-After": "30"},
        body={"error": "rate limit reached"},
    )
    job = handlers.job(
        SyndicateListing(listing_id="L1", platforms=(ZILLOW, CRAIGSLIST, APARTMENTS))
    )

    first = await handlers.attempt(job)

    assert first.kind is RETRY
    assert first.retry_after == timedelta(seconds=30)
    assert "1 of 3 platforms" in error_of(first)
    assert "craigslist" in error_of(first)
    assert "rate limit reached" in error_of(first)
    assert systems.published(CRAIGSLIST) == []
    notes = handlers.notes(job)
    assert notes["platform:zillow"] == published(systems, ZILLOW)
    assert notes["platform:apartments"] == published(systems, APARTMENTS)
    assert notes["platform:craigslist"]["status"] == "failed"
    assert notes["platform:craigslist"]["attempt"] == 1

    second = await handlers.attempt(job)

    assert second.kind is COMPLETED
    assert not second.skipped
    assert second.result == {
        "listingId": "L1",
        "platforms": {
            "zillow": published(systems, ZILLOW),
            "craigslist": published(systems, CRAIGSLIST),
            "apartments": published(systems, APARTMENTS),
        },
    }
    assert list(result_of(second)["platforms"]) == ["zillow", "craigslist", "apartments"]
    assert platform_requests(systems, ZILLOW, CRAIGSLIST, APARTMENTS) == [1, 2, 1]
    # The same idempotency key both times, so a platform that took the first could drop it.
    assert [
        r.header("Idempotency-Key") for r in systems.requests_to(platform_prefix(CRAIGSLIST))
    ] == [f"{job.id}:craigslist"] * 2
    assert handlers.notes(job)["platform:craigslist"] == published(systems, CRAIGSLIST)

    # A duplicate delivery of the finished job asks nobody anything and reports the same.
    requests = len(systems.requests)
    third = await handlers.attempt(job)
    assert (third.kind, third.result) == (COMPLETED, second.result)
    assert len(systems.requests) == requests


async def test_a_platform_down_without_retry_after_leaves_the_wait_to_the_backoff(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.answer_next(platform_prefix(ZILLOW), status=503, body={"error": "maintenance"})
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW, FACEBOOK)))

    outcome = await handlers.attempt(job)

    assert outcome.kind is RETRY
    assert outcome.retry_after is None
    assert "503" in error_of(outcome)
    assert "maintenance" in error_of(outcome)
    assert handlers.notes(job)["platform:facebook"] == published(systems, FACEBOOK)


async def test_a_platforms_html_error_page_leaves_only_its_words_in_the_error(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    page = (
        "<html><head><title>503 Service Unavailable</title><style>h1 { color: red }</style>"
        "</head><body>\r\n<h1>Service Unavailable</h1>\x00\r\n<script>var x;</script>"
        + "<p>The server is temporarily unable to service your request.</p>\n" * 4000
        + "</body></html>"
    )
    systems.answer_next(
        platform_prefix(ZILLOW), status=503, headers={"content-type": "text/html"}, body=page
    )
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW,)))

    outcome = await handlers.attempt(job)

    assert outcome.kind is RETRY
    error = error_of(outcome)  # what the job log stores as the attempt's and the job's error
    assert "answered 503: 503 Service Unavailable Service Unavailable The server is" in error
    assert len(error) < 600
    for unwanted in ("<", ">", "\x00", "\r", "color", "var x"):
        assert unwanted not in error


async def test_the_latest_retry_after_of_several_platforms_is_the_one_honoured(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.answer_next(platform_prefix(ZILLOW), status=429, headers={"Retry-After": "30"})
    systems.answer_next(platform_prefix(CRAIGSLIST), status=429, headers={"Retry-After": "120"})
    systems.answer_next(platform_prefix(APARTMENTS), status=502)
    job = handlers.job(
        SyndicateListing(listing_id="L1", platforms=(ZILLOW, CRAIGSLIST, APARTMENTS))
    )

    outcome = await handlers.attempt(job)

    assert outcome.kind is RETRY
    assert outcome.retry_after == timedelta(seconds=120)
    assert "3 of 3 platforms" in error_of(outcome)


async def test_a_platform_rejecting_the_listing_is_reported_and_the_job_completes(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.reject_listings(FACEBOOK, "price must include utilities")
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW, FACEBOOK)))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert not outcome.skipped
    platforms = result_of(outcome)["platforms"]
    assert platforms["zillow"] == published(systems, ZILLOW)
    assert platforms["facebook"]["status"] == "rejected"
    assert "422" in platforms["facebook"]["error"]
    assert "price must include utilities" in platforms["facebook"]["error"]
    assert systems.published(FACEBOOK) == []


async def test_a_rejecting_platform_is_not_asked_again_when_another_platform_retries_the_job(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.reject_listings(FACEBOOK, "price must include utilities")
    systems.answer_next(platform_prefix(ZILLOW), status=503)
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW, FACEBOOK)))

    first = await handlers.attempt(job)
    second = await handlers.attempt(job)

    assert (first.kind, second.kind) == (RETRY, COMPLETED)
    assert result_of(second)["platforms"]["zillow"] == published(systems, ZILLOW)
    assert result_of(second)["platforms"]["facebook"]["status"] == "rejected"
    assert platform_requests(systems, ZILLOW, FACEBOOK) == [2, 1]


async def test_every_platform_rejecting_the_listing_fails_the_job(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.reject_listings(ZILLOW, "photos must be at least 1024 px wide")
    systems.reject_listings(FACEBOOK, "price must include utilities")
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW, FACEBOOK)))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "every platform rejected the listing" in error_of(outcome)
    assert "photos must be at least 1024 px wide" in error_of(outcome)
    assert "price must include utilities" in error_of(outcome)
    assert systems.published(ZILLOW) == systems.published(FACEBOOK) == []


async def test_an_operators_retry_of_a_listing_every_platform_rejected_asks_the_platforms_again(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.reject_listings(ZILLOW, "photos must be at least 1024 px wide")
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW,)))
    first = await handlers.attempt(job)
    assert first.kind is FAILED
    # The listing is fixed, then an operator retries the job from the dead-letter queue.
    systems.reject_listings(ZILLOW, None)
    handlers.fail_and_requeue(job, error_of(first))

    retried = await handlers.attempt(job)

    assert platform_requests(systems, ZILLOW) == [2]
    assert retried.kind is COMPLETED
    assert result_of(retried)["platforms"]["zillow"] == published(systems, ZILLOW)


async def test_a_listing_the_listing_service_does_not_know_fails_without_asking_a_platform(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    job = handlers.job(SyndicateListing(listing_id="L404", platforms=(ZILLOW, FACEBOOK)))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "listing L404 not found" in error_of(outcome)
    assert platform_requests(systems, ZILLOW, FACEBOOK) == [0, 0]
    assert handlers.notes(job) == {}


async def test_a_listing_service_slower_than_its_timeout_is_a_retry(
    systems: ExternalSystems, make_handlers: HandlersFactory
) -> None:
    handlers = make_handlers(listing_timeout_seconds=0.3)
    systems.delay_next(LISTING_SERVICE, 30.0)  # the client giving up ends the wait
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW,)))

    started = time.monotonic()
    outcome = await handlers.attempt(job)
    elapsed = time.monotonic() - started

    assert outcome.kind is RETRY
    assert outcome.retry_after is None
    assert "no answer within 0.3 s" in error_of(outcome)
    assert elapsed < 15  # gave up at its own timeout, not when the answer came (30 s)
    assert platform_requests(systems, ZILLOW) == [0]


@pytest.mark.parametrize(
    "body",
    ["<html>502 Bad Gateway</html>", {"id": "L1", "title": "Sunny two-bedroom"}, ["L1"]],
    ids=["not-json", "fields-missing", "not-an-object"],
)
async def test_a_malformed_listing_is_a_retry_and_the_next_attempt_publishes(
    systems: ExternalSystems, handlers: Handlers, body: Any
) -> None:
    systems.malformed_next(LISTING_SERVICE, body)
    job = handlers.job(SyndicateListing(listing_id="L1", platforms=(ZILLOW,)))

    first = await handlers.attempt(job)

    assert first.kind is RETRY
    assert "listing service" in error_of(first)
    assert platform_requests(systems, ZILLOW) == [0]

    second = await handlers.attempt(job)

    assert second.kind is COMPLETED
    assert result_of(second)["platforms"]["zillow"] == published(systems, ZILLOW)


# -- reminders ------------------------------------------------------------------------------------


def reminder(step: ReminderType, applicant_id: str = "A1") -> SendReminder:
    return SendReminder(
        applicant_id=applicant_id, reminder_type=step, missing_docs=("proof_of_income",)
    )


def nothing_sent(systems: ExternalSystems, smtp: SmtpServer) -> bool:
    return smtp.transactions == 0 and systems.requests_to(SMS_GATEWAY) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"documentsComplete": True}, "documents complete"),
        ({"status": "withdrawn"}, "application withdrawn"),
        ({"status": "expired"}, "application expired"),
        ({"expiresAt": "2021-03-01T17:00:00-05:00"}, "application expired"),
    ],
    ids=["documents-complete", "withdrawn", "expired", "expires-at-passed"],
)
async def test_a_reminder_the_application_no_longer_needs_is_skipped_and_ends_the_sequence(
    systems: ExternalSystems,
    smtp: SmtpServer,
    handlers: Handlers,
    changes: dict[str, Any],
    reason: str,
) -> None:
    systems.applicants["A1"] = applicant("A1", **changes)
    job = handlers.job(reminder(ReminderType.DAY3))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert outcome.skipped
    assert outcome.result == {
        "applicantId": "A1",
        "step": "day3",
        "skipped": True,
        "reason": reason,
    }
    assert handlers.follow_ups.calls == []
    assert nothing_sent(systems, smtp)


async def test_a_reminder_for_an_unknown_applicant_fails(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    job = handlers.job(reminder(ReminderType.DAY1, "nobody"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "applicant nobody not found" in error_of(outcome)
    assert handlers.follow_ups.calls == []
    assert nothing_sent(systems, smtp)


async def test_a_reminder_while_the_application_service_is_down_is_a_retry_when_it_says(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.answer_next(APPLICATION_SERVICE, status=503, headers={"Retry-After": "5"})
    job = handlers.job(reminder(ReminderType.DAY1))

    outcome = await handlers.attempt(job)

    assert outcome.kind is RETRY
    assert outcome.retry_after == timedelta(seconds=5)
    assert "application service" in error_of(outcome)
    assert handlers.follow_ups.calls == []
    assert nothing_sent(systems, smtp)


async def test_a_day1_reminder_goes_out_by_email_and_sms_and_enqueues_day3_once(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A1"] = applicant("A1", expiresAt="2099-03-14T17:00:00-04:00")
    job = handlers.job(reminder(ReminderType.DAY1))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert not outcome.skipped
    [mail] = smtp.messages
    assert mail.rcpt_tos == (EMAIL,)
    assert subject(mail) == f"Documents needed for your application for {ADDRESS}"
    assert mail.message["Message-ID"] == f"<{job.id}.email@jobsvc.invalid>"
    body = plain_body(mail)
    assert "Dana Reyes" in body
    assert "by March 14, 2099" in body
    assert "proof_of_income" in body
    assert "photo_id" in body
    [sms] = systems.sms_messages
    assert (sms.to, sms.sender, sms.idempotency_key) == (PHONE, SMS_SENDER, f"{job.id}.sms")
    [follow_up] = handlers.follow_ups.calls
    assert follow_up == FollowUpCall(
        job_type=JobType.SEND_REMINDER,
        payload={
            "applicantId": "A1",
            "reminderType": "day3",
            "missingDocs": ["proof_of_income", "photo_id"],
        },
        delay=REMINDER_INTERVAL,
        deduplication_id="reminder:A1:day3",
        job_id=follow_up.job_id,
    )
    assert outcome.result == {
        "applicantId": "A1",
        "step": "day1",
        "channels": {
            "email": {"status": "sent", "to": EMAIL, "id": f"<{job.id}.email@jobsvc.invalid>"},
            "sms": {"status": "sent", "to": PHONE, "id": sms.id},
        },
        "next": {"step": "day3", "jobId": str(follow_up.job_id)},
    }


async def test_a_day7_reminder_is_the_last_and_enqueues_nothing(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    job = handlers.job(reminder(ReminderType.DAY7))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert result_of(outcome)["next"] is None
    assert handlers.follow_ups.calls == []
    [mail] = smtp.messages
    assert subject(mail).startswith("Final reminder:")
    assert len(systems.sms_messages) == 1


async def test_a_reminder_to_an_applicant_without_a_phone_goes_by_email_only(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A1"] = applicant("A1", phone=None)
    job = handlers.job(reminder(ReminderType.DAY3))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert result_of(outcome)["channels"]["sms"] == {
        "status": "not_sent",
        "reason": "recipient has no sms",
    }
    assert result_of(outcome)["channels"]["email"]["status"] == "sent"
    assert len(smtp.messages) == 1
    assert systems.requests_to(SMS_GATEWAY) == []
    assert [c.deduplication_id for c in handlers.follow_ups.calls] == ["reminder:A1:day5"]


async def test_a_reminder_whose_sms_failed_enqueues_the_next_step_only_once_it_went_out(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.answer_next(SMS_GATEWAY, status=503)
    job = handlers.job(reminder(ReminderType.DAY1))

    first = await handlers.attempt(job)

    assert first.kind is RETRY
    assert "sms: SMS gateway" in error_of(first)
    assert "503" in error_of(first)
    assert handlers.follow_ups.calls == []
    assert len(smtp.messages) == 1

    second = await handlers.attempt(job)

    assert second.kind is COMPLETED
    assert len(smtp.messages) == 1  # not sent again
    assert smtp.transactions == 1
    assert len(systems.sms_messages) == 1
    assert [c.deduplication_id for c in handlers.follow_ups.calls] == ["reminder:A1:day3"]


# -- notifications --------------------------------------------------------------------------------


def adverse_action(recipient_id: str = "A1") -> SendNotification:
    return SendNotification(
        type=NotificationType.ADVERSE_ACTION,
        recipient_id=recipient_id,
        template_id="adverse_action_notice",
        template_data={
            "listing_address": ADDRESS,
            "decision_date": "2026-11-27",
            "reasons": ["Insufficient credit history"],
            "agency_name": "Example Screening Co.",
            "agency_address": "PO Box 100, Springfield",
            "agency_phone": "+1 800 555 0100",
        },
    )


async def test_a_notification_to_someone_with_neither_email_nor_phone_fails(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A3"] = applicant("A3", email=None, phone=None)
    job = handlers.job(adverse_action("A3"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "recipient has no email" in error_of(outcome)
    assert "recipient has no sms" in error_of(outcome)
    assert nothing_sent(systems, smtp)


async def test_a_notification_to_an_unknown_recipient_fails(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    job = handlers.job(adverse_action("nobody"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "recipient nobody not found" in error_of(outcome)
    assert nothing_sent(systems, smtp)


async def test_a_notification_whose_stored_data_no_longer_fits_the_template_fails(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    # Enqueue checks the data; a job stored before the template changed can still not fit.
    payload = adverse_action().to_dict()
    del payload["templateData"]["agency_name"]
    job = handlers.job(SendNotification.from_dict(payload))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "adverse_action_notice cannot be rendered" in error_of(outcome)
    assert "agency_name" in error_of(outcome)
    assert nothing_sent(systems, smtp)


async def test_a_number_the_sms_gateway_refuses_is_reported_and_the_email_still_goes(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A1"] = applicant("A1", phone="555-0100")
    job = handlers.job(adverse_action())

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    channels = result_of(outcome)["channels"]
    assert channels["email"] == {
        "status": "sent",
        "to": EMAIL,
        "id": f"<{job.id}.email@jobsvc.invalid>",
    }
    assert channels["sms"]["status"] == "rejected"
    assert channels["sms"]["to"] == "555-0100"
    assert "422" in channels["sms"]["error"]
    assert "invalid phone number" in channels["sms"]["error"]
    assert len(smtp.messages) == 1
    assert systems.sms_messages == []


async def test_an_email_the_server_defers_is_retried_and_sent_once_without_resending_the_sms(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    smtp.defer_next_messages(1)
    job = handlers.job(adverse_action())

    first = await handlers.attempt(job)

    assert first.kind is RETRY
    assert first.retry_after is None
    assert "451" in error_of(first)
    assert (len(smtp.messages), smtp.transactions) == (0, 1)
    [sms] = systems.sms_messages
    assert handlers.notes(job) == {
        "notification:sms": {"status": "sent", "to": PHONE, "id": sms.id},
    }

    second = await handlers.attempt(job)

    assert second.kind is COMPLETED
    [mail] = smtp.messages
    assert smtp.transactions == 2
    assert mail.message["Message-ID"] == f"<{job.id}.email@jobsvc.invalid>"
    assert "Example Screening Co." in plain_body(mail)
    assert len(systems.requests_to(SMS_GATEWAY)) == 1  # not even offered to the gateway again
    assert systems.sms_messages == [sms]
    assert result_of(second)["channels"] == {
        "email": {"status": "sent", "to": EMAIL, "id": f"<{job.id}.email@jobsvc.invalid>"},
        "sms": {"status": "sent", "to": PHONE, "id": sms.id},
    }


async def test_an_email_refused_for_good_on_the_only_channel_fails(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A1"] = applicant("A1", phone=None)
    smtp.refuse_next_recipients(1)
    job = handlers.job(adverse_action())

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "550" in error_of(outcome)
    assert smtp.messages == []
    assert systems.requests_to(SMS_GATEWAY) == []


async def test_an_operators_retry_after_the_address_was_corrected_sends_to_the_new_address(
    systems: ExternalSystems, smtp: SmtpServer, handlers: Handlers
) -> None:
    systems.applicants["A1"] = applicant("A1", email="dana@typo.example", phone=None)
    smtp.refuse_next_recipients(1)
    job = handlers.job(adverse_action())
    first = await handlers.attempt(job)
    assert first.kind is FAILED
    # The application service corrects the address; an operator retries the notice.
    systems.applicants["A1"] = applicant("A1", phone=None)
    handlers.fail_and_requeue(job, error_of(first))

    retried = await handlers.attempt(job)

    assert [mail.rcpt_tos for mail in smtp.messages] == [(EMAIL,)]
    assert retried.kind is COMPLETED


# -- CRM ------------------------------------------------------------------------------------------

CONTACTS = [
    CrmContact(id="c1", name="Lee", email="lee@example.com", max_rent=2500, min_bedrooms=2),
    CrmContact(id="c2", name="Sam", max_rent=2000, min_bedrooms=1),  # over budget
    CrmContact(id="c3", name="Kim", max_rent=3000, min_bedrooms=1),
    CrmContact(id="c4", name="Ola", max_rent=4000, min_bedrooms=3),  # too few bedrooms
]
MATCHES = [
    {"contactId": "c1", "name": "Lee", "score": 0.96},
    {"contactId": "c3", "name": "Kim", "score": 0.8},
]


async def test_crm_matches_are_found_and_recorded(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.crm_contacts["AG1"] = list(CONTACTS)
    job = handlers.job(CrmMatch(listing_id="L1", agent_id="AG1"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is COMPLETED
    assert outcome.result == {"listingId": "L1", "agentId": "AG1", "matches": MATCHES}
    assert systems.crm_matches == {("AG1", "L1"): ["c1", "c3"]}
    search, record = systems.requests_to(CRM)
    assert (search.method, search.path) == ("POST", "/crm/agents/AG1/matches/search")
    assert search.json["listing"] == {
        "id": "L1",
        "title": "Sunny two-bedroom",
        "address": ADDRESS,
        "rent": 2400,
        "bedrooms": 2,
        "bathrooms": 1.5,
    }
    assert (record.method, record.path) == ("PUT", "/crm/agents/AG1/listings/L1/matches")


async def test_an_agent_the_crm_does_not_know_fails_and_nothing_is_recorded(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    job = handlers.job(CrmMatch(listing_id="L1", agent_id="AG9"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "agent AG9 not found in the CRM" in error_of(outcome)
    assert [r.method for r in systems.requests_to(CRM)] == ["POST"]
    assert systems.crm_matches == {}


async def test_crm_matching_a_listing_the_listing_service_does_not_know_fails(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.crm_contacts["AG1"] = list(CONTACTS)
    job = handlers.job(CrmMatch(listing_id="L404", agent_id="AG1"))

    outcome = await handlers.attempt(job)

    assert outcome.kind is FAILED
    assert "listing L404 not found" in error_of(outcome)
    assert systems.requests_to(CRM) == []


async def test_a_crm_failing_to_record_is_a_retry_and_reruns_record_the_same_matches(
    systems: ExternalSystems, handlers: Handlers
) -> None:
    systems.crm_contacts["AG1"] = list(CONTACTS)
    systems.answer_next("/crm/agents/AG1/listings", status=500, body={"error": "database busy"})
    job = handlers.job(CrmMatch(listing_id="L1", agent_id="AG1"))

    first = await handlers.attempt(job)

    assert first.kind is RETRY
    assert "500" in error_of(first)
    assert "database busy" in error_of(first)
    assert systems.crm_matches == {}

    second = await handlers.attempt(job)
    third = await handlers.attempt(job)  # a duplicate delivery

    assert second.kind is third.kind is COMPLETED
    assert second.result == {"listingId": "L1", "agentId": "AG1", "matches": MATCHES}
    assert third.result == second.result
    assert systems.crm_matches == {("AG1", "L1"): ["c1", "c3"]}
    records = [r.json for r in systems.requests_to(CRM) if r.method == "PUT"]
    assert records == [{"contactIds": ["c1", "c3"]}] * 3
