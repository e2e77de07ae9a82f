"""Request messages -> the use cases' arguments, with the checks only the edge can make.

Each function reads one request message, collects every problem it finds as a
``FieldViolation`` named by the request's own field path (``requests[1].syndicate_listing.
platforms[0]``), and raises one ``InvalidArgument`` with all of them. Ranges the use cases check
themselves (delay, retries of Enqueue, page sizes) are left to them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from jobsvc.crons import cron_violations, time_zone_violations
from jobsvc.errors import FieldViolation, InvalidArgument, quoted
from jobsvc.jobs import DEFAULT_RETRIES, MAX_RETRIES, EnqueueOptions, JobState, JobType
from jobsvc.payloads import MAX_ID_LENGTH, MAX_PAYLOAD_BYTES, Payload
from jobsvc.rpc import conversion
from jobsvc.service.jobs import EnqueueRequest
from jobsvc.v1 import job_service_pb2 as pb

# Caller-chosen schedule ids travel to QStash, which allows these characters.
_SCHEDULE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MIN_HANDLER_TIMEOUT = timedelta(seconds=1)
MAX_HANDLER_TIMEOUT = timedelta(minutes=15)


class Violations:
    """Collects violations under a path prefix; ``check`` runs a parser and keeps its errors."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.found.append(FieldViolation(self.prefix + field, description))

    def extend(self, error: InvalidArgument) -> None:
        self.found.extend(
            FieldViolation(self.prefix + v.field, v.description) for v in error.violations
        )

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)


def job_id(value: str, field: str = "job_id") -> uuid.UUID:
    """A job id as a UUID; InvalidArgument on ``field`` if empty or not a UUID."""
    if not value:
        raise InvalidArgument(FieldViolation(field, "is required"))
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(FieldViolation(field, f"is not a UUID: {quoted(value)}")) from None


def schedule_id(value: str) -> str:
    """A schedule id to look up; InvalidArgument if empty."""
    if not value:
        raise InvalidArgument(FieldViolation("schedule_id", "is required"))
    return value


