"""The webhook sidecar on a real port (uvicorn, port 0) over the job log on SQLite and
PostgreSQL: deliveries from the real local QStash server (through ``QStashBroker``), and signed
requests posted directly where a test needs one exact request (duplicates, bad signatures,
cron firings, timeouts)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
import uvicorn
from qstash import QStash

from jobsvc.broker import CronSchedule, Delivery, Envelope, QStashBroker, SidecarUrls
from jobsvc.db import JobLog, create_database_engine
from jobsvc.handlers import (
    HandlerContext,
    HandlerRegistry,
    PermanentFailure,
    RetryLater,
    default_registry,
)
from jobsvc.jobs import DEFAULT_RETRIES, Job, JobState, JobType, Schedule
from jobsvc.localqstash import LocalQStashServer
from jobsvc.localqstash.signing import new_signing_key, sign
from jobsvc.payloads import CrmMatch
from jobsvc.service.deliveries import DEFAULT_MAX_REDRIVES, Deliveries, firing_job_id
from jobsvc.webhooks import SignatureVerifier, build_app
from tests.handler_ports import RecordedFollowUps, dev_ports

CRM = JobType.CRM_MATCH
CRM_PATH = "/api/jobs/crm-match"
FAILED_PATH = "/api/jobs/_failed"
PAYLOAD = {"listingId": "L1", "agentId": "A1"}


# -- the sidecar on a real port ------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its 0.1 s tick: stops as soon as it is told to."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = threading.Event()
        self.stopping = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.started_event.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)
        await self.stopping.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # As tests/receiver.py: close idle keep-alive connections now instead of polling.
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        if tasks := list(self.server_state.tasks):
            await asyncio.wait(tasks, timeout=5)


class SidecarServer:
    """Serves the app ``build(url)`` returns on 127.0.0.1, port 0, in a thread of its own."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            build(self.url), lifespan="off", log_config=None, access_log=False, ws="none"
        )
        self._server = _Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sidecar", daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()
            self._server.started_event.set()

    def __enter__(self) -> SidecarServer:
        self._thread.start()
        assert self._server.started_event.wait(10), "the sidecar did not start in time"
        assert self._server.started, "the sidecar failed to start"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._server.stopping.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the sidecar did not stop"


@dataclass
class Script:
    """A crm-match handler that plays ``steps`` in order, the last one repeating: a dict is
    returned, an exception raised, a float slept (then ``{"slept": s}`` returned)."""

    steps: list[Any]
    calls: list[HandlerContext] = field(default_factory=list)

    async def __call__(self, payload: CrmMatch, ctx: HandlerContext) -> Mapping[str, Any]:
        self.calls.append(ctx)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
            return {"slept": step}
        assert isinstance(step, dict)
        return step

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry()
        registry.register(CrmMatch, self)
        return registry


