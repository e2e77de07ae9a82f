"""A typed client of ``jobsvc.v1.JobService``, for sibling services and the ``jobsvc`` CLI.

Domain values in, domain values out: payloads are ``jobsvc.payloads`` types, answers are
``jobsvc.jobs.Job`` and ``Schedule``, and a failed call raises the ``jobsvc.errors`` exception its
ErrorInfo reason names (``InvalidArgument`` with the BadRequest violations, ``JobNotFound``,
``InvalidState``, ...), never ``grpc.RpcError``. A service that cannot be reached, or does not
answer within ``timeout_seconds``, raises ``ServiceUnavailable``::

    from jobsvc.payloads import CrmMatch
    from jobsvc.rpc import JobClient

    with JobClient("jobsvc:50051") as jobs:
        jobs.enqueue(CrmMatch(listing_id="L1", agent_id="A1"))

A call answered UNAVAILABLE (jobsvc restarting, a connection cut) is retried, up to ``attempts``
in all, when repeating it cannot do anything twice: reads, CancelJob, Pause/ResumeSchedule, and
Enqueue, EnqueueBatch and cron Schedule calls, to which the client gives an idempotency key of its
own when the caller gave none (a ``deduplication_id`` per job, a ``schedule_id``): a retry after
the first attempt was committed returns that job or schedule instead of creating another. RetryJob,
DeleteSchedule and one-off Schedule calls are not retried.

``AsyncJobClient`` is the same over ``grpc.aio``. What the API does not carry keeps its default in
the objects returned: ``Job.published_at`` and ``publish_attempts``, ``Attempt.retried`` and
``Schedule.qstash_schedule_id``; a schedule's ``updated_at`` is its ``created_at``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy cannot read them.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from jobsvc.broker.errors import BrokerRejected, BrokerUnsupported
from jobsvc.crons import next_run_time
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
from jobsvc.jobs import Attempt, EnqueueOptions, Job, JobState, JobType, Schedule
from jobsvc.payloads import Payload
from jobsvc.rpc import conversion
from jobsvc.rpc.server import MAX_SEND_MESSAGE_BYTES
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, schedules_pb2

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_ATTEMPTS = 3
# Before the second attempt; doubled before each later one.
FIRST_BACKOFF_SECONDS = 0.2
# One entry of enqueue_batch: a payload with the default options, or with its own.
BatchEntry: TypeAlias = Payload | tuple[Payload, EnqueueOptions]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
M = TypeVar("M", pb.EnqueueRequest, pb.ScheduleRequest)

_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_SEND_MESSAGE_BYTES)]
_OUTCOMES = {number: name for name, number in conversion.ATTEMPT_OUTCOMES.items()}


class ServiceUnavailable(JobServiceError):
    """The client could not reach jobsvc (after its own retries, where they are safe), or jobsvc
    did not answer in time. Only the client raises it (so it is not among the service's errors
    in ``jobsvc.errors``). The call may or may not have taken effect; an Enqueue with a
    deduplication id, or a cron Schedule with a schedule id, is safe to repeat either way."""

    reason = "SERVICE_UNAVAILABLE"


@dataclass(frozen=True)
class EnqueueResult:
    """What Enqueue answered: the job, and whether it already existed (same deduplication id).
    After a retry of a job with the caller's own deduplication id, ``deduplicated`` may be the
    client's own first attempt; with a key of the client's it never is."""

    job: Job
    deduplicated: bool


# -- domain -> requests ---------------------------------------------------------------------------


def _timestamp(moment: datetime | None, field: str) -> Timestamp | None:
    if moment is not None and moment.tzinfo is None:
        raise InvalidArgument(FieldViolation(field, "must be an aware datetime"))
    return conversion.to_timestamp(moment)


def _with_payload(message: M, payload: Payload) -> M:
    field, proto = conversion.payload_to_proto(payload.job_type, payload.to_dict())
    getattr(message, field).CopyFrom(proto)
    return message


def enqueue_request(
    payload: Payload,
    *,
    delay: timedelta | None = None,
    not_before: datetime | None = None,
    retries: int | None = None,
    deduplication_id: str | None = None,
    handler_timeout: timedelta | None = None,
) -> pb.EnqueueRequest:
    """The EnqueueRequest for ``payload``; None leaves an option to the service's default."""
    if delay is not None and not_before is not None:
        raise InvalidArgument(FieldViolation("delay", "give delay or not_before_time, not both"))
    request = pb.EnqueueRequest(
        delay=conversion.to_duration(delay),
        not_before_time=_timestamp(not_before, "not_before_time"),
        retries=retries,
        deduplication_id=deduplication_id or "",
        handler_timeout=conversion.to_duration(handler_timeout),
    )
    return _with_payload(request, payload)