def payload(message: pb.EnqueueRequest | pb.ScheduleRequest, found: Violations) -> Payload | None:
    """The request's payload oneof as a validated domain payload, at most 64 KiB as JSON."""
    which = message.WhichOneof("payload")
    if which is None:
        found.add("payload", f"exactly one of {', '.join(conversion.PAYLOAD_FIELDS)} is required")
        return None
    try:
        parsed = conversion.payload_from_proto(getattr(message, which))
    except InvalidArgument as exc:
        found.extend(exc)
        return None
    # SendNotification checks its size itself; the other payloads are bounded by their field
    # limits today, and this keeps the documented limit true whatever they grow.
    size = len(json.dumps(parsed.to_dict(), separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PAYLOAD_BYTES:
        found.add(which, f"is {size} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}")
        return None
    return parsed


def _deduplication_id(value: str, found: Violations) -> str | None:
    if not value:
        return None
    if value != value.strip() or not value.isprintable() or len(value) > MAX_ID_LENGTH:
        found.add(
            "deduplication_id",
            f"must be at most {MAX_ID_LENGTH} printable characters without leading or "
            "trailing whitespace",
        )
    return value


def enqueue(message: pb.EnqueueRequest, prefix: str = "") -> EnqueueRequest:
    """An EnqueueRequest message as the use case's request; paths start with ``prefix``."""
    found = Violations(prefix)
    parsed = payload(message, found)
    delay = not_before = timeout = None
    try:
        if message.HasField("delay"):
            delay = conversion.from_duration(message.delay, "delay")
        if message.HasField("not_before_time"):
            not_before = conversion.from_timestamp(message.not_before_time, "not_before_time")
        if message.HasField("handler_timeout"):
            timeout = conversion.from_duration(message.handler_timeout, "handler_timeout")
    except InvalidArgument as exc:
        found.extend(exc)
    deduplication_id = _deduplication_id(message.deduplication_id, found)
    found.raise_if_any()
    assert parsed is not None
    return EnqueueRequest(
        payload=parsed,
        options=EnqueueOptions(
            delay=delay,
            not_before=not_before,
            retries=message.retries if message.HasField("retries") else DEFAULT_RETRIES,
            deduplication_id=deduplication_id,
            timeout=timeout,
        ),
    )


def enqueue_batch(message: pb.EnqueueBatchRequest) -> list[EnqueueRequest]:
    """Every entry parsed, or one InvalidArgument naming the bad fields of all of them."""
    found = Violations()
    parsed: list[EnqueueRequest] = []
    first_with: dict[str, int] = {}
    for index, entry in enumerate(message.requests):
        prefix = f"requests[{index}]."
        try:
            parsed.append(enqueue(entry, prefix))
        except InvalidArgument as exc:
            found.found.extend(exc.violations)
        key = entry.deduplication_id
        if key and key in first_with:
            found.add(f"{prefix}deduplication_id", f"repeats that of requests[{first_with[key]}]")
        first_with.setdefault(key, index)
    found.raise_if_any()
    return parsed


@dataclass(frozen=True, kw_only=True)
class JobFilters:
    """ListJobs' filters as the use case takes them (empty collections: any)."""

    states: frozenset[JobState]
    types: frozenset[JobType]
    schedule_id: str | None
    created_after: datetime | None
    created_before: datetime | None


def job_filters(message: pb.ListJobsRequest) -> JobFilters:
    found = Violations()
    for index, state in enumerate(message.states):
        if state not in conversion.JOB_STATES:
            found.add(f"states[{index}]", "must be a known state other than UNSPECIFIED")
    for index, job_type in enumerate(message.types):
        if job_type not in conversion.JOB_TYPES:
            found.add(f"types[{index}]", "must be a known type other than UNSPECIFIED")
    after = before = None
    try:
        if message.HasField("min_create_time"):
            after = conversion.from_timestamp(message.min_create_time, "min_create_time")
        if message.HasField("max_create_time"):
            before = conversion.from_timestamp(message.max_create_time, "max_create_time")
    except InvalidArgument as exc:
        found.extend(exc)
    if after is not None and before is not None and before <= after:
        found.add("max_create_time", "must be later than min_create_time")
    found.raise_if_any()
    return JobFilters(
        states=frozenset(conversion.JOB_STATES[state] for state in message.states),
        types=frozenset(conversion.JOB_TYPES[job_type] for job_type in message.types),
        schedule_id=message.schedule_id or None,
        created_after=after,
        created_before=before,
    )


@dataclass(frozen=True, kw_only=True)
class CronArgs:
    """A ScheduleRequest with cron: the arguments of ``JobService.schedule``."""

    payload: Payload
    cron: str
    time_zone: str | None
    schedule_id: str | None
    retries: int
    handler_timeout: timedelta | None


def schedule(message: pb.ScheduleRequest) -> CronArgs | EnqueueRequest:
    """A ScheduleRequest: cron arguments, or (run_time, delay) a one-off job to enqueue."""
    found = Violations()
    parsed = payload(message, found)
    timing = message.WhichOneof("timing")
    if timing is None:
        found.add("timing", "exactly one of cron, run_time, delay is required")
    timeout = None
    try:
        if message.HasField("handler_timeout"):
            timeout = conversion.from_duration(message.handler_timeout, "handler_timeout")
    except InvalidArgument as exc:
        found.extend(exc)
    retries = message.retries if message.HasField("retries") else DEFAULT_RETRIES
    if timing == "cron":
        found.found.extend(cron_violations(message.cron, message.time_zone or None))
        if message.time_zone:
            found.found.extend(time_zone_violations(message.time_zone))
        if message.schedule_id and not _SCHEDULE_ID.fullmatch(message.schedule_id):
            found.add("schedule_id", "must be 1 to 128 letters, digits, '-', '_' or '.'")
        # JobService.schedule takes these as given; Enqueue's own checks cover one-off runs.
        if not 0 <= retries <= MAX_RETRIES:
            found.add("retries", f"must be between 0 and {MAX_RETRIES}")
        if timeout is not None and not MIN_HANDLER_TIMEOUT <= timeout <= MAX_HANDLER_TIMEOUT:
            found.add("handler_timeout", "must be between 1 second and 15 minutes")
    elif timing is not None:
        if message.time_zone:
            found.add("time_zone", "is only allowed with cron")
        if message.schedule_id:
            found.add("schedule_id", "is only allowed with cron")
    delay = run_time = None
    try:
        if timing == "delay":
            delay = conversion.from_duration(message.delay, "delay")
        elif timing == "run_time":
            run_time = conversion.from_timestamp(message.run_time, "run_time")
    except InvalidArgument as exc:
        found.extend(exc)
    found.raise_if_any()
    assert parsed is not None
    if timing == "cron":
        return CronArgs(
            payload=parsed,
            cron=" ".join(message.cron.split()),
            time_zone=message.time_zone or None,
            schedule_id=message.schedule_id or None,
            retries=retries,
            handler_timeout=timeout,
        )
    return EnqueueRequest(
        payload=parsed,
        options=EnqueueOptions(delay=delay, not_before=run_time, retries=retries, timeout=timeout),
    )


def renamed(error: InvalidArgument, names: dict[str, str]) -> InvalidArgument:
    """``error`` with violations on the fields in ``names`` moved to their new names (the use
    case says not_before_time where ScheduleRequest says run_time)."""
    return InvalidArgument(
        [FieldViolation(names.get(v.field, v.field), v.description) for v in error.violations]
    )


# -- text the database cannot hold ------------------------------------------------------------

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"


def _unstorable(text: str) -> bool:
    # PostgreSQL text and jsonb cannot hold NUL (SQLite can): refused alike on both databases.
    return "\x00" in text


def unstorable_text(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every string of ``message`` (nested messages, repeated fields, Struct keys and values)
    that the database cannot store, by its field path; empty if there is none."""
    found: list[FieldViolation] = []
    name = message.DESCRIPTOR.full_name
    if name == _STRUCT:
        for key, value in message.fields.items():  # type: ignore[attr-defined]
            path = f"{prefix}.{key}" if prefix else key
            if _unstorable(key):
                found.append(FieldViolation(prefix or path, "must not contain NUL characters"))
            found += unstorable_text(value, path)
        return found
    if name == _LIST_VALUE:
        for index, item in enumerate(message.values):  # type: ignore[attr-defined]
            found += unstorable_text(item, f"{prefix}[{index}]")
        return found
    if name == _VALUE:
        kind = message.WhichOneof("kind")
        if kind == "string_value" and _unstorable(message.string_value):  # type: ignore[attr-defined]
            found.append(FieldViolation(prefix, "must not contain NUL characters"))
        elif kind in ("struct_value", "list_value"):
            found += unstorable_text(getattr(message, kind), prefix)
        return found
    for field, value in message.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        items: list[tuple[str, Any]] = (
            [(f"{path}[{i}]", item) for i, item in enumerate(value)]
            if field.is_repeated
            else [(path, value)]
        )
        for item_path, item in items:
            if field.type == FieldDescriptor.TYPE_STRING and _unstorable(item):
                found.append(FieldViolation(item_path, "must not contain NUL characters"))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found += unstorable_text(item, item_path)
    return found
