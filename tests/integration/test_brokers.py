"""The brokers against real servers: ``QStashBroker`` through the official SDK to the local QStash
server (on SQLite and PostgreSQL), delivering to a real receiver that checks every signature;
``LocalQStashBroker`` owning its server; ``InlineBroker`` calling its dispatch directly."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from qstash import AsyncQStash
from qstash.dlq import DlqMessage
from qstash.errors import QStashError

from jobsvc.broker import (
    BrokerRejected,
    BrokerUnsupported,
    CronSchedule,
    Delivery,
    Envelope,
    InlineBroker,
    InvalidEnvelope,
    LocalQStashBroker,
    QStashBroker,
    SidecarUrls,
)
from jobsvc.errors import BrokerUnavailable, ScheduleNotFound
from jobsvc.jobs import Job, JobType
from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings
from jobsvc.webhooks.signature import SignatureVerifier
from tests.receiver import Receiver, ReceiverFactory, Response

ServerFactory = Callable[..., LocalQStashServer]
CRM_PATH = "/api/jobs/crm-match"
FAILED_PATH = "/api/jobs/_failed"


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": JobType.CRM_MATCH,
        "payload": {"listingId": "L1", "agentId": "A1"},
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    return Job(**values)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def broker(server: LocalQStashServer) -> AsyncIterator[QStashBroker]:
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    try:
        yield broker
    finally:
        await broker.aclose()


@pytest.fixture
def urls(receiver: Receiver) -> SidecarUrls:
    return SidecarUrls(public_url=receiver.url)


# -- QStashBroker on the local QStash server ---------------------------------------------------


async def test_publish_lands_at_the_sidecar_url_signed(
    broker: QStashBroker, server: LocalQStashServer, receiver: Receiver, urls: SidecarUrls
) -> None:
    job = make_job(timeout=timedelta(seconds=20))
    delivery = Delivery.for_job(job, urls=urls)
    message_id = await broker.publish(delivery)

    [got] = await receiver.wait_for_async(1, path=CRM_PATH)
    assert got.method == "POST"
    assert got.body == delivery.body
    assert Envelope.decode(got.body) == Envelope(
        job_type=JobType.CRM_MATCH, payload=job.payload, job_id=job.id, timeout=job.timeout
    )
    assert got.header("Upstash-Message-Id") == message_id
    assert got.header("Upstash-Retried") == "0"
    assert got.header("Content-Type") == "application/json"
    assert got.signature_ok, got.signature_error
    verifier = SignatureVerifier(
        server.user.current_signing_key, server.user.next_signing_key, public_url=receiver.url
    )
    claims = verifier.verify(got.header("Upstash-Signature"), got.body, got.url)
    assert claims.subject == receiver.url_for(CRM_PATH)
    assert claims.key == "current"


async def test_options_reach_qstash_and_delay_is_honoured(
    broker: QStashBroker, async_client: AsyncQStash, receiver: Receiver, urls: SidecarUrls
) -> None:
    # time_scale 0.001: a 500 s delay passes in 0.5 s.
    delayed = Delivery.for_job(make_job(max_retries=2), urls=urls, timeout=timedelta(seconds=30))
    delayed = dataclasses.replace(delayed, delay=timedelta(seconds=500))
    started = time.monotonic()
    message_id = await broker.publish(delayed)

    message = await async_client.message.get(message_id)
    assert message.not_before - message.created_at == 500_000
    assert message.max_retries == 2
    assert message.url == receiver.url_for(CRM_PATH)
    assert message.failure_callback == receiver.url_for(FAILED_PATH)
    assert message.label == "crm-match"

    # Not before the delay from before the publish: a bound load cannot break.
    [got] = await receiver.wait_for_async(1, path=CRM_PATH)
    assert got.header("Upstash-Message-Id") == message_id
    assert got.received_at - started >= 0.49  # (times are whole milliseconds)

    later = datetime.now(UTC) + timedelta(hours=1, milliseconds=300)
    at = await broker.publish(Delivery.for_job(make_job(not_before=later), urls=urls))
    assert (await async_client.message.get(at)).not_before == math.ceil(later.timestamp()) * 1000


async def test_failed_attempts_are_retried_then_dead_lettered_with_a_failure_callback(
    broker: QStashBroker, async_client: AsyncQStash, receiver: Receiver, urls: SidecarUrls
) -> None:
    receiver.respond(CRM_PATH, (500, {}, "boom"))
    delivery = Delivery.for_job(make_job(max_retries=2), urls=urls)
    message_id = await broker.publish(delivery)

    [callback] = await receiver.wait_for_async(1, path=FAILED_PATH)
    attempts = receiver.deliveries(CRM_PATH)
    assert [a.header("Upstash-Retried") for a in attempts] == ["0", "1", "2"]
    assert {a.header("Upstash-Message-Id") for a in attempts} == {message_id}
    assert callback.signature_ok, callback.signature_error
    report = callback.json()
    assert report["sourceMessageId"] == message_id
    assert report["status"] == 500
    assert report["retried"] == report["maxRetries"] == 2
    assert base64.b64decode(report["sourceBody"]) == delivery.body
    # The local server sends the failure callback before its DLQ write commits; wait for it.
    entry = await _dlq_entry(async_client, report["dlqId"])
    assert entry.message_id == message_id
    assert entry.response_status == 500


async def _dlq_entry(client: AsyncQStash, dlq_id: str) -> DlqMessage:
    for _ in range(100):
        with contextlib.suppress(QStashError):
            return await client.dlq.get(dlq_id)
        await asyncio.sleep(0.02)
    raise AssertionError(f"DLQ entry {dlq_id} did not appear within 2 s")


async def test_the_deduplication_id_makes_a_republish_harmless(
    make_server: ServerFactory, make_receiver: ReceiverFactory
) -> None:
    server = make_server(dedup_window_seconds=600_000)  # 10 min at time_scale 0.001
    receiver = make_receiver(server.user.current_signing_key, server.user.next_signing_key)
    urls = SidecarUrls(public_url=receiver.url)
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    try:
        job = make_job()
        first = await broker.publish(Delivery.for_job(job, urls=urls))
        republished = await broker.publish(Delivery.for_job(job, urls=urls))
        retried = await broker.publish(
            Delivery.for_job(job, urls=urls, deduplication_id=f"{job.id}:retry-1")
        )
    finally:
        await broker.aclose()
    assert republished == first
    assert retried != first
    await receiver.wait_for_async(2, path=CRM_PATH)
    await asyncio.sleep(0.2)  # a third delivery would have arrived by now
    got = receiver.deliveries(CRM_PATH)
    assert sorted(d.header("Upstash-Message-Id") or "" for d in got) == sorted([first, retried])


async def test_schedule_create_pause_resume_update_delete(
    broker: QStashBroker, async_client: AsyncQStash, receiver: Receiver, urls: SidecarUrls
) -> None:
    body = Envelope(job_type=JobType.CRM_MATCH, payload={"listingId": "L1", "agentId": "A1"})
    schedule = CronSchedule(
        job_type=JobType.CRM_MATCH,
        cron="* * * * *",  # every 60 ms at time_scale 0.001
        body=body.encode(),
        url=urls.job(JobType.CRM_MATCH),
        retries=1,
        timeout=timedelta(seconds=30),
        failure_callback=urls.failure_callback,
    )
    schedule_id = await broker.create_schedule(schedule)

    fired = await receiver.wait_for_async(2, path=CRM_PATH)
    assert {d.header("Upstash-Schedule-Id") for d in fired} == {schedule_id}
    assert len({d.header("Upstash-Message-Id") for d in fired}) == len(fired)
    assert all(d.body == schedule.body for d in fired)
    assert all(d.signature_ok for d in fired), [d.signature_error for d in fired]
    assert Envelope.decode(fired[0].body).job_id is None

    stored = await async_client.schedule.get(schedule_id)
    assert stored.cron == "* * * * *"
    assert stored.destination == receiver.url_for(CRM_PATH)
    assert stored.retries == 1
    assert stored.timeout == 30
    assert stored.failure_callback == receiver.url_for(FAILED_PATH)
    assert stored.body == schedule.body.decode()
    assert stored.paused is False

    await broker.pause_schedule(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is True
    await asyncio.sleep(0.1)  # a firing in flight when it paused may still land
    count = len(receiver.deliveries(CRM_PATH))
    await asyncio.sleep(0.3)  # five cron minutes
    assert len(receiver.deliveries(CRM_PATH)) == count
    await broker.resume_schedule(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is False
    await receiver.wait_for_async(count + 1, path=CRM_PATH)

    named = dataclasses.replace(
        schedule, schedule_id="nightly-crm-L1", cron="0 9 * * *", time_zone="America/New_York"
    )
    assert await broker.create_schedule(named) == "nightly-crm-L1"
    updated = dataclasses.replace(named, cron="30 9 * * 1-5")
    assert await broker.create_schedule(updated) == "nightly-crm-L1"
    stored = await async_client.schedule.get("nightly-crm-L1")
    assert stored.cron == "CRON_TZ=America/New_York 30 9 * * 1-5"

    await broker.delete_schedule(schedule_id)
    with pytest.raises(QStashError, match="404"):
        await async_client.schedule.get(schedule_id)
    assert [s.schedule_id for s in await async_client.schedule.list()] == ["nightly-crm-L1"]
    for operation in (broker.delete_schedule, broker.pause_schedule, broker.resume_schedule):
        with pytest.raises(ScheduleNotFound):
            await operation(schedule_id)


async def test_cancel_stops_a_waiting_message(
    broker: QStashBroker, async_client: AsyncQStash, receiver: Receiver, urls: SidecarUrls
) -> None:
    in_ten_days = datetime.now(UTC) + timedelta(days=10)  # 864 s at time_scale 0.001
    message_id = await broker.publish(Delivery.for_job(make_job(not_before=in_ten_days), urls=urls))
    assert await broker.cancel(message_id) is True
    logs = await async_client.log.list(filter={"message_id": message_id})
    assert [log.state.value for log in logs.logs] == ["CANCELED", "CANCEL_REQUESTED", "CREATED"]
    assert await broker.cancel(message_id) is False
    assert await broker.cancel("msg_never_published") is False


async def test_client_errors_are_rejections(
    server: LocalQStashServer, broker: QStashBroker, urls: SidecarUrls
) -> None:
    too_many = Delivery.for_job(make_job(max_retries=25), urls=urls)  # the plan allows 20
    with pytest.raises(BrokerRejected) as info:
        await broker.publish(too_many)
    assert info.value.status == 412
    assert info.value.reason == "BROKER_REJECTED"

    intruder = QStashBroker(token="not-a-token", base_url=server.url)
    try:
        with pytest.raises(BrokerRejected) as info:
            await intruder.publish(Delivery.for_job(make_job(), urls=urls))
        assert info.value.status == 401
    finally:
        await intruder.aclose()

    bad_cron = CronSchedule(
        job_type=JobType.CRM_MATCH, cron="61 * * * *", body=b"{}", url=urls.job(JobType.CRM_MATCH)
    )
    with pytest.raises(BrokerRejected) as info:
        await broker.create_schedule(bad_cron)
    assert info.value.status == 400


async def test_rate_limit_is_unavailable_not_rejected(
    make_server: ServerFactory, make_receiver: ReceiverFactory
) -> None:
    server = make_server(burst_rate_limit=1)
    urls = SidecarUrls(public_url=make_receiver().url)
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    try:
        errors: list[BrokerUnavailable] = []
        for _ in range(3):  # 3 in a few ms cannot all fall in different seconds
            try:
                await broker.publish(Delivery.for_job(make_job(), urls=urls))
            except BrokerUnavailable as exc:
                errors.append(exc)
        assert errors
        assert all("rate limit" in e.message for e in errors)
    finally:
        await broker.aclose()


# -- QStash unreachable, failing or hanging ------------------------------------------------------


async def test_broker_down_is_unavailable_quickly() -> None:
    broker = QStashBroker(token="t", base_url=f"http://127.0.0.1:{closed_port()}")
    urls = SidecarUrls(public_url="http://127.0.0.1:9")
    schedule = CronSchedule(
        job_type=JobType.CRM_MATCH, cron="0 9 * * *", body=b"{}", url=urls.job(JobType.CRM_MATCH)
    )
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            await broker.publish(Delivery.for_job(make_job(), urls=urls))
        # The SDK sleeps 0.1 s, retries once, sleeps 0.2 s, gives up: 0.3 s in all; with its
        # own defaults it would take 12 s, so 5 s tells the two apart on a loaded machine.
        assert time.monotonic() - started < 5.0
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert info.value.reason == "BROKER_UNAVAILABLE"
    finally:
        await broker.aclose()
    broker = QStashBroker(
        token="t", base_url=broker.base_url, client_retries=0, client_backoff_seconds=0
    )
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.create_schedule(schedule)
        with pytest.raises(BrokerUnavailable):
            await broker.pause_schedule("scd_x")
        with pytest.raises(BrokerUnavailable):
            await broker.cancel("msg_x")
    finally:
        await broker.aclose()


def _publish_path(delivery: Delivery) -> str:
    return f"/v2/publish/{delivery.url}"


async def test_server_errors_and_hangs_are_unavailable(make_receiver: ReceiverFactory) -> None:
    fake_qstash = make_receiver()
    urls = SidecarUrls(public_url="http://127.0.0.1:9")
    failing = Delivery.for_job(make_job(), urls=urls)
    fake_qstash.respond(_publish_path(failing), (503, {}, '{"error":"maintenance"}'))
    broker = QStashBroker(token="t", base_url=fake_qstash.url, request_timeout_seconds=0.3)
    try:
        with pytest.raises(BrokerUnavailable, match="503"):
            await broker.publish(failing)
        assert len(fake_qstash.deliveries(_publish_path(failing))) == 1  # no retry of an answer

        hanging = Delivery.for_job(make_job(), urls=urls)
        fake_qstash.respond(_publish_path(hanging), Response(status=200, delay_seconds=60))
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            await broker.publish(hanging)
        assert time.monotonic() - started < 30  # its own 0.3 s timeout, not the 60 s answer

        garbled = Delivery.for_job(make_job(), urls=urls)
        fake_qstash.respond(_publish_path(garbled), (200, {}, "<html>proxy</html>"))
        with pytest.raises(BrokerUnavailable, match="unexpected answer"):
            await broker.publish(garbled)
    finally:
        await broker.aclose()


# -- the local broker ------------------------------------------------------------------------------


async def test_local_broker_owns_its_server(
    database_url: str, make_receiver: ReceiverFactory
) -> None:
    settings = LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001)
    broker = await LocalQStashBroker.start(settings)
    port = broker.server.port
    try:
        assert broker.base_url == broker.server.url
        keys = broker.server.env()
        receiver = make_receiver(
            keys["QSTASH_CURRENT_SIGNING_KEY"], keys["QSTASH_NEXT_SIGNING_KEY"]
        )
        message_id = await broker.publish(
            Delivery.for_job(make_job(), urls=SidecarUrls(public_url=receiver.url))
        )
        [got] = await receiver.wait_for_async(1, path=CRM_PATH)
        assert got.header("Upstash-Message-Id") == message_id
        assert got.signature_ok, got.signature_error
    finally:
        await broker.aclose()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- the inline broker -----------------------------------------------------------------------------


class Dispatch:
    """Stands in for the sidecar's dispatch: records each call, answers from ``statuses``."""

    def __init__(self, *statuses: int | Exception | None) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[bytes, dict[str, str]]] = []

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> int | None:
        self.calls.append((body, dict(headers)))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, Exception):
            raise status
        return status