def _own_key() -> str:
    """An idempotency key for one logical call whose caller gave none."""
    return f"client-{uuid.uuid4()}"


def _with_own_keys(request: pb.EnqueueRequest | pb.EnqueueBatchRequest) -> set[int]:
    """Give each job without a deduplication id one of the client's own; the positions given
    one (their ``deduplicated`` answers say only that a retry found its first attempt)."""
    entries = request.requests if isinstance(request, pb.EnqueueBatchRequest) else [request]
    own = set()
    for index, entry in enumerate(entries):
        if not entry.deduplication_id:
            entry.deduplication_id = _own_key()
            own.add(index)
    return own


def _own_schedule_id(request: pb.ScheduleRequest) -> bool:
    """Whether ``request`` can be retried safely, after giving a cron schedule without an id
    one (the format the service gives its own); a one-off run has no idempotency key."""
    if request.WhichOneof("timing") != "cron":
        return False
    if not request.schedule_id:
        request.schedule_id = f"sched_{uuid.uuid4().hex}"
    return True


def _batch_request(jobs: Iterable[BatchEntry]) -> pb.EnqueueBatchRequest:
    requests = []
    for index, entry in enumerate(jobs):
        payload, options = entry if isinstance(entry, tuple) else (entry, EnqueueOptions())
        try:
            request = enqueue_request(
                payload,
                delay=options.delay,
                not_before=options.not_before,
                retries=options.retries,
                deduplication_id=options.deduplication_id,
                handler_timeout=options.timeout,
            )
        except InvalidArgument as exc:  # named as the service names them
            raise InvalidArgument(
                [
                    FieldViolation(f"requests[{index}].{v.field}", v.description)
                    for v in exc.violations
                ]
            ) from None
        requests.append(request)
    return pb.EnqueueBatchRequest(requests=requests)


def schedule_request(
    payload: Payload,
    *,
    cron: str | None = None,
    time_zone: str | None = None,
    schedule_id: str | None = None,
    run_time: datetime | None = None,
    delay: timedelta | None = None,
    retries: int | None = None,
    handler_timeout: timedelta | None = None,
) -> pb.ScheduleRequest:
    """The ScheduleRequest: exactly one of ``cron``, ``run_time`` and ``delay``."""
    if [cron, run_time, delay].count(None) != 2:
        raise InvalidArgument(
            FieldViolation("timing", "exactly one of cron, run_time, delay is required")
        )
    request = pb.ScheduleRequest(
        run_time=_timestamp(run_time, "run_time"),
        delay=conversion.to_duration(delay),
        time_zone=time_zone or "",
        schedule_id=schedule_id or "",
        retries=retries,
        handler_timeout=conversion.to_duration(handler_timeout),
    )
    if cron is not None:  # even "" selects the oneof, so it is set only when given
        request.cron = cron
    return _with_payload(request, payload)


def _list_jobs_request(
    states: Collection[JobState],
    types: Collection[JobType],
    schedule_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    page_size: int,
    page_token: str | None,
) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(
        states=[conversion.job_state_number(state) for state in states],
        types=[conversion.job_type_number(job_type) for job_type in types],
        schedule_id=schedule_id or "",
        min_create_time=_timestamp(created_after, "min_create_time"),
        max_create_time=_timestamp(created_before, "max_create_time"),
        page_size=page_size,
        page_token=page_token or "",
    )


# -- responses -> domain --------------------------------------------------------------------------


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return conversion.from_timestamp(getattr(message, field), field)


def _span(message: jobs_pb2.Job | schedules_pb2.Schedule) -> timedelta | None:
    if not message.HasField("handler_timeout"):
        return None
    return conversion.from_duration(message.handler_timeout, "handler_timeout")


def _payload(message: jobs_pb2.Job | schedules_pb2.Schedule) -> tuple[JobType, dict[str, Any]]:
    field = message.WhichOneof("payload")
    if field is None:
        raise JobServiceError("the service answered with a job that has no payload")
    proto = getattr(message, field)
    try:
        wire = conversion.payload_from_proto(proto).to_dict()
    except InvalidArgument:
        # Stored by a release with other rules: shown as it is, not re-validated.
        wire = json_format.MessageToDict(proto)
    return conversion.PAYLOAD_FIELDS[field], wire


