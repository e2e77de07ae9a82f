"""Proto messages <-> domain values, in one place at the edge.

Instants are aware UTC datetimes in Python and ``Timestamp`` on the wire, spans ``timedelta`` and
``Duration``; proto enums map one to one onto the domain's StrEnums (``REMINDER_TYPE_DAY1`` is
``"day1"``); payloads go from their proto message to the validated domain type and, for the job
log's wire dicts, back. Nothing below the RPC layer sees a protobuf object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from jobsvc.errors import FieldViolation, InvalidArgument
from jobsvc.jobs import REDRIVEN, Attempt, Job, JobEvent, JobState, JobType, Schedule
from jobsvc.payloads import (
    CrmMatch,
    NotificationType,
    Payload,
    ReminderType,
    SendNotification,
    SendReminder,
    SyndicateListing,
)
from jobsvc.v1 import jobs_pb2, payloads_pb2, schedules_pb2

K = TypeVar("K")
V = TypeVar("V")

JOB_TYPES: Mapping[jobs_pb2.JobType.ValueType, JobType] = {
    jobs_pb2.JOB_TYPE_SYNDICATE_LISTING: JobType.SYNDICATE_LISTING,
    jobs_pb2.JOB_TYPE_SEND_REMINDER: JobType.SEND_REMINDER,
    jobs_pb2.JOB_TYPE_CRM_MATCH: JobType.CRM_MATCH,
    jobs_pb2.JOB_TYPE_SEND_NOTIFICATION: JobType.SEND_NOTIFICATION,
}
JOB_STATES: Mapping[jobs_pb2.JobState.ValueType, JobState] = {
    jobs_pb2.JOB_STATE_PENDING: JobState.PENDING,
    jobs_pb2.JOB_STATE_PROCESSING: JobState.PROCESSING,
    jobs_pb2.JOB_STATE_RETRYING: JobState.RETRYING,
    jobs_pb2.JOB_STATE_COMPLETED: JobState.COMPLETED,
    jobs_pb2.JOB_STATE_FAILED: JobState.FAILED,
    jobs_pb2.JOB_STATE_CANCELLED: JobState.CANCELLED,
}
REMINDER_TYPES: Mapping[payloads_pb2.ReminderType.ValueType, ReminderType] = {
    payloads_pb2.REMINDER_TYPE_DAY1: ReminderType.DAY1,
    payloads_pb2.REMINDER_TYPE_DAY3: ReminderType.DAY3,
    payloads_pb2.REMINDER_TYPE_DAY5: ReminderType.DAY5,
    payloads_pb2.REMINDER_TYPE_DAY7: ReminderType.DAY7,
}
NOTIFICATION_TYPES: Mapping[payloads_pb2.NotificationType.ValueType, NotificationType] = {
    payloads_pb2.NOTIFICATION_TYPE_ADVERSE_ACTION: NotificationType.ADVERSE_ACTION,
    payloads_pb2.NOTIFICATION_TYPE_REMINDER: NotificationType.REMINDER,
    payloads_pb2.NOTIFICATION_TYPE_CONFIRMATION: NotificationType.CONFIRMATION,
}
# Attempt.outcome as the job log records it.
ATTEMPT_OUTCOMES: Mapping[str, jobs_pb2.AttemptOutcome.ValueType] = {
    "completed": jobs_pb2.ATTEMPT_OUTCOME_COMPLETED,
    "skipped": jobs_pb2.ATTEMPT_OUTCOME_SKIPPED,
    "retry": jobs_pb2.ATTEMPT_OUTCOME_RETRY,
    "failed": jobs_pb2.ATTEMPT_OUTCOME_FAILED,
}


def _inverse(mapping: Mapping[K, V]) -> dict[V, K]:
    return {value: key for key, value in mapping.items()}


_JOB_TYPE_NUMBERS = _inverse(JOB_TYPES)
_JOB_STATE_NUMBERS = _inverse(JOB_STATES)
# By the wire string, as the job log's payload dicts hold them.
_REMINDER_TYPE_NUMBERS = {member.value: number for number, member in REMINDER_TYPES.items()}
_NOTIFICATION_TYPE_NUMBERS = {member.value: number for number, member in NOTIFICATION_TYPES.items()}

# Struct holds every number as a double; whole numbers in the range a double holds exactly come
# back as ints, so a template's {"count": 3} is stored as 3, not 3.0.
_EXACT_INTEGERS = 2**53


# -- times ----------------------------------------------------------------------------------------


def to_timestamp(moment: datetime | None) -> Timestamp | None:
    """An aware datetime as a Timestamp; None stays unset."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the domain only holds aware ones")
    timestamp = Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def from_timestamp(timestamp: Timestamp, field: str) -> datetime:
    """A Timestamp as an aware UTC datetime; InvalidArgument on ``field`` if it is out of range."""
    try:
        return timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(FieldViolation(field, "is not a valid timestamp")) from None