INLINE_URLS = SidecarUrls(public_url="http://sidecar.invalid")


async def test_inline_runs_the_delivery_inside_publish() -> None:
    dispatch = Dispatch(None)
    delivery = Delivery.for_job(make_job(), urls=INLINE_URLS)
    message_id = await InlineBroker(deliver=dispatch).publish(delivery)
    assert message_id.startswith("inline_")
    assert dispatch.calls == [
        (
            delivery.body,
            {
                "Content-Type": "application/json",
                "Upstash-Message-Id": message_id,
                "Upstash-Retried": "0",
            },
        )
    ]


async def test_inline_retries_at_once_and_stops_on_success_or_permanent_failure() -> None:
    broker = InlineBroker(deliver=(dispatch := Dispatch(500, RuntimeError("db down"), 200)))
    await broker.publish(Delivery.for_job(make_job(max_retries=5), urls=INLINE_URLS))
    assert [h["Upstash-Retried"] for _, h in dispatch.calls] == ["0", "1", "2"]

    broker = InlineBroker(deliver=(dispatch := Dispatch(503)))
    message_id = await broker.publish(Delivery.for_job(make_job(max_retries=2), urls=INLINE_URLS))
    assert [h["Upstash-Retried"] for _, h in dispatch.calls] == ["0", "1", "2"]
    assert {h["Upstash-Message-Id"] for _, h in dispatch.calls} == {message_id}

    broker = InlineBroker(deliver=(dispatch := Dispatch(489)))
    await broker.publish(Delivery.for_job(make_job(max_retries=3), urls=INLINE_URLS))
    assert len(dispatch.calls) == 1


