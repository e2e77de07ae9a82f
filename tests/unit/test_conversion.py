"""The edge between protobuf and the domain: times, enums, Struct, payloads, jobs, schedules,
request parsing, cron checks and the error table. No I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from jobsvc.broker.errors import BrokerRejected, BrokerUnsupported
from jobsvc.crons import cron_violations, next_run_time, time_zone_violations
from jobsvc.errors import (
    AlreadyExists,
    BrokerUnavailable,
    FieldViolation,
    InvalidArgument,
    InvalidState,
    JobNotFound,
    JobServiceError,
    ScheduleNotFound,
    StorageUnavailable,
    Unauthenticated,
)
from jobsvc.jobs import Attempt, Job, JobState, JobType, Schedule
from jobsvc.payloads import (
    CrmMatch,
    NotificationType,
    Payload,
    ReminderType,
    SendNotification,
    SendReminder,
    SyndicateListing,
)
from jobsvc.rpc import conversion, requests
from jobsvc.rpc.errors import STATUS_CODES, status_of
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import jobs_pb2, payloads_pb2

NOW = datetime(2026, 3, 7, 12, 30, 15, 123456, tzinfo=UTC)


def field_paths(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in error.value.violations]


# -- enums ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto_enum", "mapping", "domain", "prefix"),
    [
        (jobs_pb2.JobType, conversion.JOB_TYPES, JobType, "JOB_TYPE_"),
        (jobs_pb2.JobState, conversion.JOB_STATES, JobState, "JOB_STATE_"),
        (payloads_pb2.ReminderType, conversion.REMINDER_TYPES, ReminderType, "REMINDER_TYPE_"),
        (
            payloads_pb2.NotificationType,
            conversion.NOTIFICATION_TYPES,
            NotificationType,
            "NOTIFICATION_TYPE_",
        ),
    ],
)
def test_enums_map_one_to_one_by_name(
    proto_enum: Any, mapping: Any, domain: Any, prefix: str
) -> None:
    named = {name: number for name, number in proto_enum.items() if number != 0}
    assert set(mapping) == set(named.values())  # every proto value but UNSPECIFIED
    assert set(mapping.values()) == set(domain)  # every domain member
    for name, number in named.items():
        # JOB_TYPE_SYNDICATE_LISTING <-> "syndicate-listing", REMINDER_TYPE_DAY1 <-> "day1"
        expected = name.removeprefix(prefix).lower()
        assert mapping[number].value.replace("-", "_") == expected


def test_enum_examples() -> None:
    assert conversion.REMINDER_TYPES[payloads_pb2.REMINDER_TYPE_DAY1] == "day1"
    assert (
        conversion.NOTIFICATION_TYPES[payloads_pb2.NOTIFICATION_TYPE_ADVERSE_ACTION]
        == "adverse_action"
    )
    assert conversion.job_type_number(JobType.CRM_MATCH) == jobs_pb2.JOB_TYPE_CRM_MATCH
    assert conversion.job_state_number(JobState.RETRYING) == jobs_pb2.JOB_STATE_RETRYING
    outcomes = {v for k, v in jobs_pb2.AttemptOutcome.items() if v != 0}
    assert set(conversion.ATTEMPT_OUTCOMES.values()) == outcomes


# -- times and Struct -----------------------------------------------------------------------------


def test_timestamps_are_aware_utc_both_ways() -> None:
    berlin = datetime(2026, 7, 1, 14, 0, 0, 500, tzinfo=ZoneInfo("Europe/Berlin"))
    timestamp = conversion.to_timestamp(berlin)
    assert timestamp is not None
    assert timestamp.seconds == int(berlin.timestamp())
    back = conversion.from_timestamp(timestamp, "t")
    assert back == berlin
    assert back.tzinfo is UTC
    assert back.hour == 12
    assert conversion.to_timestamp(None) is None
    with pytest.raises(ValueError, match="naive"):
        conversion.to_timestamp(datetime(2026, 1, 1))
    with pytest.raises(InvalidArgument) as bad:
        conversion.from_timestamp(Timestamp(seconds=2**40), "run_time")
    assert field_paths(bad) == ["run_time"]


def test_durations_both_ways() -> None:
    span = timedelta(seconds=90, microseconds=250)
    duration = conversion.to_duration(span)
    assert duration == Duration(seconds=90, nanos=250_000)
    assert conversion.from_duration(duration, "d") == span
    assert conversion.from_duration(Duration(seconds=-5), "delay") == timedelta(seconds=-5)
    assert conversion.to_duration(None) is None


def test_struct_keeps_whole_numbers_as_ints() -> None:
    data = {"n": 3, "f": 2.5, "big": 2**60, "nested": {"list": [1, "a", None, True]}}
    struct = conversion.to_struct(data)
    assert struct is not None
    back = conversion.from_struct(struct)
    assert back == {"n": 3, "f": 2.5, "big": float(2**60), "nested": {"list": [1, "a", None, True]}}
    assert type(back["n"]) is int
    assert type(back["f"]) is float
    assert conversion.to_struct(None) is None


# -- payloads -------------------------------------------------------------------------------------

PAYLOADS: list[Payload] = [
    SyndicateListing(listing_id="L1", platforms=("zillow", "trulia")),  # type: ignore[arg-type]
    SendReminder(
        applicant_id="A1",
        reminder_type=ReminderType.DAY5,
        missing_docs=("pay_stub",),
    ),
    CrmMatch(listing_id="L1", agent_id="AG1"),
    SendNotification(
        type=NotificationType.ADVERSE_ACTION,
        recipient_id="R1",
        template_id="T1",
        template_data={"score": 610, "reasons": ["income"], "ratio": 0.25},
    ),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.job_type.value)
def test_payloads_round_trip_through_their_messages(payload: Payload) -> None:
    field, message = conversion.payload_to_proto(payload.job_type, payload.to_dict())
    assert field == payload.field_name
    assert conversion.payload_from_proto(message) == payload


def test_payload_messages_are_validated_with_field_paths() -> None:
    with pytest.raises(InvalidArgument) as bad:
        conversion.payload_from_proto(
            payloads_pb2.SyndicateListing(listing_id="", platforms=["zillow", "myspace"])
        )
    assert field_paths(bad) == ["syndicate_listing.listing_id", "syndicate_listing.platforms[1]"]
    with pytest.raises(InvalidArgument) as unset:
        conversion.payload_from_proto(payloads_pb2.SendReminder(applicant_id="A"))
    assert unset.value.violations == [FieldViolation("send_reminder.reminder_type", "is required")]
    # A number from a newer client this build does not know.
    with pytest.raises(InvalidArgument) as unknown:
        conversion.payload_from_proto(
            payloads_pb2.SendNotification(type=42, recipient_id="R", template_id="T")  # type: ignore[arg-type]
        )
    assert field_paths(unknown) == ["send_notification.type"]
    assert "42" in unknown.value.violations[0].description


def test_stored_payloads_are_shown_leniently() -> None:
    # A row whose enum string this build does not know shows UNSPECIFIED instead of failing.
    _, message = conversion.payload_to_proto(
        JobType.SEND_REMINDER, {"applicantId": "A", "reminderType": "day9"}
    )
    assert isinstance(message, payloads_pb2.SendReminder)
    assert message.reminder_type == payloads_pb2.REMINDER_TYPE_UNSPECIFIED
    assert list(message.missing_docs) == []


# -- jobs and schedules ---------------------------------------------------------------------------


def test_job_to_proto_carries_every_field() -> None:
    job_id = uuid.uuid4()
    job = Job(
        id=job_id,
        type=JobType.CRM_MATCH,
        payload={"listingId": "L1", "agentId": "A1"},
        state=JobState.FAILED,
        attempts=2,
        max_retries=1,
        created_at=NOW,
        not_before=NOW + timedelta(minutes=5),
        started_at=NOW + timedelta(minutes=6),
        finished_at=NOW + timedelta(minutes=7),
        result=None,
        error="boom",
        qstash_message_id="msg_1",
        dlq_id="dlq_1",
        deduplication_id="d-1",
        schedule_id="s-1",
        timeout=timedelta(seconds=45),
        history=[
            Attempt(
                number=1,
                started_at=NOW,
                finished_at=NOW + timedelta(seconds=1),
                outcome="retry",
                error="boom",
                qstash_message_id="msg_1",
            ),
            Attempt(number=2, started_at=NOW + timedelta(minutes=6)),
        ],
    )
    message = conversion.job_to_proto(job)
    assert message.id == str(job_id)
    assert message.type == jobs_pb2.JOB_TYPE_CRM_MATCH
    assert message.state == jobs_pb2.JOB_STATE_FAILED
    assert (message.attempts, message.max_retries) == (2, 1)
    assert message.create_time.ToDatetime(tzinfo=UTC) == NOW
    assert message.not_before_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(minutes=5)
    assert message.start_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(minutes=6)
    assert message.finish_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(minutes=7)
    assert message.handler_timeout.ToTimedelta() == timedelta(seconds=45)
    assert not message.HasField("result")
    assert (message.last_error, message.qstash_message_id, message.dlq_id) == (
        "boom",
        "msg_1",
        "dlq_1",
    )
    assert (message.deduplication_id, message.schedule_id) == ("d-1", "s-1")
    assert message.crm_match == payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1")
    first, second = message.history
    assert (first.number, first.outcome, first.error) == (1, jobs_pb2.ATTEMPT_OUTCOME_RETRY, "boom")
    assert second.outcome == jobs_pb2.ATTEMPT_OUTCOME_UNSPECIFIED
    assert not second.HasField("finish_time")
    assert conversion.job_to_proto(job, with_history=False).history == []

    fresh = conversion.job_to_proto(
        Job(id=job_id, type=JobType.CRM_MATCH, payload={}, created_at=NOW, result={"n": 1})
    )
    assert fresh.state == jobs_pb2.JOB_STATE_PENDING
    assert not fresh.HasField("start_time")
    assert not fresh.HasField("handler_timeout")
    assert (fresh.last_error, fresh.qstash_message_id, fresh.dlq_id) == ("", "", "")
    assert dict(fresh.result) == {"n": 1.0}


def test_schedule_to_proto() -> None:
    schedule = Schedule(
        id="s-1",
        cron="0 9 * * *",
        type=JobType.CRM_MATCH,
        payload={"listingId": "L1", "agentId": "A1"},
        created_at=NOW,
        updated_at=NOW,
    )
    message = conversion.schedule_to_proto(schedule, next_run_time=NOW + timedelta(hours=1))
    assert (message.schedule_id, message.cron, message.time_zone) == ("s-1", "0 9 * * *", "UTC")
    assert (message.retries, message.paused) == (3, False)
    assert message.next_run_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(hours=1)
    assert not message.HasField("last_run_time")
    assert message.crm_match.agent_id == "A1"


# -- cron -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    ["0 9 * *", "0 0 9 * * *", "61 9 * * *", "0 25 * * *", "CRON_TZ=UTC 0 9 * * *", "@daily", ""],
)
def test_bad_cron_expressions(expression: str) -> None:
    [violation] = cron_violations(expression)
    assert violation.field == "cron"


@pytest.mark.parametrize("expression", ["0 9 * * *", "*/15 8-18 * * 1-5", "0 0 1 1,7 *"])
def test_good_cron_expressions(expression: str) -> None:
    assert cron_violations(expression) == []


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "../etc/passwd",
        "America",
        "Asia",
        "Etc",
        "",
        "UTC\x00",
        "Europe/" + "x" * 300,
    ],
)
def test_unknown_time_zones(name: str) -> None:
    assert [v.field for v in time_zone_violations(name)] == ["time_zone"]


@pytest.mark.parametrize("name", ["America/New_York", "UTC", "Etc/GMT+5", "Asia/Kolkata"])
def test_known_time_zones(name: str) -> None:
    assert time_zone_violations(name) == []


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_crons_that_never_fire_are_refused(expression: str) -> None:
    [violation] = cron_violations(expression)
    assert violation.field == "cron"
    assert "never fires" in violation.description
    assert next_run_time(expression, None, datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_a_cron_firing_only_on_29_february_is_accepted() -> None:
    assert cron_violations("0 0 29 2 *", "America/New_York") == []
    after = datetime(2097, 3, 1, tzinfo=UTC)  # 2100 is no leap year: the next one is 2104
    assert next_run_time("0 0 29 2 *", None, after) == datetime(2104, 2, 29, tzinfo=UTC)


def test_next_run_time_follows_the_zone_across_daylight_saving() -> None:
    # New York moves from EST (UTC-5) to EDT (UTC-4) on 2026-03-08.
    before = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
    first = next_run_time("0 9 * * *", "America/New_York", before)
    assert first == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    assert next_run_time("0 9 * * *", "America/New_York", first) == datetime(
        2026, 3, 9, 13, 0, tzinfo=UTC
    )
    assert next_run_time("0 9 * * *", None, before) == datetime(2026, 3, 8, 9, 0, tzinfo=UTC)
    offset = datetime(2026, 3, 7, 15, 0, tzinfo=timezone(timedelta(hours=2)))
    assert next_run_time("0 * * * *", None, offset) == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
    assert next_run_time("0 9 * * *", "Mars/Olympus", before) is None


# -- requests -------------------------------------------------------------------------------------


def test_job_ids() -> None:
    job_id = uuid.uuid4()
    assert requests.job_id(str(job_id)) == job_id
    for bad in ("", "nope", "1234"):
        with pytest.raises(InvalidArgument) as error:
            requests.job_id(bad)
        assert field_paths(error) == ["job_id"]


def test_enqueue_request_options() -> None:
    message = pb.EnqueueRequest(
        crm_match=payloads_pb2.CrmMatch(listing_id="L", agent_id="A"),
        delay=Duration(seconds=30),
        retries=0,
        deduplication_id="k",
        handler_timeout=Duration(seconds=5),
    )
    parsed = requests.enqueue(message)
    assert parsed.payload == CrmMatch(listing_id="L", agent_id="A")
    options = parsed.options
    assert (options.delay, options.retries, options.deduplication_id, options.timeout) == (
        timedelta(seconds=30),
        0,
        "k",
        timedelta(seconds=5),
    )
    unset = requests.enqueue(pb.EnqueueRequest(crm_match=message.crm_match)).options
    assert (unset.delay, unset.not_before, unset.retries, unset.deduplication_id) == (
        None,
        None,
        3,
        None,
    )


def test_enqueue_request_problems_are_all_reported_under_the_prefix() -> None:
    with pytest.raises(InvalidArgument) as error:
        requests.enqueue(
            pb.EnqueueRequest(
                syndicate_listing=payloads_pb2.SyndicateListing(platforms=["nope"]),
                deduplication_id=" padded ",
            ),
            "requests[3].",
        )
    assert field_paths(error) == [
        "requests[3].syndicate_listing.listing_id",
        "requests[3].syndicate_listing.platforms[0]",
        "requests[3].deduplication_id",
    ]


def test_schedule_request_kinds() -> None:
    crm = payloads_pb2.CrmMatch(listing_id="L", agent_id="A")
    cron = requests.schedule(
        pb.ScheduleRequest(cron=" 0  9 * * * ", time_zone="Europe/Paris", crm_match=crm)
    )
    assert isinstance(cron, requests.CronArgs)
    assert (cron.cron, cron.time_zone, cron.schedule_id, cron.retries) == (
        "0 9 * * *",
        "Europe/Paris",
        None,
        3,
    )
    one_off = requests.schedule(pb.ScheduleRequest(delay=Duration(seconds=60), crm_match=crm))
    assert isinstance(one_off, requests.EnqueueRequest)
    assert one_off.options.delay == timedelta(seconds=60)
    with pytest.raises(InvalidArgument) as error:
        requests.schedule(
            pb.ScheduleRequest(cron="0 9 * * *", retries=99, handler_timeout=Duration(seconds=0))
        )
    assert field_paths(error) == ["payload", "retries", "handler_timeout"]


def test_list_filters() -> None:
    filters = requests.job_filters(
        pb.ListJobsRequest(states=[jobs_pb2.JOB_STATE_FAILED], types=[jobs_pb2.JOB_TYPE_CRM_MATCH])
    )
    assert (filters.states, filters.types) == ({JobState.FAILED}, {JobType.CRM_MATCH})
    assert filters.schedule_id is None
    several = requests.job_filters(
        pb.ListJobsRequest(
            states=[jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED],
            types=[jobs_pb2.JOB_TYPE_CRM_MATCH, jobs_pb2.JOB_TYPE_SEND_REMINDER],
            schedule_id="nightly",
        )
    )
    assert several.states == {JobState.FAILED, JobState.CANCELLED}
    assert several.types == {JobType.CRM_MATCH, JobType.SEND_REMINDER}
    assert several.schedule_id == "nightly"
    anything = requests.job_filters(pb.ListJobsRequest())
    assert (anything.states, anything.types, anything.schedule_id) == (set(), set(), None)
    with pytest.raises(InvalidArgument) as error:
        requests.job_filters(pb.ListJobsRequest(states=[0], types=[99]))  # type: ignore[list-item]
    assert field_paths(error) == ["states[0]", "types[0]"]


# -- the error table ------------------------------------------------------------------------------


def decode(status: grpc.Status) -> tuple[grpc.StatusCode, str, str, list[str]]:
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    assert rich.code == status.code.value[0]
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    fields: list[str] = []
    if len(rich.details) > 1:
        bad = error_details_pb2.BadRequest()
        assert rich.details[1].Unpack(bad)
        fields = [v.field for v in bad.field_violations]
    return status.code, info.reason, info.domain, fields


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (JobNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (ScheduleNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (InvalidState("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (BrokerRejected("x", status=401), grpc.StatusCode.FAILED_PRECONDITION),
        (BrokerUnsupported("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (BrokerUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (StorageUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=lambda value: type(value).__name__,
)
def test_domain_errors_map_to_codes_with_their_reason(
    error: JobServiceError, code: grpc.StatusCode
) -> None:
    assert decode(status_of(error)) == (code, error.reason, "jobsvc", [])
    assert status_of(error).details == "x"


def test_invalid_argument_carries_every_field() -> None:
    error = InvalidArgument([FieldViolation("a", "bad"), FieldViolation("b.c[1]", "worse")])
    assert decode(status_of(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "jobsvc",
        ["a", "b.c[1]"],
    )


def test_every_domain_error_is_in_the_table_and_unmapped_ones_are_internal() -> None:
    assert set(STATUS_CODES) >= {
        cls for cls in JobServiceError.__subclasses__() if cls.__module__ == "jobsvc.errors"
    }

    class Surprise(JobServiceError):
        reason = "SURPRISE"

    status = status_of(Surprise("db password is hunter2"))
    assert decode(status) == (grpc.StatusCode.INTERNAL, "INTERNAL", "jobsvc", [])
    assert "hunter2" not in status.details
