"""The handler framework: registry, context, and the outcome of every way a handler run ends."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobsvc.adapters.dev import DevOutbox, DevSyndicationPlatform
from jobsvc.handlers import (
    MAX_ERROR_LENGTH,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    Outcome,
    OutcomeKind,
    PermanentFailure,
    RetryLater,
    default_registry,
    job_logger,
    run,
)
from jobsvc.jobs import JobType
from jobsvc.payloads import (
    PAYLOAD_TYPES,
    CrmMatch,
    Platform,
    ReminderType,
    SendReminder,
)
from tests.handler_ports import RecordedFollowUps, dev_ports

TIMEOUT = timedelta(seconds=5)
CRM = {"listingId": "L1", "agentId": "AG1"}


class NotesInMemory:
    """A ``Progress`` port for the framework's tests (the job log's is tested with the
    handlers, against the database)."""

    def __init__(self) -> None:
        self.notes: dict[str, Mapping[str, Any]] = {}

    async def get(self, key: str) -> Mapping[str, Any] | None:
        return self.notes.get(key)

    async def record(self, key: str, value: Mapping[str, Any]) -> None:
        self.notes[key] = dict(value)

    async def all(self) -> dict[str, Mapping[str, Any]]:
        return dict(self.notes)


@pytest.fixture
def follow_up() -> RecordedFollowUps:
    return RecordedFollowUps()


@pytest.fixture
def make_ctx(follow_up: RecordedFollowUps) -> Callable[..., HandlerContext]:
    def make(job_type: JobType = JobType.CRM_MATCH, attempt: int = 1) -> HandlerContext:
        job_id = uuid.uuid4()
        return HandlerContext(
            job_id=job_id,
            job_type=job_type,
            attempt=attempt,
            max_retries=3,
            logger=job_logger(job_id=job_id, job_type=job_type, attempt=attempt),
            enqueue=follow_up,
            progress=NotesInMemory(),
        )

    return make


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="jobsvc.handlers")
    return caplog


def crm_registry(
    handler: Callable[[CrmMatch, HandlerContext], Awaitable[HandlerResult | dict[str, Any]]],
) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register(CrmMatch, handler)
    return registry


async def run_crm(
    handler: Callable[[CrmMatch, HandlerContext], Awaitable[Any]],
    ctx: HandlerContext,
    *,
    payload: dict[str, Any] = CRM,
    handler_timeout: timedelta = TIMEOUT,
) -> Outcome:
    return await run(crm_registry(handler), JobType.CRM_MATCH, payload, ctx, handler_timeout)


def actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "action", "") for r in caplog.records]


# Registry


def test_default_registry_serves_every_job_type_with_its_payload_type(tmp_path: Path) -> None:
    registry = default_registry(dev_ports(tmp_path))
    assert set(registry) == set(JobType)
    assert len(registry) == len(JobType)
    for job_type in JobType:
        registration = registry.get(job_type)
        assert registration is not None
        assert registration.payload_type is PAYLOAD_TYPES[job_type]


def test_default_registry_needs_an_adapter_for_every_platform(tmp_path: Path) -> None:
    outbox = DevOutbox(tmp_path)
    some = {Platform.ZILLOW: DevSyndicationPlatform(Platform.ZILLOW, outbox)}
    with pytest.raises(ValueError, match="no adapter for the platforms apartments"):
        default_registry(dev_ports(tmp_path, platforms=some))


def test_registry_serves_a_job_type_once() -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        return {}

    registry = crm_registry(handle)
    assert JobType.CRM_MATCH in registry
    assert JobType.SEND_REMINDER not in registry
    assert registry.get(JobType.SEND_REMINDER) is None
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CrmMatch, handle)


# Outcomes of run


async def test_handler_gets_the_typed_payload_and_its_dict_result_completes(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[CrmMatch, HandlerContext]] = []

    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        seen.append((payload, ctx))
        return {"matched": 2}

    ctx = make_ctx()
    outcome = await run_crm(handle, ctx)
    assert outcome == Outcome(kind=OutcomeKind.COMPLETED, result={"matched": 2})
    assert seen == [(CrmMatch(listing_id="L1", agent_id="AG1"), ctx)]
    assert actions(logs) == ["handler_started", "handler_completed"]
    for record in logs.records:
        assert record.__dict__["job_id"] == str(ctx.job_id)
        assert record.__dict__["job_type"] == "crm-match"
        assert record.__dict__["attempt"] == 1


async def test_handler_result_and_skip(make_ctx: Callable[..., HandlerContext]) -> None:
    async def done(payload: CrmMatch, ctx: HandlerContext) -> HandlerResult:
        return HandlerResult(data={"agents": ["AG1"]})

    async def skip(payload: CrmMatch, ctx: HandlerContext) -> HandlerResult:
        return HandlerResult.skip("documents complete", checked=1)

    assert await run_crm(done, make_ctx()) == Outcome.completed({"agents": ["AG1"]})
    skipped = await run_crm(skip, make_ctx())
    assert skipped.kind is OutcomeKind.COMPLETED
    assert skipped.skipped
    assert skipped.result == {"checked": 1, "skipped": True, "reason": "documents complete"}


async def test_retry_later_with_and_without_after(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture
) -> None:
    async def later(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise RetryLater("CRM rate limited", after=timedelta(seconds=30))

    async def soon(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise RetryLater("CRM busy")

    assert await run_crm(later, make_ctx()) == Outcome(
        kind=OutcomeKind.RETRY, error="CRM rate limited", retry_after=timedelta(seconds=30)
    )
    assert await run_crm(soon, make_ctx()) == Outcome(kind=OutcomeKind.RETRY, error="CRM busy")
    assert actions(logs).count("handler_retry_requested") == 2


async def test_permanent_failure(make_ctx: Callable[..., HandlerContext]) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise PermanentFailure("agent not found")

    assert await run_crm(handle, make_ctx()) == Outcome(
        kind=OutcomeKind.FAILED, error="agent not found"
    )


async def test_overrunning_the_timeout_is_a_retry(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture
) -> None:
    cancelled = asyncio.Event()

    async def slow(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    outcome = await run_crm(slow, make_ctx(), handler_timeout=timedelta(milliseconds=20))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error is not None
    assert "timed out" in outcome.error
    assert outcome.retry_after is None
    assert cancelled.is_set()  # the handler was stopped, not left running
    assert "handler_timed_out" in actions(logs)


async def test_a_handlers_own_timeout_error_is_not_our_deadline(
    make_ctx: Callable[..., HandlerContext],
) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise TimeoutError("CRM did not answer")

    outcome = await run_crm(handle, make_ctx())
    assert outcome == Outcome(kind=OutcomeKind.RETRY, error="TimeoutError: CRM did not answer")


async def test_unexpected_exception_is_a_retry_with_the_traceback_only_in_the_log(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture
) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise KeyError("agentScore")

    outcome = await run_crm(handle, make_ctx())
    assert outcome == Outcome(kind=OutcomeKind.RETRY, error="KeyError: 'agentScore'")
    [crash] = [r for r in logs.records if getattr(r, "action", "") == "handler_crashed"]
    assert crash.exc_info is not None
    assert crash.exc_info[0] is KeyError
    assert "Traceback" in logs.text


async def test_exception_without_message_and_long_messages(
    make_ctx: Callable[..., HandlerContext],
) -> None:
    async def bare(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise RuntimeError

    async def verbose(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        raise RuntimeError("x" * 5000)

    assert (await run_crm(bare, make_ctx())).error == "RuntimeError"
    error = (await run_crm(verbose, make_ctx())).error
    assert error is not None
    assert len(error) == MAX_ERROR_LENGTH
    assert error.startswith("RuntimeError: xxx")


async def test_invalid_stored_payload_fails_without_running_the_handler(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture
) -> None:
    calls: list[CrmMatch] = []

    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        calls.append(payload)
        return {}

    outcome = await run_crm(handle, make_ctx(), payload={"listingId": "L1", "agentId": ""})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert "crm_match.agent_id" in outcome.error
    assert calls == []
    assert actions(logs) == ["handler_payload_invalid"]


async def test_unregistered_job_type_fails(make_ctx: Callable[..., HandlerContext]) -> None:
    outcome = await run(HandlerRegistry(), JobType.CRM_MATCH, CRM, make_ctx(), TIMEOUT)
    assert outcome.kind is OutcomeKind.FAILED


@pytest.mark.parametrize("returned", [["not", "a", "dict"], None, {"at": object()}])
async def test_a_result_that_is_not_a_json_object_fails(
    make_ctx: Callable[..., HandlerContext], logs: pytest.LogCaptureFixture, returned: Any
) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> Any:
        return returned

    outcome = await run_crm(handle, make_ctx())
    assert outcome.kind is OutcomeKind.FAILED
    assert actions(logs)[-1] == "handler_result_invalid"


async def test_cancelling_the_caller_propagates(make_ctx: Callable[..., HandlerContext]) -> None:
    started = asyncio.Event()

    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(10)
        return {}

    task = asyncio.create_task(run_crm(handle, make_ctx()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_must_be_positive(make_ctx: Callable[..., HandlerContext]) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="positive"):
        await run_crm(handle, make_ctx(), handler_timeout=timedelta(0))


# Context


async def test_follow_up_port_gets_what_the_handler_passed(
    make_ctx: Callable[..., HandlerContext], follow_up: RecordedFollowUps
) -> None:
    async def handle(payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        reminder = SendReminder(applicant_id="A1", reminder_type=ReminderType.DAY3)
        job_id = await ctx.enqueue(
            JobType.SEND_REMINDER,
            reminder.to_dict(),
            delay=timedelta(days=2),
            deduplication_id=f"{ctx.job_id}:day3",
        )
        return {"followUp": str(job_id)}

    ctx = make_ctx()
    outcome = await run_crm(handle, ctx)
    [call] = follow_up.calls
    assert call.job_type is JobType.SEND_REMINDER
    assert call.payload == {"applicantId": "A1", "reminderType": "day3", "missingDocs": []}
    assert call.delay == timedelta(days=2)
    assert call.deduplication_id == f"{ctx.job_id}:day3"
    assert outcome.result == {"followUp": str(call.job_id)}


def test_job_logger_merges_the_call_sites_extra(logs: pytest.LogCaptureFixture) -> None:
    job_id = uuid.uuid4()
    log = job_logger(job_id=job_id, job_type=JobType.SEND_REMINDER, attempt=2)
    log.info("sent", extra={"action": "reminder_sent", "channel": "email"})
    [record] = logs.records
    assert record.name == "jobsvc.handlers"
    assert record.__dict__["action"] == "reminder_sent"
    assert record.__dict__["channel"] == "email"
    assert record.__dict__["job_id"] == str(job_id)
    assert record.__dict__["job_type"] == "send-reminder"
    assert record.__dict__["attempt"] == 2


def test_context_attempts(make_ctx: Callable[..., HandlerContext]) -> None:
    assert not make_ctx(attempt=1).is_last_attempt
    assert not make_ctx(attempt=3).is_last_attempt
    assert make_ctx(attempt=4).is_last_attempt  # max_retries 3: the fourth attempt is the last
    with pytest.raises(ValueError, match="from 1"):
        make_ctx(attempt=0)


def test_result_and_exception_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="reason"):
        HandlerResult(skipped=True)
    with pytest.raises(ValueError, match="skipped"):
        HandlerResult(reason="why")
    with pytest.raises(ValueError, match="negative"):
        RetryLater("no", after=timedelta(seconds=-1))