async def test_inline_refuses_delays_and_schedules() -> None:
    dispatch = Dispatch(None)
    broker = InlineBroker(deliver=dispatch)
    future = make_job(not_before=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(BrokerUnsupported):
        await broker.publish(Delivery.for_job(future, urls=INLINE_URLS))
    delayed = dataclasses.replace(
        Delivery.for_job(make_job(), urls=INLINE_URLS), delay=timedelta(seconds=1)
    )
    with pytest.raises(BrokerUnsupported):
        await broker.publish(delayed)
    assert dispatch.calls == []

    past = make_job(not_before=datetime.now(UTC) - timedelta(seconds=1))
    await broker.publish(Delivery.for_job(past, urls=INLINE_URLS))
    assert len(dispatch.calls) == 1

    schedule = CronSchedule(
        job_type=JobType.CRM_MATCH, cron="0 9 * * *", body=b"{}", url="http://sidecar.invalid/x"
    )
    with pytest.raises(BrokerUnsupported) as info:
        await broker.create_schedule(schedule)
    assert info.value.reason == "BROKER_UNSUPPORTED"
    for operation in (broker.delete_schedule, broker.pause_schedule, broker.resume_schedule):
        with pytest.raises(BrokerUnsupported):
            await operation("scd_x")
    assert await broker.cancel("inline_x") is False


# -- the values handed over ----------------------------------------------------------------------


def test_envelope_round_trip_and_refusals() -> None:
    job_id = uuid.uuid4()
    envelope = Envelope(
        job_type=JobType.SEND_NOTIFICATION,
        payload={"templateData": {"name": "Zoë"}},
        job_id=job_id,
        timeout=timedelta(seconds=1.5),
    )
    encoded = envelope.encode()
    assert encoded.startswith(b'{"version":1,"jobId":"')
    assert Envelope.decode(encoded) == envelope
    for bad in (
        b"\xff",
        b"[]",
        b'{"version":2,"type":"crm-match","payload":{}}',
        b'{"version":1,"type":"mine-bitcoin","payload":{}}',
        b'{"version":1,"type":["crm-match"],"payload":{}}',
        b'{"version":1,"type":"crm-match","payload":[]}',
        b'{"version":1,"type":"crm-match","payload":{},"jobId":"nope"}',
        b'{"version":1,"type":"crm-match","payload":{},"timeoutSeconds":0}',
        b'{"version":1,"type":"crm-match","payload":{},"timeoutSeconds":NaN}',
        b'{"version":1,"type":"crm-match","payload":{},"timeoutSeconds":true}',
    ):
        with pytest.raises(InvalidEnvelope):
            Envelope.decode(bad)


def test_urls_and_delivery_rules() -> None:
    urls = SidecarUrls(public_url="https://jobs.example.com/")
    assert urls.job(JobType.SEND_REMINDER) == "https://jobs.example.com/api/jobs/send-reminder"
    assert urls.failure_callback == "https://jobs.example.com/api/jobs/_failed"
    job = make_job(max_retries=7)
    delivery = Delivery.for_job(job, urls=urls)
    assert delivery.deduplication_id == str(job.id)
    assert delivery.retries == 7
    with pytest.raises(ValueError, match="exclusive"):
        dataclasses.replace(delivery, delay=timedelta(seconds=1), not_before=datetime.now(UTC))
    with pytest.raises(ValueError, match="aware"):
        dataclasses.replace(delivery, not_before=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="schedule_id"):
        CronSchedule(
            job_type=JobType.CRM_MATCH, cron="0 9 * * *", body=b"{}", url="x", schedule_id="a b"
        )
    with pytest.raises(ValueError, match="public_url"):
        SidecarUrls(public_url="jobs.example.com")