def job_from_proto(message: jobs_pb2.Job) -> Job:
    """A Job message as the domain's ``Job``."""
    state = conversion.JOB_STATES.get(message.state)
    if state is None:
        raise JobServiceError(f"the service answered with an unknown job state {message.state}")
    job_type, payload = _payload(message)
    return Job(
        id=uuid.UUID(message.id),
        type=job_type,
        payload=payload,
        state=state,
        attempts=message.attempts,
        max_retries=message.max_retries,
        created_at=conversion.from_timestamp(message.create_time, "create_time"),
        not_before=_time(message, "not_before_time"),
        started_at=_time(message, "start_time"),
        finished_at=_time(message, "finish_time"),
        result=conversion.from_struct(message.result) if message.HasField("result") else None,
        error=message.last_error or None,
        qstash_message_id=message.qstash_message_id or None,
        dlq_id=message.dlq_id or None,
        deduplication_id=message.deduplication_id or None,
        schedule_id=message.schedule_id or None,
        timeout=_span(message),
        history=[
            Attempt(
                number=attempt.number,
                started_at=conversion.from_timestamp(attempt.start_time, "start_time"),
                finished_at=_time(attempt, "finish_time"),
                outcome=_OUTCOMES.get(attempt.outcome),
                error=attempt.error or None,
                qstash_message_id=attempt.qstash_message_id or None,
            )
            for attempt in message.history
        ],
    )


def _enqueue_result(response: pb.EnqueueResponse, *, own_key: bool = False) -> EnqueueResult:
    return EnqueueResult(job_from_proto(response.job), response.deduplicated and not own_key)


def _retryable(error: grpc.RpcError) -> bool:
    return cast(_FailedCall, error).code() is grpc.StatusCode.UNAVAILABLE


def schedule_from_proto(message: schedules_pb2.Schedule) -> Schedule:
    """A Schedule message as the domain's ``Schedule``."""
    job_type, payload = _payload(message)
    created_at = conversion.from_timestamp(message.create_time, "create_time")
    return Schedule(
        id=message.schedule_id,
        cron=message.cron,
        time_zone=message.time_zone or None,
        type=job_type,
        payload=payload,
        retries=message.retries,
        timeout=_span(message),
        paused=message.paused,
        created_at=created_at,
        updated_at=created_at,
        last_run_at=_time(message, "last_run_time"),
    )


def to_json(value: Job | Schedule) -> dict[str, Any]:
    """A job or schedule as the API's JSON (camelCase, as grpcurl prints it), every field that
    has no presence included, so scripts find ``attempts: 0`` rather than nothing. A schedule's
    ``nextRunTime`` is computed here from its cron and time zone, as the service computes it."""
    if isinstance(value, Job):
        message: Any = conversion.job_to_proto(value)
    else:
        upcoming = (
            None if value.paused else next_run_time(value.cron, value.time_zone, datetime.now(UTC))
        )
        message = conversion.schedule_to_proto(value, next_run_time=upcoming)
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


# -- errors ---------------------------------------------------------------------------------------

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REASONS: dict[str, type[JobServiceError]] = {
    cls.reason: cls
    for cls in (
        JobNotFound,
        ScheduleNotFound,
        InvalidState,
        AlreadyExists,
        BrokerUnavailable,
        BrokerRejected,
        BrokerUnsupported,
        StorageUnavailable,
        Unauthenticated,
    )
}