def to_duration(span: timedelta | None) -> Duration | None:
    if span is None:
        return None
    duration = Duration()
    duration.FromTimedelta(span)
    return duration


def from_duration(duration: Duration, field: str) -> timedelta:
    """A Duration as a timedelta; InvalidArgument on ``field`` if it is out of range."""
    try:
        return duration.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(FieldViolation(field, "is not a valid duration")) from None


# -- free-form JSON -------------------------------------------------------------------------------


def to_struct(data: Mapping[str, Any] | None) -> Struct | None:
    if data is None:
        return None
    struct = Struct()
    struct.update(data)
    return struct


def from_struct(struct: Struct) -> dict[str, Any]:
    """A Struct as a plain JSON dict, whole numbers as ints. NaN and infinities come through as
    floats, for the payload's own check to name (json_format refuses them with a ValueError)."""
    return {key: _from_value(value) for key, value in struct.fields.items()}


def _from_value(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= _EXACT_INTEGERS:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or no kind set


# -- enums ----------------------------------------------------------------------------------------


def job_type_number(job_type: JobType) -> jobs_pb2.JobType.ValueType:
    return _JOB_TYPE_NUMBERS[job_type]


def job_state_number(state: JobState) -> jobs_pb2.JobState.ValueType:
    return _JOB_STATE_NUMBERS[state]


def _enum_wire(number: int, known: Mapping[Any, StrEnum]) -> str | None:
    """The domain string of a proto enum number: None for UNSPECIFIED (so the payload reports
    the field as required), the number itself for one this build does not know (reported as an
    unknown value)."""
    if number == 0:
        return None
    member = known.get(number)
    return str(member) if member is not None else str(number)


# -- payloads -------------------------------------------------------------------------------------

# The proto messages carrying a payload (requests, Job, Schedule) share these oneof field names,
# which are also the payload types' ``field_name`` (the root of their violation paths).
PAYLOAD_FIELDS: Mapping[str, JobType] = {
    "syndicate_listing": JobType.SYNDICATE_LISTING,
    "send_reminder": JobType.SEND_REMINDER,
    "crm_match": JobType.CRM_MATCH,
    "send_notification": JobType.SEND_NOTIFICATION,
}
_PAYLOAD_FIELD_OF_TYPE = _inverse(PAYLOAD_FIELDS)
ProtoPayload = (
    payloads_pb2.SyndicateListing
    | payloads_pb2.SendReminder
    | payloads_pb2.CrmMatch
    | payloads_pb2.SendNotification
)


def payload_from_proto(message: ProtoPayload) -> Payload:
    """Validate a payload message as its domain type; InvalidArgument with paths such as
    ``syndicate_listing.platforms[1]``."""
    if isinstance(message, payloads_pb2.SyndicateListing):
        return SyndicateListing.from_dict(
            {"listing_id": message.listing_id, "platforms": list(message.platforms)}
        )
    if isinstance(message, payloads_pb2.SendReminder):
        return SendReminder.from_dict(
            {
                "applicant_id": message.applicant_id,
                "reminder_type": _enum_wire(message.reminder_type, REMINDER_TYPES),
                "missing_docs": list(message.missing_docs),
            }
        )
    if isinstance(message, payloads_pb2.CrmMatch):
        return CrmMatch.from_dict({"listing_id": message.listing_id, "agent_id": message.agent_id})
    return SendNotification.from_dict(
        {
            "type": _enum_wire(message.type, NOTIFICATION_TYPES),
            "recipient_id": message.recipient_id,
            "template_id": message.template_id,
            "template_data": (
                from_struct(message.template_data) if message.HasField("template_data") else None
            ),
        }
    )


def payload_to_proto(job_type: JobType, wire: Mapping[str, Any]) -> tuple[str, ProtoPayload]:
    """The oneof field name and message of a payload in its wire form (the job log's camelCase
    dict). Lenient on purpose: a row written by another release is shown as it is, not
    re-validated; unknown enum strings show as UNSPECIFIED."""
    field = _PAYLOAD_FIELD_OF_TYPE[job_type]
    message: ProtoPayload
    if job_type is JobType.SYNDICATE_LISTING:
        message = payloads_pb2.SyndicateListing(
            listing_id=wire.get("listingId") or "", platforms=wire.get("platforms") or []
        )
    elif job_type is JobType.SEND_REMINDER:
        reminder = str(wire.get("reminderType"))
        message = payloads_pb2.SendReminder(
            applicant_id=wire.get("applicantId") or "",
            reminder_type=_REMINDER_TYPE_NUMBERS.get(
                reminder, payloads_pb2.REMINDER_TYPE_UNSPECIFIED
            ),
            missing_docs=wire.get("missingDocs") or [],
        )
    elif job_type is JobType.CRM_MATCH:
        message = payloads_pb2.CrmMatch(
            listing_id=wire.get("listingId") or "", agent_id=wire.get("agentId") or ""
        )
    else:
        kind = str(wire.get("type"))
        message = payloads_pb2.SendNotification(
            type=_NOTIFICATION_TYPE_NUMBERS.get(kind, payloads_pb2.NOTIFICATION_TYPE_UNSPECIFIED),
            recipient_id=wire.get("recipientId") or "",
            template_id=wire.get("templateId") or "",
            template_data=to_struct(wire.get("templateData") or {}),
        )
    return field, message


# -- jobs and schedules ---------------------------------------------------------------------------


def attempt_to_proto(attempt: Attempt) -> jobs_pb2.Attempt:
    return jobs_pb2.Attempt(
        number=attempt.number,
        start_time=to_timestamp(attempt.started_at),
        finish_time=to_timestamp(attempt.finished_at),
        outcome=ATTEMPT_OUTCOMES.get(attempt.outcome or "", jobs_pb2.ATTEMPT_OUTCOME_UNSPECIFIED),
        error=attempt.error or "",
        qstash_message_id=attempt.qstash_message_id or "",
    )


EVENT_KINDS = {REDRIVEN: jobs_pb2.JOB_EVENT_KIND_REDRIVEN}


def event_to_proto(event: JobEvent) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(
        time=to_timestamp(event.at),
        kind=EVENT_KINDS.get(event.kind, jobs_pb2.JOB_EVENT_KIND_UNSPECIFIED),
        detail=event.detail or "",
        qstash_message_id=event.qstash_message_id or "",
    )


def job_to_proto(job: Job, *, with_history: bool = True) -> jobs_pb2.Job:
    """The Job message; ``with_history=False`` leaves the attempts out (ListJobs pages)."""
    field, payload = payload_to_proto(job.type, job.payload)
    message = jobs_pb2.Job(
        id=str(job.id),
        type=job_type_number(job.type),
        state=job_state_number(job.state),
        attempts=job.attempts,
        max_retries=job.max_retries,
        create_time=to_timestamp(job.created_at),
        not_before_time=to_timestamp(job.not_before),
        start_time=to_timestamp(job.started_at),
        finish_time=to_timestamp(job.finished_at),
        handler_timeout=to_duration(job.timeout),
        result=to_struct(job.result),
        last_error=job.error or "",
        qstash_message_id=job.qstash_message_id or "",
        dlq_id=job.dlq_id or "",
        deduplication_id=job.deduplication_id or "",
        schedule_id=job.schedule_id or "",
        history=[attempt_to_proto(a) for a in job.history] if with_history else [],
        events=[event_to_proto(e) for e in job.events] if with_history else [],
    )
    getattr(message, field).CopyFrom(payload)
    return message


def schedule_to_proto(
    schedule: Schedule, *, next_run_time: datetime | None
) -> schedules_pb2.Schedule:
    """The Schedule message; ``next_run_time`` comes from the cron expression (None if paused)."""
    field, payload = payload_to_proto(schedule.type, schedule.payload)
    message = schedules_pb2.Schedule(
        schedule_id=schedule.id,
        cron=schedule.cron,
        time_zone=schedule.time_zone or "UTC",
        paused=schedule.paused,
        retries=schedule.retries,
        handler_timeout=to_duration(schedule.timeout),
        create_time=to_timestamp(schedule.created_at),
        next_run_time=to_timestamp(next_run_time),
        last_run_time=to_timestamp(schedule.last_run_at),
    )
    getattr(message, field).CopyFrom(payload)
    return message
