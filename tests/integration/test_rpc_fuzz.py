"""Property-based fuzzing of every RPC of ``jobsvc.v1.JobService``, against the real server.

Requests are built from the proto descriptors (every field of every request type, oneofs,
enums with unknown numbers, strings with NUL, control and non-ASCII characters or far too long,
repeated fields, Struct values with NaN and infinities, timestamps and durations out of range),
with values that reach past the first check where the field's name says what it holds (existing
job and schedule ids, cron expressions, zones, platforms, page tokens). Each is sent to a server
on port 0 over the real job log and the local QStash server; raw bytes are sent too. For every
call: no INTERNAL or UNKNOWN, no UNAVAILABLE (nothing is down), an answer within the deadline
(DEADLINE_EXCEEDED is a failure), and a refused call writes nothing (jobs and schedules as
before).

The run is repeatable (``derandomize``): the same examples on every run, so it never flakes.
The server runs on the test's event loop; hypothesis drives blocking calls from a worker thread.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from jobsvc.broker import QStashBroker, SidecarUrls
from jobsvc.db import JobLog, utc_now
from jobsvc.db.tables import job_logs, job_schedules
from jobsvc.localqstash import LocalQStashServer
from jobsvc.rpc import build_server
from jobsvc.service.jobs import JobService
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import payloads_pb2
from tests.receiver import Receiver

SERVICE = pb.DESCRIPTOR.services_by_name["JobService"]
# Examples per RPC (typed, raw bytes) by database: PostgreSQL, slower, runs fewer, for what
# only it refuses (NUL in text); the whole test stays under a minute on a small machine.
EXAMPLES = {"sqlite": (120, 60), "postgresql": (60, 30)}
CALL_TIMEOUT_SECONDS = 10.0
# Codes no request may get: a bug (INTERNAL, UNKNOWN), a hang (DEADLINE_EXCEEDED), or, with the
# database and the broker up, UNAVAILABLE: a request reached them that they cannot take (NUL on
# PostgreSQL, a cron the broker cannot arm) and the caller is told to retry it.
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values -------------------------------------------------------------------------------------

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "line\nbreak",
    "\u202e",
    "\ud7ff\ue000",
    "\U0001f600",
    "é" * 200,
    "x" * 129,
    "x" * 300,
    "x" * 20_000,
    "../../etc/passwd",
    "'; DROP TABLE job_logs; --",
    "{{ 7 * 7 }}",
    "%s%n",
]
CRONS = [
    "0 9 * * *",
    "*/5 * * * *",
    "0 0 29 2 *",
    "0 0 31 2 *",
    "0 0 30 2 *",
    "0 0 * * 8",
    "61 * * * *",
    "* * * *",
    "* * * * * *",
    "@daily",
    "CRON_TZ=UTC 0 9 * * *",
    "0 9 * * MON-FRI",
    "0 9 L * *",
    "0 9 * * 5#3",
    "H * * * *",
    "*/0 * * * *",
    "0-59/1000 * * * *",
    "1,2,3," * 1000 + "4 * * * *",
    "0 9 * * *\x00",
]
ZONES = [
    "UTC",
    "Etc/UTC",
    "America/New_York",
    "Europe/Paris",
    "America",
    "Asia",
    "Etc",
    "posixrules",
    "Factory",
    "localtime",
    "/etc/localtime",
    "../zoneinfo/UTC",
    "America/" + "x" * 300,
    "Mars/Olympus",
]
PLATFORMS = ["zillow", "apartments", "craigslist", "Zillow", "myspace"]
DOUBLES = [0.0, -0.0, 1.5, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, 2.0**53 + 1]
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# Timestamp's valid range is years 1 to 9999; seconds beyond it, and nanos beyond 0..999,999,999.
TIMESTAMP_SECONDS = [-62135596801, -62135596800, 0, 1_800_000_000, 253402300799, 253402300800]
DURATION_SECONDS = [-315576000001, -1, 0, 1, 59, 60, 900, 901, 31_536_000, 315576000001]
NANOS = [-1, 0, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]


@dataclass
class Known:
    """Ids and tokens that exist on the server, so requests get past "not found"."""

    job_ids: list[str]
    schedule_ids: list[str]
    page_tokens: list[str]


def _text(known: Known, field: FieldDescriptor) -> st.SearchStrategy[str]:
    by_name: dict[str, list[str]] = {
        "job_id": [*known.job_ids, str(uuid.uuid4()), "not-a-uuid", str(uuid.UUID(int=0))],
        "schedule_id": [*known.schedule_ids, "fuzz.new-1", "sched_x", "bad id!"],
        "cron": CRONS,
        "time_zone": ZONES,
        "platforms": PLATFORMS,
        "page_token": [*known.page_tokens, "not-a-token", "a.b"],
        "deduplication_id": ["dup-1", "dup-2", " dup", "dup\t"],
        "listing_id": ["L1", "L2"],
        "agent_id": ["A1"],
        "applicant_id": ["APP1"],
        "recipient_id": ["R1"],
        "template_id": ["adverse-action", "T1", "../adverse-action"],
        "missing_docs": ["paystub", "id"],
    }
    choices = by_name.get(field.name, [])
    strategies = [
        st.sampled_from(NASTY_TEXT),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    ]
    if choices:
        # Values that mean something are drawn most often.
        meaningful = st.sampled_from(choices)
        strategies = [meaningful] * 3 + [meaningful.map(lambda v: v + "\x00")] + strategies
    return st.one_of(strategies)


def _json_value() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(DOUBLES),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**60), 2**60).map(float),
        st.sampled_from(NASTY_TEXT[:12]),
        st.text(max_size=20),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=12,
    )


def _well_known(name: str) -> st.SearchStrategy[Message] | None:
    if name == "google.protobuf.Timestamp":
        from google.protobuf.timestamp_pb2 import Timestamp

        return st.builds(
            Timestamp,
            seconds=st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(*INT64)),
            nanos=st.one_of(st.sampled_from(NANOS), st.integers(*INT32)),
        )
    if name == "google.protobuf.Duration":
        from google.protobuf.duration_pb2 import Duration

        return st.builds(
            Duration,
            seconds=st.one_of(st.sampled_from(DURATION_SECONDS), st.integers(*INT64)),
            nanos=st.one_of(st.sampled_from(NANOS), st.integers(*INT32)),
        )
    if name == "google.protobuf.Struct":
        from google.protobuf.struct_pb2 import Struct

        def struct(data: dict[str, Any]) -> Struct:
            message = Struct()
            message.update(data)
            return message

        return st.dictionaries(st.text(max_size=8), _json_value(), max_size=5).map(struct)
    return None


def _scalar(known: Known, field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(known, field)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.sampled_from(DOUBLES)
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        # Open enums: a number this build does not know arrives as it is.
        return st.one_of(st.sampled_from(numbers), st.integers(*INT32))
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.integers(*INT64)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    # int32 and friends: the edges and the values the API's ranges turn on.
    return st.one_of(st.sampled_from([-1, 0, 1, 3, 20, 21, 50, 1000, 1001]), st.integers(*INT32))


def message_strategy(
    descriptor: Descriptor, known: Known, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type: each field set or not, at most one field per oneof."""
    well_known = _well_known(descriptor.full_name)
    if well_known is not None:
        return well_known
    cls = GetMessageClass(descriptor)

    def value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                return st.just(GetMessageClass(field.message_type)())
            return message_strategy(field.message_type, known, depth + 1)
        return _scalar(known, field)

    plain = {}
    for field in descriptor.fields:
        if field.containing_oneof is not None and not field.containing_oneof.name.startswith("_"):
            continue  # drawn with its oneof below
        item = value(field)
        max_items = 4 if field.type == FieldDescriptor.TYPE_MESSAGE else 6
        plain[field.name] = (
            st.lists(item, max_size=max_items) if field.is_repeated else st.none() | item
        )
    oneofs = {
        # Unset as often as each member: the members are what reaches the service.
        oneof.name: st.one_of(
            st.none(), *(st.tuples(st.just(f.name), value(f)) for f in oneof.fields)
        )
        for oneof in descriptor.oneofs
        if not oneof.name.startswith("_")  # proto3 optional: drawn as a plain field
    }

    def build(fields: dict[str, Any], chosen: dict[str, tuple[str, Any] | None]) -> Message:
        message = cls()
        for name, drawn in [*fields.items(), *(c for c in chosen.values() if c is not None)]:
            if drawn is None:
                continue
            target = getattr(message, name)
            if isinstance(drawn, list):
                if drawn and isinstance(drawn[0], Message):
                    for entry in drawn:
                        target.add().CopyFrom(entry)
                else:
                    target.extend(drawn)
            elif isinstance(drawn, Message):
                target.CopyFrom(drawn)
            else:
                setattr(message, name, drawn)
        return message

    return st.builds(build, st.fixed_dictionaries(plain), st.fixed_dictionaries(oneofs))


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture
async def address(
    job_log: JobLog, server: LocalQStashServer, receiver: Receiver
) -> AsyncIterator[str]:
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    service = JobService(
        job_log=job_log,
        broker=broker,
        urls=SidecarUrls(public_url=receiver.url),
        handler_timeout=timedelta(seconds=30),
        clock=utc_now,
        watch_interval=timedelta(milliseconds=20),
    )
    rpc, port = build_server(service, host="127.0.0.1", port=0)
    await rpc.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await rpc.stop(0)
        await service.aclose()
        await broker.aclose()