class _FailedCall(Protocol):
    """What both grpc.RpcError flavours (sync and aio) offer."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...


def _rich_details(call: _FailedCall) -> tuple[str | None, list[FieldViolation]]:
    """The ErrorInfo reason and BadRequest violations of a failed call's status, if it has them."""
    reason: str | None = None
    violations: list[FieldViolation] = []
    for key, value in call.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def error_from_rpc(
    error: grpc.RpcError, *, target: str, timeout_seconds: float | None
) -> JobServiceError:
    """The ``jobsvc.errors`` exception a failed call stands for: the class its ErrorInfo reason
    names; ``ServiceUnavailable`` when the service was not reached or did not answer in time; a
    plain ``JobServiceError`` whose ``reason`` is the reason or status code otherwise."""
    call = cast(_FailedCall, error)
    code = call.code()
    message = call.details() or code.name
    reason, violations = _rich_details(call)
    if reason == InvalidArgument.reason or (
        reason is None and code is grpc.StatusCode.INVALID_ARGUMENT
    ):
        return InvalidArgument(violations or [FieldViolation("request", message)])
    known = _REASONS.get(reason or "")
    if known is not None:
        return known(message)
    if reason is None and code is grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailable(f"cannot reach jobsvc at {target}: {message}")
    if reason is None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout_seconds:g} s" if timeout_seconds is not None else ""
        return ServiceUnavailable(
            f"jobsvc at {target} did not answer{within}; the call may or may not have taken effect"
        )
    if reason is None and code is grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    unknown = JobServiceError(message)
    unknown.reason = reason or code.name
    return unknown


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


# -- clients --------------------------------------------------------------------------------------


class JobClient:
    """A blocking client of one jobsvc gRPC server; thread-safe, one channel, close it (or use it
    as a context manager). ``token``: sent as ``authorization: Bearer <token>``.
    ``tls_root_certificates``: PEM roots to verify the server with; given, the channel is TLS.
    ``timeout_seconds``: the deadline of each attempt of a unary call. ``attempts``: how many
    times a call that can be repeated safely is tried in all (see the module docstring)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls_root_certificates: bytes | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self.attempts = max(1, attempts)
        self._metadata = _metadata(token)
        if tls_root_certificates is None:
            self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, *, safe: bool = True
    ) -> Resp:
        """One call; repeated on UNAVAILABLE if it is ``safe`` to repeat."""
        backoff = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self.attempts + 1):
            try:
                return method(request, timeout=self.timeout_seconds, metadata=self._metadata)
            except grpc.RpcError as exc:
                if not (safe and attempt < self.attempts and _retryable(exc)):
                    raise error_from_rpc(
                        exc, target=self.target, timeout_seconds=self.timeout_seconds
                    ) from exc
            time.sleep(backoff)
            backoff *= 2
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def enqueue(
        self,
        payload: Payload,
        *,
        delay: timedelta | None = None,
        not_before: datetime | None = None,
        retries: int | None = None,
        deduplication_id: str | None = None,
        handler_timeout: timedelta | None = None,
    ) -> EnqueueResult:
        """Create one job (Enqueue); None leaves an option to the service (retries: 3)."""
        request = enqueue_request(
            payload,
            delay=delay,
            not_before=not_before,
            retries=retries,
            deduplication_id=deduplication_id,
            handler_timeout=handler_timeout,
        )
        own = _with_own_keys(request)
        return _enqueue_result(self._call(self._stub.Enqueue, request), own_key=bool(own))

    def enqueue_batch(self, jobs: Iterable[BatchEntry]) -> list[EnqueueResult]:
        """Create up to 1,000 jobs, all or none (EnqueueBatch); one result per entry, in order."""
        request = _batch_request(jobs)
        own = _with_own_keys(request)
        response = self._call(self._stub.EnqueueBatch, request)
        return [
            _enqueue_result(entry, own_key=index in own)
            for index, entry in enumerate(response.responses)
        ]

    def get_status(self, job_id: uuid.UUID | str) -> Job:
        """The job with its attempt history (GetStatus)."""
        response = self._call(self._stub.GetStatus, pb.GetStatusRequest(job_id=str(job_id)))
        return job_from_proto(response.job)

    def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        types: Collection[JobType] = (),
        schedule_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first, and the next page's token (None on the last page).
        Filters combine with AND; several states (or types) match any of them."""
        request = _list_jobs_request(
            states, types, schedule_id, created_after, created_before, page_size, page_token
        )
        response = self._call(self._stub.ListJobs, request)
        return [job_from_proto(job) for job in response.jobs], response.next_page_token or None

    def cancel(self, job_id: uuid.UUID | str) -> Job:
        """Cancel a pending or retrying job (CancelJob); ``InvalidState`` otherwise."""
        response = self._call(self._stub.CancelJob, pb.CancelJobRequest(job_id=str(job_id)))
        return job_from_proto(response.job)

    def retry(self, job_id: uuid.UUID | str) -> Job:
        """Re-drive a failed job from the dead-letter queue (RetryJob); ``InvalidState``
        unless it is failed."""
        request = pb.RetryJobRequest(job_id=str(job_id))
        response = self._call(self._stub.RetryJob, request, safe=False)
        return job_from_proto(response.job)

    def watch(
        self, job_id: uuid.UUID | str, *, timeout_seconds: float | None = None
    ) -> Iterator[Job]:
        """The job now and after every change, ending with its final state (WatchJob);
        ``timeout_seconds`` bounds the whole watch (None: no bound)."""
        call = self._stub.WatchJob(
            pb.WatchJobRequest(job_id=str(job_id)), timeout=timeout_seconds, metadata=self._metadata
        )
        try:
            for response in call:
                yield job_from_proto(response.job)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, target=self.target, timeout_seconds=timeout_seconds) from exc
        finally:
            call.cancel()  # a caller that stops early ends the stream

    def wait(self, job_id: uuid.UUID | str, *, timeout_seconds: float | None = None) -> Job:
        """Block until the job is completed, failed or cancelled, and return it."""
        jobs = list(self.watch(job_id, timeout_seconds=timeout_seconds))
        return jobs[-1]  # WatchJob always sends at least the job as it is

    def schedule(
        self,
        payload: Payload,
        *,
        cron: str | None = None,
        time_zone: str | None = None,
        schedule_id: str | None = None,
        run_time: datetime | None = None,
        delay: timedelta | None = None,
        retries: int | None = None,
        handler_timeout: timedelta | None = None,
    ) -> Schedule | Job:
        """A cron schedule (``cron``; with ``schedule_id``, create-or-update), or one job run once
        at ``run_time`` or after ``delay`` (Schedule)."""
        request = schedule_request(
            payload,
            cron=cron,
            time_zone=time_zone,
            schedule_id=schedule_id,
            run_time=run_time,
            delay=delay,
            retries=retries,
            handler_timeout=handler_timeout,
        )
        response = self._call(self._stub.Schedule, request, safe=_own_schedule_id(request))
        if response.WhichOneof("created") == "job":
            return job_from_proto(response.job)
        return schedule_from_proto(response.schedule)

    def get_schedule(self, schedule_id: str) -> Schedule:
        request = pb.GetScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto(self._call(self._stub.GetSchedule, request).schedule)

    def list_schedules(
        self, *, page_size: int = 0, page_token: str | None = None
    ) -> tuple[list[Schedule], str | None]:
        """One page of cron schedules by id, and the next page's token (None on the last)."""
        request = pb.ListSchedulesRequest(page_size=page_size, page_token=page_token or "")
        response = self._call(self._stub.ListSchedules, request)
        schedules = [schedule_from_proto(s) for s in response.schedules]
        return schedules, response.next_page_token or None

    def pause_schedule(self, schedule_id: str) -> Schedule:
        request = pb.PauseScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto(self._call(self._stub.PauseSchedule, request).schedule)

    def resume_schedule(self, schedule_id: str) -> Schedule:
        request = pb.ResumeScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto(self._call(self._stub.ResumeSchedule, request).schedule)

    def delete_schedule(self, schedule_id: str) -> None:
        request = pb.DeleteScheduleRequest(schedule_id=schedule_id)
        self._call(self._stub.DeleteSchedule, request, safe=False)