@dataclass
class Sidecar:
    url: str
    keys: tuple[str, str]
    http: httpx.Client

    @property
    def urls(self) -> SidecarUrls:
        return SidecarUrls(public_url=self.url)

    def post(
        self,
        path: str,
        body: bytes,
        *,
        message_id: str | None = None,
        retried: int = 0,
        key: str | None = None,
        signed_body: bytes | None = None,
        signed_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body`` as QStash would, signed (with the current key unless ``key``) for
        ``signed_body`` and ``signed_url`` (default: what is sent, where it is sent)."""
        token = sign(
            key or self.keys[0],
            url=signed_url or self.url + path,
            body=body if signed_body is None else signed_body,
        )
        sent = {
            "Content-Type": "application/json",
            "Upstash-Signature": token,
            "Upstash-Message-Id": message_id or new_message_id(),
            "Upstash-Retried": str(retried),
            **(headers or {}),
        }
        return self.http.post(self.url + path, content=body, headers=sent)


SidecarFactory = Callable[..., Sidecar]


@pytest.fixture
def make_sidecar(job_log: JobLog, tmp_path: Path) -> Iterator[SidecarFactory]:
    with contextlib.ExitStack() as stack:
        http = stack.enter_context(httpx.Client(timeout=10))

        def make(
            *,
            registry: HandlerRegistry | None = None,
            keys: tuple[str, str] | None = None,
            handler_timeout: timedelta = timedelta(seconds=5),
            readiness: Callable[[], Any] | None = None,
            log: JobLog = job_log,
            max_body_bytes: int | None = None,
            max_redrives: int = DEFAULT_MAX_REDRIVES,
        ) -> Sidecar:
            keys = keys or (new_signing_key(), new_signing_key())
            deliveries = Deliveries(
                job_log=log,
                registry=registry or default_registry(dev_ports(tmp_path / "outbox")),
                handler_timeout=handler_timeout,
                follow_up=RecordedFollowUps(),
                max_redrives=max_redrives,
            )

            def build(url: str) -> Any:
                verifier = SignatureVerifier(keys[0], keys[1], public_url=url)
                limits = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
                return build_app(
                    deliveries=deliveries, verifier=verifier, readiness=readiness, **limits
                )

            server = stack.enter_context(SidecarServer(build))
            return Sidecar(url=server.url, keys=keys, http=http)

        yield make


@pytest.fixture
async def broker(server: LocalQStashServer) -> AsyncIterator[QStashBroker]:
    broker = QStashBroker(token=server.user.token, base_url=server.url)
    try:
        yield broker
    finally:
        await broker.aclose()


def server_keys(server: LocalQStashServer) -> tuple[str, str]:
    return server.user.current_signing_key, server.user.next_signing_key


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def stored_job(job_log: JobLog, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": CRM,
        "payload": dict(PAYLOAD),
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    job, deduplicated = job_log.insert(Job(**values))
    assert not deduplicated
    return job


def envelope(
    job_id: uuid.UUID | None,
    job_type: JobType = CRM,
    *,
    schedule_id: str | None = None,
    **payload: Any,
) -> bytes:
    return Envelope(
        job_type=job_type, payload=payload or dict(PAYLOAD), job_id=job_id, schedule_id=schedule_id
    ).encode()


async def wait_for(
    job_log: JobLog,
    job_id: uuid.UUID,
    ready: Callable[[Job], bool],
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = job_log.get(job_id)
        if ready(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never became {what}: {job}")
        await asyncio.sleep(0.01)


def reason(response: httpx.Response) -> str:
    value: str = response.json()["reason"]
    return value


def untouched(job: Job, job_log: JobLog) -> None:
    now = job_log.get(job.id)
    assert (now.state, now.attempts, now.history, now.error) == (JobState.PENDING, 0, [], None)


# -- through the local QStash server ----------------------------------------------------------


async def test_a_published_job_runs_once_and_completes(
    job_log: JobLog, make_sidecar: SidecarFactory, server: LocalQStashServer, broker: QStashBroker
) -> None:
    sidecar = make_sidecar(keys=server_keys(server))
    job = stored_job(job_log)
    message_id = await broker.publish(Delivery.for_job(job, urls=sidecar.urls))

    done = await wait_for(job_log, job.id, lambda j: j.state.is_final, "finished")

    assert done.state is JobState.COMPLETED
    assert done.attempts == 1
    assert done.result == {
        "listingId": "L1",
        "agentId": "A1",
        "matches": [
            {"contactId": "A1-contact-1", "name": ANY, "score": 0.9},
            {"contactId": "A1-contact-2", "name": ANY, "score": 0.7},
        ],
    }
    assert done.error is None
    assert done.qstash_message_id == message_id
    [attempt] = done.history
    assert (attempt.number, attempt.outcome, attempt.retried) == (1, "completed", 0)
    assert attempt.qstash_message_id == message_id


async def test_a_handler_failing_twice_then_succeeding_takes_three_attempts(
    job_log: JobLog, make_sidecar: SidecarFactory, server: LocalQStashServer, broker: QStashBroker
) -> None:
    script = Script([RuntimeError("CRM said 500"), RetryLater("rate limited"), {"matched": True}])
    sidecar = make_sidecar(registry=script.registry(), keys=server_keys(server))
    job = stored_job(job_log)
    await broker.publish(Delivery.for_job(job, urls=sidecar.urls))

    done = await wait_for(job_log, job.id, lambda j: j.state.is_final, "finished")

    assert done.state is JobState.COMPLETED
    assert done.attempts == 3
    assert done.result == {"matched": True}
    assert [(a.outcome, a.retried, a.error) for a in done.history] == [
        ("retry", 0, "RuntimeError: CRM said 500"),
        ("retry", 1, "rate limited"),
        ("completed", 2, None),
    ]
    assert [ctx.attempt for ctx in script.calls] == [1, 2, 3]


async def test_a_permanent_failure_answers_489_and_fails_the_job_without_retries(
    job_log: JobLog,
    make_sidecar: SidecarFactory,
    server: LocalQStashServer,
    broker: QStashBroker,
    client: QStash,
) -> None:
    script = Script([PermanentFailure("applicant not found")])
    sidecar = make_sidecar(registry=script.registry(), keys=server_keys(server))
    job = stored_job(job_log, max_retries=3)
    message_id = await broker.publish(Delivery.for_job(job, urls=sidecar.urls))

    failed = await wait_for(job_log, job.id, lambda j: j.dlq_id is not None, "dead-lettered")

    assert failed.state is JobState.FAILED
    assert failed.attempts == 1
    assert failed.error == "applicant not found"
    assert [a.outcome for a in failed.history] == ["failed"]
    assert len(script.calls) == 1
    entry = client.dlq.get(failed.dlq_id or "")
    assert entry.message_id == message_id
    assert entry.response_status == 489
    assert json.loads(entry.response_body or "")["reason"] == "HANDLER_FAILED"


async def test_exhausted_retries_fail_the_job_and_the_failure_callback_records_the_dlq_id(
    job_log: JobLog,
    make_sidecar: SidecarFactory,
    server: LocalQStashServer,
    broker: QStashBroker,
    client: QStash,
) -> None:
    script = Script([RetryLater("CRM down")])
    sidecar = make_sidecar(registry=script.registry(), keys=server_keys(server))
    job = stored_job(job_log, max_retries=2)
    message_id = await broker.publish(Delivery.for_job(job, urls=sidecar.urls))

    failed = await wait_for(job_log, job.id, lambda j: j.dlq_id is not None, "dead-lettered")

    assert failed.state is JobState.FAILED
    assert failed.attempts == 3
    assert failed.error == "CRM down"
    assert [(a.outcome, a.retried) for a in failed.history] == [
        ("retry", 0),
        ("retry", 1),
        ("failed", 2),
    ]
    [entry] = client.dlq.list(filter={"message_id": message_id}).messages
    assert failed.dlq_id == entry.dlq_id
    assert entry.response_status == 503
    assert json.loads(entry.response_body or "")["reason"] == "RETRIES_EXHAUSTED"
    assert len(script.calls) == 3


async def test_a_cron_schedule_creates_one_job_per_firing(
    job_log: JobLog, make_sidecar: SidecarFactory, server: LocalQStashServer, broker: QStashBroker
) -> None:
    # time_scale 0.001: "* * * * *" fires every 60 ms.
    sidecar = make_sidecar(keys=server_keys(server))
    schedule_id = await broker.create_schedule(
        CronSchedule(
            job_type=CRM,
            cron="* * * * *",
            body=envelope(None, schedule_id="crm-every-minute"),
            url=sidecar.urls.job(CRM),
            schedule_id="crm-every-minute",
            failure_callback=sidecar.urls.failure_callback,
        )
    )

    deadline = time.monotonic() + 10
    while len(jobs := completed_firings(job_log)) < 3:
        assert time.monotonic() < deadline, f"only {len(jobs)} firings completed"
        await asyncio.sleep(0.02)
    await broker.delete_schedule(schedule_id)

    assert schedule_id == "crm-every-minute"
    assert len({job.id for job in jobs}) == len(jobs)
    for job in jobs:
        assert job.schedule_id == schedule_id
        assert job.qstash_message_id is not None
        assert job.id == firing_job_id(job.qstash_message_id)
        assert job.deduplication_id == f"qstash:{job.qstash_message_id}"
        assert (job.attempts, job.payload, job.max_retries) == (1, PAYLOAD, DEFAULT_RETRIES)


def completed_firings(job_log: JobLog) -> list[Job]:
    jobs, _ = job_log.list(state=JobState.COMPLETED)
    return [job for job in jobs if job.schedule_id is not None]


# -- signed requests posted directly ------------------------------------------------------------


def test_bad_signatures_get_401_and_touch_nothing(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    body = envelope(job.id)
    tampered = envelope(job.id, listingId="L2", agentId="A1")
    other_url = sidecar.url + "/api/jobs/send-reminder"
    other_host = "http://jobs.example.com" + CRM_PATH
    expired = sign(sidecar.keys[0], url=sidecar.url + CRM_PATH, body=body, now=time.time() - 900)

    attempts = {
        "BAD_SIGNATURE": sidecar.post(CRM_PATH, body, key=new_signing_key()),
        "BODY_MISMATCH": sidecar.post(CRM_PATH, tampered, signed_body=body),
        "WRONG_SUBJECT": sidecar.post(CRM_PATH, body, signed_url=other_url),
        "EXPIRED": sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": expired}),
        "MISSING_SIGNATURE": sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": ""}),
    }
    attempts["WRONG_SUBJECT_HOST"] = sidecar.post(CRM_PATH, body, signed_url=other_host)

    for expected, response in attempts.items():
        assert response.status_code == 401, (expected, response.text)
        assert reason(response) == expected.removesuffix("_HOST")
    untouched(job, job_log)
    assert script.calls == []

    callback = failure_callback(job.id, body)
    refused = sidecar.post(FAILED_PATH, callback, key=new_signing_key())
    assert (refused.status_code, reason(refused)) == (401, "BAD_SIGNATURE")
    untouched(job, job_log)

    # Around a rotation QStash signs with the next key: that one is accepted.
    accepted = sidecar.post(CRM_PATH, body, key=sidecar.keys[1])
    assert (accepted.status_code, reason(accepted)) == (200, "COMPLETED")


def test_a_duplicate_delivery_runs_the_handler_once(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    body, message_id = envelope(job.id), new_message_id()

    first = sidecar.post(CRM_PATH, body, message_id=message_id)
    second = sidecar.post(CRM_PATH, body, message_id=message_id)

    assert (first.status_code, reason(first)) == (200, "COMPLETED")
    assert first.json()["jobId"] == str(job.id)
    assert (second.status_code, reason(second)) == (200, "ALREADY_COMPLETED")
    assert len(script.calls) == 1
    done = job_log.get(job.id)
    assert (done.state, done.attempts, done.result) == (JobState.COMPLETED, 1, {"ran": True})


def test_a_cron_firing_creates_its_job_and_a_redelivery_reuses_it(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([RuntimeError("flaky"), {"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    now = datetime.now(UTC)
    job_log.schedules.save(
        Schedule(
            id="nightly-crm",
            cron="0 9 * * *",
            type=CRM,
            payload=PAYLOAD,
            retries=5,
            created_at=now,
            updated_at=now,
        )
    )
    firing = {"Upstash-Schedule-Id": "nightly-crm"}
    first, second = new_message_id(), new_message_id()
    body = envelope(None)

    failed = sidecar.post(CRM_PATH, body, message_id=first, headers=firing)
    redelivered = sidecar.post(CRM_PATH, body, message_id=first, retried=1, headers=firing)
    duplicate = sidecar.post(CRM_PATH, body, message_id=first, retried=1, headers=firing)
    other = sidecar.post(CRM_PATH, body, message_id=second, headers=firing)

    assert [(r.status_code, reason(r)) for r in (failed, redelivered, duplicate, other)] == [
        (503, "HANDLER_RETRY"),
        (200, "COMPLETED"),
        (200, "ALREADY_COMPLETED"),
        (200, "COMPLETED"),
    ]
    jobs, _ = job_log.list(type=CRM)
    assert {job.id for job in jobs} == {firing_job_id(first), firing_job_id(second)}
    by_message = {job.qstash_message_id: job for job in jobs}
    assert [a.outcome for a in by_message[first].history] == ["retry", "completed"]
    assert [a.outcome for a in by_message[second].history] == ["completed"]
    for message_id, job in by_message.items():
        assert job.state is JobState.COMPLETED
        assert (job.schedule_id, job.max_retries) == ("nightly-crm", 5)
        assert job.deduplication_id == f"qstash:{message_id}"
        assert job.published_at is not None  # never the relay's to publish
    assert job_log.schedules.get("nightly-crm").last_run_at is not None

    # A firing of a schedule jobsvc does not know: the unsigned header proves nothing, so
    # no schedule and the default retries, or more if QStash is already retrying it.
    unknown = sidecar.post(
        CRM_PATH, body, retried=4, headers={"Upstash-Schedule-Id": "scd_elsewhere"}
    )
    created = job_log.get(uuid.UUID(unknown.json()["jobId"]))
    assert (created.schedule_id, created.max_retries) == (None, 4)


def test_a_handler_overrunning_its_timeout_is_retried(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([30.0])
    sidecar = make_sidecar(registry=script.registry(), handler_timeout=timedelta(seconds=0.2))
    job = stored_job(job_log)

    started = time.monotonic()
    response = sidecar.post(CRM_PATH, envelope(job.id))

    assert time.monotonic() - started < 5
    assert (response.status_code, reason(response)) == (503, "HANDLER_RETRY")
    assert response.json()["message"] == "handler timed out after 0.2 s"
    assert "Retry-After" not in response.headers  # QStash's own backoff
    retrying = job_log.get(job.id)
    assert (retrying.state, retrying.attempts) == (JobState.RETRYING, 1)
    assert [a.outcome for a in retrying.history] == ["retry"]


def test_the_last_failed_attempt_fails_the_job_and_still_asks_for_a_retry(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([RetryLater("later", after=timedelta(seconds=90))])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log, max_retries=1)
    message_id = new_message_id()

    first = sidecar.post(CRM_PATH, envelope(job.id), message_id=message_id)
    last = sidecar.post(CRM_PATH, envelope(job.id), message_id=message_id, retried=1)

    assert (first.status_code, reason(first), first.headers["Retry-After"]) == (
        503,
        "HANDLER_RETRY",
        "90",
    )
    assert (last.status_code, reason(last)) == (503, "RETRIES_EXHAUSTED")
    assert "Retry-After" not in last.headers
    failed = job_log.get(job.id)
    assert (failed.state, failed.attempts, failed.dlq_id) == (JobState.FAILED, 2, None)


def test_a_job_running_under_a_live_lease_is_not_run_again(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry(), handler_timeout=timedelta(seconds=5))
    job = stored_job(job_log)
    assert job_log.claim(job.id, qstash_message_id=None, retried=0, lease_seconds=60) is not None

    response = sidecar.post(CRM_PATH, envelope(job.id))

    assert (response.status_code, reason(response)) == (503, "JOB_BUSY")
    # The lease the sidecar would give: the handler timeout (5 s) plus the 15 s margin.
    assert 1 <= int(response.headers["Retry-After"]) <= 20
    assert script.calls == []
    busy = job_log.get(job.id)
    assert (busy.state, busy.attempts) == (JobState.PROCESSING, 1)


def test_deliveries_for_unknown_job_types_get_404_after_the_signature_check(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    sidecar = make_sidecar(registry=Script([{}]).registry())  # serves crm-match only

    unknown = sidecar.post("/api/jobs/no-such-type", envelope(None))
    unserved = sidecar.post("/api/jobs/send-reminder", envelope(None))
    unsigned = sidecar.post("/api/jobs/no-such-type", envelope(None), key=new_signing_key())

    assert (unknown.status_code, reason(unknown)) == (404, "UNKNOWN_JOB_TYPE")
    assert (unserved.status_code, reason(unserved)) == (404, "UNKNOWN_JOB_TYPE")
    assert (unsigned.status_code, reason(unsigned)) == (401, "BAD_SIGNATURE")
    assert job_log.list()[0] == []


def test_bodies_that_cannot_be_a_job_are_refused_permanently(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    listing = envelope(job.id, JobType.SYNDICATE_LISTING, listingId="L1")

    answers = {
        "INVALID_ENVELOPE": sidecar.post(CRM_PATH, b"not json"),
        "JOB_TYPE_MISMATCH": sidecar.post(CRM_PATH, listing),
        "JOB_NOT_FOUND": sidecar.post(CRM_PATH, envelope(uuid.uuid4())),
        "MISSING_MESSAGE_ID": sidecar.post(
            CRM_PATH, envelope(job.id), headers={"Upstash-Message-Id": ""}
        ),
        "BAD_RETRIED": sidecar.post(CRM_PATH, envelope(job.id), headers={"Upstash-Retried": "x"}),
    }

    for expected, response in answers.items():
        assert response.status_code == 489, (expected, response.text)
        assert response.headers["Upstash-NonRetryable-Error"] == "true"
        assert reason(response) == expected
    untouched(job, job_log)
    assert script.calls == []


def failure_callback(
    job_id: uuid.UUID | None,
    source_body: bytes,
    *,
    message_id: str = "msg_source",
    dlq_id: str = "dlq_1",
    status: int = 502,
    body: bytes = b"bad gateway",
) -> bytes:
    document = {
        "status": status,
        "header": {},
        "body": base64.b64encode(body).decode(),
        "retried": 3,
        "maxRetries": 3,
        "sourceMessageId": message_id,
        "sourceBody": base64.b64encode(source_body).decode(),
        "dlqId": dlq_id,
    }
    return json.dumps(document).encode()


def test_the_failure_callback_fails_the_job_once(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    # No re-drives: a job none of whose deliveries reached a handler would be re-driven
    # instead (tests/integration/test_overload.py).
    sidecar = make_sidecar(max_redrives=0)
    job = stored_job(job_log)
    source = envelope(job.id)

    first = sidecar.post(FAILED_PATH, failure_callback(job.id, source, dlq_id="dlq_1"))
    again = sidecar.post(FAILED_PATH, failure_callback(job.id, source, dlq_id="dlq_2"))
    garbled = sidecar.post(FAILED_PATH, b'{"sourceMessageId": 7}')

    assert (first.status_code, reason(first)) == (200, "RECORDED")
    assert (again.status_code, reason(again)) == (200, "RECORDED")
    assert (garbled.status_code, reason(garbled)) == (489, "INVALID_FAILURE_CALLBACK")
    failed = job_log.get(job.id)
    assert (failed.state, failed.dlq_id) == (JobState.FAILED, "dlq_1")
    assert (
        failed.error == "QStash gave up after 4 deliveries; the last one got HTTP 502: bad gateway"
    )

    # A cron firing that never got a row (every delivery bounced) gets one now, failed.
    firing = sidecar.post(FAILED_PATH, failure_callback(None, envelope(None), message_id="msg_f"))
    assert firing.status_code == 200
    recorded = job_log.get(firing_job_id("msg_f"))
    assert (recorded.state, recorded.dlq_id, recorded.attempts) == (JobState.FAILED, "dlq_1", 0)


def test_liveness_readiness_and_an_unreachable_job_log(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    ready = make_sidecar()
    assert ready.http.get(ready.url + "/livez").status_code == 200
    assert ready.http.get(ready.url + "/readyz").json() == {"status": "ready"}

    async def never() -> bool:
        return False

    not_ready = make_sidecar(readiness=never)
    assert not_ready.http.get(not_ready.url + "/readyz").status_code == 503

    # A job log whose database is unreachable: alive, not ready.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = JobLog(create_database_engine(f"postgresql://root@127.0.0.1:{port}/none"))
    down = make_sidecar(log=unreachable)
    assert down.http.get(down.url + "/livez").status_code == 200
    answer = down.http.get(down.url + "/readyz")
    assert (answer.status_code, answer.json()) == (503, {"status": "not ready"})
    # QStash should come back later: the job is not lost, just not reachable now.
    delivery = down.post(CRM_PATH, envelope(uuid.uuid4()))
    assert (delivery.status_code, reason(delivery)) == (503, "STORAGE_UNAVAILABLE")


def test_requests_outside_the_routes_get_json_errors(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar()
    wrong_method = sidecar.http.get(sidecar.url + CRM_PATH)
    nowhere = sidecar.http.post(sidecar.url + "/api/other", content=b"{}")
    assert (wrong_method.status_code, reason(wrong_method)) == (405, "METHOD_NOT_ALLOWED")
    assert (nowhere.status_code, reason(nowhere)) == (404, "NOT_FOUND")