class Caller:
    """Blocking calls of any JobService method by its descriptor, serialized or raw."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def call(self, method: MethodDescriptor, request: bytes) -> tuple[grpc.StatusCode, Any]:
        path = f"/{SERVICE.full_name}/{method.name}"
        try:
            if method.server_streaming:
                stream = self._channel.unary_stream(path)(request, timeout=CALL_TIMEOUT_SECONDS)
                try:
                    return grpc.StatusCode.OK, next(stream, None)
                finally:
                    stream.cancel()
            return grpc.StatusCode.OK, self._channel.unary_unary(path)(
                request, timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            return error.code(), error.details()  # type: ignore[attr-defined]


def snapshot(engine: Engine) -> tuple[int, list[tuple[Any, ...]]]:
    """How many jobs, and every schedule as stored."""
    with engine.connect() as connection:
        jobs = connection.execute(select(func.count()).select_from(job_logs)).scalar_one()
        schedules = [tuple(row) for row in connection.execute(select(job_schedules))]
    return jobs, sorted(schedules, key=repr)


def _seed(caller: Caller) -> Known:
    """A few jobs, schedules and page tokens for the requests to refer to."""
    methods = SERVICE.methods_by_name
    crm = payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1")
    job_ids = []
    for index in range(3):
        request = pb.EnqueueRequest(crm_match=crm, delay=Duration(seconds=3600 + index))
        code, answer = caller.call(methods["Enqueue"], request.SerializeToString())
        assert code == grpc.StatusCode.OK, answer
        job_ids.append(pb.EnqueueResponse.FromString(answer).job.id)
    schedule_ids = ["fuzz-a", "fuzz-b"]
    for schedule_id in schedule_ids:
        request = pb.ScheduleRequest(crm_match=crm, cron="0 9 1 1 *", schedule_id=schedule_id)
        code, answer = caller.call(methods["Schedule"], request.SerializeToString())
        assert code == grpc.StatusCode.OK, answer
    _, jobs = caller.call(methods["ListJobs"], pb.ListJobsRequest(page_size=1).SerializeToString())
    _, listed = caller.call(
        methods["ListSchedules"], pb.ListSchedulesRequest(page_size=1).SerializeToString()
    )
    tokens = [
        pb.ListJobsResponse.FromString(jobs).next_page_token,
        pb.ListSchedulesResponse.FromString(listed).next_page_token,
    ]
    return Known(job_ids=job_ids, schedule_ids=schedule_ids, page_tokens=tokens)


def _check(
    caller: Caller, engine: Engine, method: MethodDescriptor, data: bytes, shown: Callable[[], str]
) -> None:
    before = snapshot(engine)
    code, answer = caller.call(method, data)
    assert code not in FORBIDDEN, f"{method.name} answered {code.name} ({answer}) to {shown()}"
    if code is not grpc.StatusCode.OK:
        assert snapshot(engine) == before, f"refused {method.name} ({code.name}) wrote: {shown()}"


def fuzz_method(caller: Caller, engine: Engine, method: MethodDescriptor, known: Known) -> None:
    """Fuzz one RPC with messages of its request type, then with raw bytes."""
    typed_examples, raw_examples = EXAMPLES[engine.dialect.name]

    @settings(FUZZ_SETTINGS, max_examples=typed_examples)
    @given(request=message_strategy(method.input_type, known))
    def typed(request: Message) -> None:
        _check(
            caller,
            engine,
            method,
            request.SerializeToString(),
            lambda: text_format.MessageToString(request, as_one_line=True)[:2000],
        )

    @settings(FUZZ_SETTINGS, max_examples=raw_examples)
    @given(data=st.binary(max_size=64))
    def raw(data: bytes) -> None:
        _check(caller, engine, method, data, lambda: repr(data))

    typed()
    raw()


def fuzz(address: str, engine: Engine) -> list[str]:
    """Fuzz every RPC; the names of the RPCs fuzzed."""
    with grpc.insecure_channel(address) as channel:
        caller = Caller(channel)
        known = _seed(caller)
        for method in SERVICE.methods:
            fuzz_method(caller, engine, method, known)
    return [method.name for method in SERVICE.methods]


async def test_every_rpc_survives_fuzzed_requests(address: str, engine: Engine) -> None:
    fuzzed = await asyncio.to_thread(fuzz, address, engine)
    assert fuzzed == [method.name for method in SERVICE.methods]
    assert len(fuzzed) == 13