class AsyncJobClient:
    """``JobClient`` over ``grpc.aio``: the same methods, awaited; ``watch`` is an async
    iterator. Create and use it on one event loop; ``await close()`` or ``async with``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls_root_certificates: bytes | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self.attempts = max(1, attempts)
        self._metadata = _metadata(token)
        if tls_root_certificates is None:
            self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        safe: bool = True,
    ) -> Resp:
        backoff = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self.attempts + 1):
            try:
                return await method(request, timeout=self.timeout_seconds, metadata=self._metadata)
            except grpc.RpcError as exc:
                if not (safe and attempt < self.attempts and _retryable(exc)):
                    raise error_from_rpc(
                        exc, target=self.target, timeout_seconds=self.timeout_seconds
                    ) from exc
            await asyncio.sleep(backoff)
            backoff *= 2
        raise AssertionError("unreachable")  # the last attempt returned or raised

    async def enqueue(
        self,
        payload: Payload,
        *,
        delay: timedelta | None = None,
        not_before: datetime | None = None,
        retries: int | None = None,
        deduplication_id: str | None = None,
        handler_timeout: timedelta | None = None,
    ) -> EnqueueResult:
        """See ``JobClient.enqueue``."""
        request = enqueue_request(
            payload,
            delay=delay,
            not_before=not_before,
            retries=retries,
            deduplication_id=deduplication_id,
            handler_timeout=handler_timeout,
        )
        own = _with_own_keys(request)
        return _enqueue_result(await self._call(self._stub.Enqueue, request), own_key=bool(own))

    async def enqueue_batch(self, jobs: Iterable[BatchEntry]) -> list[EnqueueResult]:
        request = _batch_request(jobs)
        own = _with_own_keys(request)
        response = await self._call(self._stub.EnqueueBatch, request)
        return [
            _enqueue_result(entry, own_key=index in own)
            for index, entry in enumerate(response.responses)
        ]

    async def get_status(self, job_id: uuid.UUID | str) -> Job:
        request = pb.GetStatusRequest(job_id=str(job_id))
        return job_from_proto((await self._call(self._stub.GetStatus, request)).job)

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        types: Collection[JobType] = (),
        schedule_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str | None = None,
    ) -> tuple[list[Job], str | None]:
        request = _list_jobs_request(
            states, types, schedule_id, created_after, created_before, page_size, page_token
        )
        response = await self._call(self._stub.ListJobs, request)
        return [job_from_proto(job) for job in response.jobs], response.next_page_token or None

    async def cancel(self, job_id: uuid.UUID | str) -> Job:
        request = pb.CancelJobRequest(job_id=str(job_id))
        return job_from_proto((await self._call(self._stub.CancelJob, request)).job)

    async def retry(self, job_id: uuid.UUID | str) -> Job:
        request = pb.RetryJobRequest(job_id=str(job_id))
        return job_from_proto((await self._call(self._stub.RetryJob, request, safe=False)).job)

    async def watch(
        self, job_id: uuid.UUID | str, *, timeout_seconds: float | None = None
    ) -> AsyncIterator[Job]:
        """See ``JobClient.watch``."""
        call = self._stub.WatchJob(
            pb.WatchJobRequest(job_id=str(job_id)), timeout=timeout_seconds, metadata=self._metadata
        )
        try:
            async for response in call:
                yield job_from_proto(response.job)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, target=self.target, timeout_seconds=timeout_seconds) from exc
        finally:
            call.cancel()

    async def wait(self, job_id: uuid.UUID | str, *, timeout_seconds: float | None = None) -> Job:
        """See ``JobClient.wait``."""
        jobs = [job async for job in self.watch(job_id, timeout_seconds=timeout_seconds)]
        return jobs[-1]  # WatchJob always sends at least the job as it is

    async def schedule(
        self,
        payload: Payload,
        *,
        cron: str | None = None,
        time_zone: str | None = None,
        schedule_id: str | None = None,
        run_time: datetime | None = None,
        delay: timedelta | None = None,
        retries: int | None = None,
        handler_timeout: timedelta | None = None,
    ) -> Schedule | Job:
        """See ``JobClient.schedule``."""
        request = schedule_request(
            payload,
            cron=cron,
            time_zone=time_zone,
            schedule_id=schedule_id,
            run_time=run_time,
            delay=delay,
            retries=retries,
            handler_timeout=handler_timeout,
        )
        response = await self._call(self._stub.Schedule, request, safe=_own_schedule_id(request))
        if response.WhichOneof("created") == "job":
            return job_from_proto(response.job)
        return schedule_from_proto(response.schedule)

    async def get_schedule(self, schedule_id: str) -> Schedule:
        request = pb.GetScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto((await self._call(self._stub.GetSchedule, request)).schedule)

    async def list_schedules(
        self, *, page_size: int = 0, page_token: str | None = None
    ) -> tuple[list[Schedule], str | None]:
        request = pb.ListSchedulesRequest(page_size=page_size, page_token=page_token or "")
        response = await self._call(self._stub.ListSchedules, request)
        schedules = [schedule_from_proto(s) for s in response.schedules]
        return schedules, response.next_page_token or None

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        request = pb.PauseScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto((await self._call(self._stub.PauseSchedule, request)).schedule)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        request = pb.ResumeScheduleRequest(schedule_id=schedule_id)
        response = await self._call(self._stub.ResumeSchedule, request)
        return schedule_from_proto(response.schedule)

    async def delete_schedule(self, schedule_id: str) -> None:
        request = pb.DeleteScheduleRequest(schedule_id=schedule_id)
        await self._call(self._stub.DeleteSchedule, request, safe=False)
