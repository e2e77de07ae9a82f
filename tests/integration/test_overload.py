"""A sidecar at its bound of running handlers: the next delivery is answered at once with 503
and ``Retry-After``, nothing is written, and the broker's retry runs the job once a handler
has finished. A job whose deliveries QStash gave up on before any reached a handler (the
sidecar overloaded, or down) is re-driven, not failed. Through the real pipeline: gRPC, the
embedded local QStash server, the sidecar and the crm-match handler calling the HTTP stand-ins
of the listing service and the CRM.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from jobsvc.adapters.settings import AdapterSettings, HttpSystem
from jobsvc.broker import Envelope, LocalQStashBroker
from jobsvc.broker.qstash import DEFAULT_FLOW_CONTROL_KEY
from jobsvc.jobs import JobType
from jobsvc.localqstash import LocalQStashSettings
from jobsvc.localqstash.signing import sign
from jobsvc.runtime import Parts, running
from jobsvc.settings import Settings
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, payloads_pb2
from tests.polling import eventually
from tests.standins.http import LISTING_SERVICE, CrmContact, ExternalSystems
from tests.standins.records import seeded
from tests.standins.tcp import TcpProxy

COMPLETED = jobs_pb2.JOB_STATE_COMPLETED
PENDING = jobs_pb2.JOB_STATE_PENDING


@pytest.fixture(scope="module")
def systems() -> Iterator[ExternalSystems]:
    with ExternalSystems() as systems:
        yield systems


@pytest.fixture
def external(systems: ExternalSystems) -> Iterator[ExternalSystems]:
    seeded(systems)
    systems.crm_contacts["A1"] = [CrmContact(id="C1", name="Kim", max_rent=3000)]
    yield systems
    systems.release(LISTING_SERVICE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sidecar:
    parts: Parts
    stub: Any

    async def status(self, job_id: str) -> jobs_pb2.Job:
        return (await self.stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job

    async def completed(self, job_id: str) -> jobs_pb2.Job:
        async def check() -> jobs_pb2.Job | None:
            job = await self.status(job_id)
            return job if job.state == COMPLETED else None

        return await eventually(check, what=f"job {job_id} to complete", timeout=20)

    async def enqueue_match(self, retries: int = 5) -> str:
        request = pb.EnqueueRequest(
            crm_match=payloads_pb2.CrmMatch(listing_id="L1", agent_id="A1"), retries=retries
        )
        return str((await self.stub.Enqueue(request)).job.id)


@contextlib.asynccontextmanager
async def sidecar_with_one_slot(
    database_url: str,
    external: ExternalSystems,
    outbox: Path,
    *,
    time_scale: float = 1.0,
    port: int | None = None,
    public_port: int | None = None,
    delivery_parallelism: int | None = 0,
) -> AsyncIterator[Sidecar]:
    """The pipeline with one handler slot; QStash calls the sidecar at ``public_port`` (a proxy
    in front of it), by default its own ``port``. ``delivery_parallelism`` as in ``Settings``:
    by default 0 (no flow control), so that QStash delivers beyond the slot."""
    port = port or free_port()
    settings = Settings(
        database_url=database_url,
        grpc_port=0,
        sidecar_port=port,
        public_url=f"http://127.0.0.1:{public_port or port}",
        # Real time unless asked: the broker waits the whole Retry-After (1 s) before it
        # delivers again.
        local_qstash=LocalQStashSettings(port=0, database_url=database_url, time_scale=time_scale),
        relay_interval=timedelta(milliseconds=50),
        handler_timeout=timedelta(seconds=30),
        max_concurrent_handlers=1,
        overload_retry_after=timedelta(seconds=1),
        delivery_parallelism=delivery_parallelism,
        adapters=AdapterSettings(
            listing_service=HttpSystem(url=external.listing_service_url, timeout_seconds=30),
            crm=HttpSystem(url=external.crm_url),
            outbox_dir=outbox,
        ),
    )
    async with running(
        settings, rpc=True, sidecar=True, relay=True, embed_local_qstash=True, migrate=True
    ) as parts:
        assert parts.rpc_port is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{parts.rpc_port}")
        try:
            yield Sidecar(parts, job_service_pb2_grpc.JobServiceStub(channel))
        finally:
            await channel.close()


class _Actions(logging.Handler):
    """Collects the ``action`` of the sidecar's log records; calls ``on[action]`` when one
    comes."""

    def __init__(self, on: dict[str, Callable[[], None]] | None = None) -> None:
        super().__init__()
        self.actions: list[str] = []
        self.on = on or {}

    def emit(self, record: logging.LogRecord) -> None:
        action = getattr(record, "action", None)
        if isinstance(action, str):
            self.actions.append(action)
            if action in self.on:
                self.on.pop(action)()


@contextlib.contextmanager
def actions_logged(
    logger: str, on: dict[str, Callable[[], None]] | None = None
) -> Iterator[_Actions]:
    handler = _Actions(on)
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.INFO)  # refused deliveries are logged at INFO
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def test_a_delivery_beyond_the_bound_is_answered_at_once_and_runs_on_the_retry(
    database_url: str, external: ExternalSystems, tmp_path: Path
) -> None:
    async with sidecar_with_one_slot(database_url, external, tmp_path / "outbox") as sidecar:
        external.hold(LISTING_SERVICE)
        first = await sidecar.enqueue_match()

        async def one_held() -> bool | None:
            return True if external.held(LISTING_SERVICE) == 1 else None

        await eventually(one_held, what="the first handler to hold its slot", timeout=10)

        with actions_logged("jobsvc") as log:
            second = await sidecar.enqueue_match()

            async def refused() -> bool | None:
                return True if "delivery_overloaded" in log.actions else None

            await eventually(refused, what="the broker's delivery to be refused", timeout=10)

        # The same delivery, posted as QStash would: answered while the slot is still held.
        url = f"{sidecar.parts.settings.sidecar_url}/api/jobs/{JobType.CRM_MATCH.value}"
        body = Envelope(
            job_type=JobType.CRM_MATCH,
            payload={"listingId": "L1", "agentId": "A1"},
            job_id=uuid.UUID(second),
        ).encode()
        broker = sidecar.parts.broker
        assert isinstance(broker, LocalQStashBroker)
        key = broker.server.env()["QSTASH_CURRENT_SIGNING_KEY"]
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                url,
                content=body,
                headers={
                    "Upstash-Signature": sign(key, url=url, body=body),
                    "Upstash-Message-Id": "msg_by_hand",
                    "Upstash-Retried": "0",
                    "Content-Type": "application/json",
                },
            )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["reason"] == "OVERLOADED"
        assert external.held(LISTING_SERVICE) == 1  # still the first handler alone

        untouched = await sidecar.status(second)
        assert untouched.state == PENDING
        assert untouched.attempts == 0
        assert list(untouched.history) == []

        external.release(LISTING_SERVICE)
        done_first = await sidecar.completed(first)
        done_second = await sidecar.completed(second)
        assert done_first.attempts == 1
        assert done_second.attempts == 1  # the refused deliveries left no attempt behind
        assert len(external.requests_to(LISTING_SERVICE)) == 2


async def test_flow_control_keeps_deliveries_beyond_the_bound_queued_in_qstash(
    database_url: str, external: ExternalSystems, tmp_path: Path
) -> None:
    # The default: QStash is asked for as many deliveries in flight as the sidecar runs
    # handlers (one here), so the second job waits in QStash's queue instead of being
    # delivered, refused and retried.
    async with sidecar_with_one_slot(
        database_url, external, tmp_path / "outbox", delivery_parallelism=None
    ) as sidecar:
        external.hold(LISTING_SERVICE)
        broker = sidecar.parts.broker
        assert isinstance(broker, LocalQStashBroker)
        with actions_logged("jobsvc") as log:
            first = await sidecar.enqueue_match()

            async def one_held() -> bool | None:
                return True if external.held(LISTING_SERVICE) == 1 else None

            await eventually(one_held, what="the first handler to hold its slot", timeout=10)
            second = await sidecar.enqueue_match()
            flow_url = f"{broker.base_url}/v2/flowControl/{DEFAULT_FLOW_CONTROL_KEY}"
            token = broker.server.user.token
            async with httpx.AsyncClient(timeout=10) as http:

                async def second_waits() -> dict[str, Any] | None:
                    response = await http.get(
                        flow_url, headers={"Authorization": f"Bearer {token}"}
                    )
                    flow: dict[str, Any] = response.json()
                    return flow if response.status_code == 200 and flow["waitListSize"] else None

                flow = await eventually(
                    second_waits, what="the second job to wait in QStash", timeout=10
                )
            assert (flow["parallelismMax"], flow["parallelismCount"]) == (1, 1)
            external.release(LISTING_SERVICE)
            done = [await sidecar.completed(first), await sidecar.completed(second)]
        assert [job.attempts for job in done] == [1, 1]
        assert "delivery_overloaded" not in log.actions


async def test_a_job_whose_deliveries_never_reached_a_handler_is_redriven_not_failed(
    database_url: str, external: ExternalSystems, tmp_path: Path
) -> None:
    # The one slot is held while QStash delivers the second job twice (retries=1), is answered
    # 503 before any handler both times, and gives up: the failure callback re-drives the job,
    # and the first re-drive frees the slot, so the re-driven message runs it.
    async with sidecar_with_one_slot(
        database_url, external, tmp_path / "outbox", time_scale=0.001
    ) as sidecar:
        external.hold(LISTING_SERVICE)
        first = await sidecar.enqueue_match()

        async def one_held() -> bool | None:
            return True if external.held(LISTING_SERVICE) == 1 else None

        await eventually(one_held, what="the first handler to hold its slot", timeout=10)
        release = {"failure_callback_redriven": lambda: external.release(LISTING_SERVICE)}
        with actions_logged("jobsvc", on=release) as log:
            second = await sidecar.enqueue_match(retries=1)
            done = await sidecar.completed(second)
        assert log.actions.count("delivery_overloaded") >= 2
        assert "failure_callback_recorded" not in log.actions

        assert (done.attempts, len(done.history)) == (1, 1)  # one handler run, after the re-drive
        assert done.dlq_id == ""
        assert len(done.events) >= 1
        redrive = done.events[0]
        assert redrive.kind == jobs_pb2.JOB_EVENT_KIND_REDRIVEN
        assert "OVERLOADED" in redrive.detail
        assert "re-drive 1 of 10" in redrive.detail
        assert redrive.qstash_message_id not in ("", done.qstash_message_id)
        assert done.history[0].qstash_message_id == done.qstash_message_id
        assert (await sidecar.completed(first)).attempts == 1


async def test_a_job_queued_while_the_sidecar_is_down_is_redriven_once_it_answers_again(
    database_url: str, external: ExternalSystems, tmp_path: Path
) -> None:
    # QStash reaches the sidecar through a proxy that is cut while it delivers the job (three
    # deliveries, nothing listening behind them) and restored once the job is dead-lettered:
    # the failure callback, retried by QStash, arrives when the sidecar answers again.
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy:
        proxy.cut()
        async with sidecar_with_one_slot(
            database_url,
            external,
            tmp_path / "outbox",
            time_scale=0.01,  # backoff 0.12 s, 1.48 s; the first re-drive's wait 0.1 s
            port=port,
            public_port=proxy.port,
        ) as sidecar:
            job_id = await sidecar.enqueue_match(retries=2)
            broker = sidecar.parts.broker
            assert isinstance(broker, LocalQStashBroker)
            token = broker.server.user.token

            async with httpx.AsyncClient(
                base_url=broker.server.url, headers={"Authorization": f"Bearer {token}"}
            ) as qstash:

                async def dead_lettered() -> bool | None:
                    messages = (await qstash.get("/v2/dlq")).json()["messages"]
                    return True if messages else None

                await eventually(dead_lettered, what="QStash to give up on the job", timeout=20)
            assert (await sidecar.status(job_id)).state == PENDING  # not failed meanwhile
            proxy.restore()
            done = await sidecar.completed(job_id)

        assert (done.attempts, len(done.history)) == (1, 1)
        [redrive] = done.events
        assert redrive.kind == jobs_pb2.JOB_EVENT_KIND_REDRIVEN
        assert "after 3 deliveries" in redrive.detail
        assert redrive.qstash_message_id != done.qstash_message_id
