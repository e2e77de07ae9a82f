"""The typed client (``JobClient``, ``AsyncJobClient``) and the operator CLI against the composed
service (``jobsvc.runtime.running``: gRPC, sidecar, relay and the embedded local QStash server) on
real ports, on SQLite and PostgreSQL. The service runs on its own event loop in a background
thread; the CLI runs as a subprocess, as an operator runs it.

The crm-match handler is replaced by one whose agents can be told to refuse (a permanent failure),
so a job can be driven into the dead-letter queue and retried from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobsvc.cli import main
from jobsvc.errors import (
    InvalidArgument,
    InvalidState,
    JobNotFound,
    ScheduleNotFound,
    Unauthenticated,
)
from jobsvc.handlers import (
    HandlerContext,
    HandlerRegistry,
    PermanentFailure,
    default_registry,
)
from jobsvc.jobs import EnqueueOptions, Job, JobState, JobType, Schedule
from jobsvc.localqstash import LocalQStashSettings
from jobsvc.payloads import (
    CrmMatch,
    NotificationType,
    ReminderType,
    SendNotification,
    SendReminder,
)
from jobsvc.rpc import AsyncJobClient, EnqueueResult, JobClient, ServiceUnavailable
from jobsvc.runtime import Parts, running
from jobsvc.settings import Settings
from tests.handler_ports import dev_ports
from tests.polling import poll

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CRM_JSON = '{"listingId":"L1","agentId":"A1"}'
T = TypeVar("T")


# -- the service ----------------------------------------------------------------------------------


class Agents:
    """The crm-match handler of these tests: agents in ``refusing`` refuse their match."""

    def __init__(self, outbox: Path) -> None:
        self.refusing: set[str] = set()
        self.outbox = outbox

    async def match(self, payload: CrmMatch, ctx: HandlerContext) -> dict[str, Any]:
        if payload.agent_id in self.refusing:
            raise PermanentFailure(f"agent {payload.agent_id} refuses listing {payload.listing_id}")
        return {"listingId": payload.listing_id, "agentId": payload.agent_id, "matched": True}

    def registry(self) -> HandlerRegistry:
        """This crm-match handler; the default handlers, on development adapters, for the
        other job types."""
        defaults = default_registry(dev_ports(self.outbox))
        registry = HandlerRegistry()
        registry.register(CrmMatch, self.match)
        for job_type in (
            JobType.SEND_REMINDER,
            JobType.SEND_NOTIFICATION,
            JobType.SYNDICATE_LISTING,
        ):
            registration = defaults.get(job_type)
            assert registration is not None
            registry.register(registration.payload_type, registration.handler)
        return registry


@dataclass
class Service:
    target: str
    parts: Parts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(settings: Settings, registry: HandlerRegistry) -> Iterator[Service]:
    """Everything ``jobsvc serve`` runs, on its own event loop in a background thread."""
    ready = threading.Event()
    errors: list[BaseException] = []
    box: dict[str, Any] = {}

    async def main() -> None:
        async with running(
            settings,
            rpc=True,
            sidecar=True,
            relay=True,
            embed_local_qstash=True,
            migrate=True,
            registry=registry,
        ) as parts:
            box.update(parts=parts, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="jobsvc-under-test", daemon=True)
    thread.start()
    ready.wait(timeout=60)
    if errors:
        raise errors[0]
    try:
        yield Service(target=f"127.0.0.1:{box['parts'].rpc_port}", parts=box["parts"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the service did not stop"
        if errors:
            raise errors[0]


@pytest.fixture
def agents(tmp_path: Path) -> Agents:
    return Agents(tmp_path / "outbox")


MakeService = Callable[..., Service]


@pytest.fixture
def make_service(database_url: str, tmp_path: Path, agents: Agents) -> Iterator[MakeService]:
    """``make_service(**settings)``: one running service on free ports (time in the local QStash
    server runs 1,000 times faster: a delay of 1 day takes 86 s, one of 5 s takes 5 ms)."""
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> Service:
            sidecar_port = _free_port()
            settings = Settings(
                database_url=database_url,
                grpc_port=0,
                sidecar_port=sidecar_port,
                public_url=f"http://127.0.0.1:{sidecar_port}",
                local_qstash=LocalQStashSettings(
                    port=0,
                    database_url=f"sqlite:///{tmp_path / 'local-qstash.sqlite3'}",
                    time_scale=0.001,
                ),
                **overrides,
            )
            return stack.enter_context(serving(settings, agents.registry()))

        yield make


@pytest.fixture
def service(make_service: MakeService) -> Service:
    return make_service()


@pytest.fixture
def client(service: Service) -> Iterator[JobClient]:
    with JobClient(service.target) as client:
        yield client


def _dlq_id_of(client: JobClient, job_id: uuid.UUID) -> Job:
    """The job once the failure callback has recorded its dead-letter id."""
    return poll(
        lambda: job if (job := client.get_status(job_id)).dlq_id else None,
        timeout=10,
        what="the DLQ id",
    )


# -- the blocking client --------------------------------------------------------------------------


def test_enqueue_in_one_line_and_wait(client: JobClient) -> None:
    result = client.enqueue(CrmMatch(listing_id="L1", agent_id="A1"))

    assert isinstance(result, EnqueueResult)
    assert result.deduplicated is False
    assert result.job.type is JobType.CRM_MATCH
    assert result.job.state is JobState.PENDING
    assert result.job.payload == {"listingId": "L1", "agentId": "A1"}
    assert result.job.max_retries == 3
    done = client.wait(result.job.id, timeout_seconds=10)
    assert done.state is JobState.COMPLETED
    assert done.result == {"listingId": "L1", "agentId": "A1", "matched": True}
    assert done.attempts == 1
    assert [attempt.outcome for attempt in done.history] == ["completed"]
    assert done.started_at is not None
    assert done.finished_at is not None
    assert client.get_status(str(done.id)) == done


def test_enqueue_options_dedup_watch_and_cancel(client: JobClient) -> None:
    reminder = SendReminder(
        applicant_id="APP1", reminder_type=ReminderType.DAY3, missing_docs=("paystub",)
    )
    first = client.enqueue(
        reminder,
        delay=timedelta(days=1),
        retries=5,
        deduplication_id="APP1-day3",
        handler_timeout=timedelta(seconds=30),
    ).job
    assert first.max_retries == 5
    assert first.timeout == timedelta(seconds=30)
    assert first.deduplication_id == "APP1-day3"
    assert first.not_before is not None
    assert abs(first.not_before - first.created_at - timedelta(days=1)) < timedelta(seconds=1)

    again = client.enqueue(
        SendReminder(applicant_id="APP2", reminder_type=ReminderType.DAY5),
        deduplication_id="APP1-day3",
    )
    assert again.deduplicated is True
    assert again.job.id == first.id
    assert again.job.payload == first.payload

    watching = client.watch(first.id)
    assert next(watching).state is JobState.PENDING
    watching.close()  # stopping early ends the stream, without an error

    assert client.cancel(first.id).state is JobState.CANCELLED
    assert client.cancel(first.id).state is JobState.CANCELLED  # idempotent
    with pytest.raises(InvalidState) as refused:
        client.retry(first.id)
    assert refused.value.reason == "INVALID_STATE"
    assert [job.state for job in client.watch(first.id)] == [JobState.CANCELLED]


def test_dead_letter_queue_and_retry(client: JobClient, agents: Agents) -> None:
    agents.refusing.add("A-refuses")
    job = client.enqueue(CrmMatch(listing_id="L2", agent_id="A-refuses"), retries=0).job

    failed = client.wait(job.id, timeout_seconds=10)
    assert failed.state is JobState.FAILED
    assert failed.error == "agent A-refuses refuses listing L2"
    failed = _dlq_id_of(client, job.id)

    agents.refusing.clear()
    retried = client.retry(job.id)
    assert retried.dlq_id is None
    assert retried.state in (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED)
    done = client.wait(job.id, timeout_seconds=10)
    assert done.state is JobState.COMPLETED
    assert done.attempts == 2
    assert [attempt.outcome for attempt in done.history] == ["failed", "completed"]
    assert done.history[0].error == "agent A-refuses refuses listing L2"


def test_batch_and_listing(client: JobClient) -> None:
    def note(recipient: str) -> SendNotification:
        return SendNotification(
            type=NotificationType.CONFIRMATION,
            recipient_id=recipient,
            template_id="application_received",
            template_data={"listing_address": "1 Main St", "application_id": f"APP-{recipient}"},
        )

    later = EnqueueOptions(delay=timedelta(days=1), deduplication_id="note-U4", retries=1)
    results = client.enqueue_batch(
        [note("U0"), note("U1"), note("U2"), note("U3"), (note("U4"), later)]
    )
    assert [r.deduplicated for r in results] == [False] * 5
    assert [r.job.payload["recipientId"] for r in results] == ["U0", "U1", "U2", "U3", "U4"]
    assert results[0].job.payload["templateData"] == {
        "listing_address": "1 Main St",
        "application_id": "APP-U0",
    }
    assert results[4].job.deduplication_id == "note-U4"
    assert results[4].job.max_retries == 1
    assert results[4].job.not_before is not None
    [repeated] = client.enqueue_batch([(note("U9"), later)])
    assert repeated.deduplicated is True
    assert repeated.job.id == results[4].job.id

    pages: list[list[Job]] = []
    token: str | None = None
    while True:
        page, token = client.list_jobs(
            types=[JobType.SEND_NOTIFICATION], page_size=2, page_token=token
        )
        pages.append(page)
        if token is None:
            break
    listed = [job.id for page in pages for job in page]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(listed) == sorted(r.job.id for r in results)
    created = [job.created_at for page in pages for job in page]
    assert created == sorted(created, reverse=True)

    for result in results[:4]:
        client.wait(result.job.id, timeout_seconds=10)
    completed, _ = client.list_jobs(states=[JobState.COMPLETED, JobState.FAILED])
    assert sorted(job.id for job in completed) == sorted(r.job.id for r in results[:4])
    pending, _ = client.list_jobs(
        states=[JobState.PENDING], created_after=results[0].job.created_at - timedelta(seconds=1)
    )
    assert [job.id for job in pending] == [results[4].job.id]
    assert client.list_jobs(types=[JobType.CRM_MATCH]) == ([], None)


def test_schedules(client: JobClient) -> None:
    crm = CrmMatch(listing_id="L3", agent_id="A3")
    schedule = client.schedule(
        crm,
        cron="0 9 1 1 *",
        time_zone="Europe/Berlin",
        schedule_id="yearly-crm",
        retries=2,
        handler_timeout=timedelta(seconds=20),
    )
    assert isinstance(schedule, Schedule)
    assert (schedule.id, schedule.cron, schedule.time_zone) == (
        "yearly-crm",
        "0 9 1 1 *",
        "Europe/Berlin",
    )
    assert (schedule.type, schedule.payload) == (JobType.CRM_MATCH, crm.to_dict())
    assert (schedule.retries, schedule.timeout, schedule.paused) == (
        2,
        timedelta(seconds=20),
        False,
    )
    assert client.get_schedule("yearly-crm") == schedule

    replaced = client.schedule(crm, cron="30 8 1 1 *", schedule_id="yearly-crm")
    assert isinstance(replaced, Schedule)
    assert (replaced.cron, replaced.time_zone, replaced.retries) == ("30 8 1 1 *", "UTC", 3)
    assert replaced.created_at == schedule.created_at
    assert client.list_schedules() == ([replaced], None)

    assert client.pause_schedule("yearly-crm").paused is True
    assert client.get_schedule("yearly-crm").paused is True
    assert client.resume_schedule("yearly-crm").paused is False
    client.delete_schedule("yearly-crm")
    with pytest.raises(ScheduleNotFound) as missing:
        client.get_schedule("yearly-crm")
    assert missing.value.reason == "SCHEDULE_NOT_FOUND"
    assert client.list_schedules() == ([], None)

    one_off = client.schedule(CrmMatch(listing_id="L4", agent_id="A4"), delay=timedelta(seconds=5))
    assert isinstance(one_off, Job)
    assert one_off.not_before is not None
    assert client.wait(one_off.id, timeout_seconds=10).state is JobState.COMPLETED
    at = datetime.now(UTC) + timedelta(hours=1)
    later = client.schedule(CrmMatch(listing_id="L5", agent_id="A5"), run_time=at)
    assert isinstance(later, Job)
    assert later.not_before == at


def test_errors_are_domain_errors(client: JobClient) -> None:
    with pytest.raises(JobNotFound) as unknown:
        client.get_status(uuid.uuid4())
    assert unknown.value.reason == "JOB_NOT_FOUND"
    with pytest.raises(InvalidArgument) as bad_id:
        client.cancel("not-a-uuid")
    assert [v.field for v in bad_id.value.violations] == ["job_id"]
    with pytest.raises(InvalidArgument) as bad_options:
        client.enqueue(
            CrmMatch(listing_id="L1", agent_id="A1"), retries=21, handler_timeout=timedelta(hours=1)
        )
    assert sorted(v.field for v in bad_options.value.violations) == ["handler_timeout", "retries"]
    with pytest.raises(InvalidArgument) as bad_cron:
        client.schedule(
            CrmMatch(listing_id="L1", agent_id="A1"), cron="61 * * * *", time_zone="Mars/Olympus"
        )
    assert sorted(v.field for v in bad_cron.value.violations) == ["cron", "time_zone"]
    assert client.list_jobs() == ([], None)  # nothing was written

    # Checked before anything is sent: what the request message cannot even carry.
    with pytest.raises(InvalidArgument) as both:
        client.enqueue(
            CrmMatch(listing_id="L1", agent_id="A1"),
            delay=timedelta(1),
            not_before=datetime.now(UTC),
        )
    assert [v.field for v in both.value.violations] == ["delay"]
    with pytest.raises(InvalidArgument) as naive:
        client.schedule(CrmMatch(listing_id="L1", agent_id="A1"), run_time=datetime(2030, 1, 1))
    assert [v.field for v in naive.value.violations] == ["run_time"]
    with pytest.raises(InvalidArgument) as no_timing:
        client.schedule(CrmMatch(listing_id="L1", agent_id="A1"))
    assert [v.field for v in no_timing.value.violations] == ["timing"]


def test_unreachable_or_silent_service() -> None:
    port = _free_port()  # closed again: nothing listens there
    with JobClient(f"127.0.0.1:{port}") as client, pytest.raises(ServiceUnavailable) as down:
        client.enqueue(CrmMatch(listing_id="L1", agent_id="A1"))
    assert down.value.reason == "SERVICE_UNAVAILABLE"
    assert down.value.message.startswith(f"cannot reach jobsvc at 127.0.0.1:{port}: ")

    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with (
            JobClient(target, timeout_seconds=0.3) as client,
            pytest.raises(ServiceUnavailable) as slow,
        ):
            client.get_status(uuid.uuid4())
    assert slow.value.message == (
        f"jobsvc at {target} did not answer within 0.3 s; the call may or may not have taken effect"
    )


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@sqlite_only
def test_token_and_tls(make_service: MakeService, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    service = make_service(auth_token="s3cret", tls_cert_file=str(cert), tls_key_file=str(key))
    roots = cert.read_bytes()

    with JobClient(service.target, token="s3cret", tls_root_certificates=roots) as client:
        job = client.enqueue(CrmMatch(listing_id="L1", agent_id="A1")).job
        assert client.wait(job.id, timeout_seconds=10).state is JobState.COMPLETED
    with (
        JobClient(service.target, tls_root_certificates=roots) as anonymous,
        pytest.raises(Unauthenticated) as refused,
    ):
        anonymous.get_status(job.id)
    assert refused.value.reason == "UNAUTHENTICATED"
    with (
        JobClient(service.target, token="s3cret", timeout_seconds=2) as plaintext,
        pytest.raises(ServiceUnavailable),
    ):
        plaintext.get_status(job.id)

    status = cli(
        "status", str(job.id), "--tls-ca-file", str(cert), target=service.target, token="s3cret"
    )
    assert re.search(r"^state\s+completed$", ok(status), re.MULTILINE)
    refused_cli = cli("status", str(job.id), "--tls-ca-file", str(cert), target=service.target)
    refusal = failed(refused_cli, 1)
    assert refusal.startswith("jobsvc status: UNAUTHENTICATED ")
    assert refusal.count("\n") == 1


# -- the asyncio client ---------------------------------------------------------------------------


async def test_async_client(service: Service, agents: Agents) -> None:
    async with AsyncJobClient(service.target) as client:
        result = await client.enqueue(CrmMatch(listing_id="L1", agent_id="A1"))
        assert result.job.state is JobState.PENDING
        states = [job.state async for job in client.watch(result.job.id, timeout_seconds=10)]
        assert states[-1] is JobState.COMPLETED
        assert all(not state.is_final for state in states[:-1])
        done = await client.get_status(result.job.id)
        assert done.result == {"listingId": "L1", "agentId": "A1", "matched": True}

        agents.refusing.add("A2")
        failing = (await client.enqueue(CrmMatch(listing_id="L2", agent_id="A2"), retries=0)).job
        assert (await client.wait(failing.id, timeout_seconds=10)).state is JobState.FAILED
        with JobClient(service.target) as blocking:
            await asyncio.to_thread(_dlq_id_of, blocking, failing.id)
        agents.refusing.clear()
        await client.retry(failing.id)
        assert (await client.wait(failing.id, timeout_seconds=10)).attempts == 2

        batch = await client.enqueue_batch(
            [
                SendReminder(applicant_id="APP1", reminder_type=ReminderType.DAY1),
                (
                    SendReminder(applicant_id="APP1", reminder_type=ReminderType.DAY3),
                    EnqueueOptions(delay=timedelta(days=2), deduplication_id="APP1-day3"),
                ),
            ]
        )
        assert [r.job.payload["reminderType"] for r in batch] == ["day1", "day3"]
        cancelled = await client.cancel(batch[1].job.id)
        assert cancelled.state is JobState.CANCELLED
        listed, token = await client.list_jobs(states=[JobState.CANCELLED], page_size=10)
        assert ([job.id for job in listed], token) == ([cancelled.id], None)

        schedule = await client.schedule(
            CrmMatch(listing_id="L3", agent_id="A3"), cron="0 9 1 1 *", schedule_id="s1"
        )
        assert isinstance(schedule, Schedule)
        assert (await client.pause_schedule("s1")).paused is True
        assert (await client.resume_schedule("s1")).paused is False
        assert await client.list_schedules() == ([await client.get_schedule("s1")], None)
        await client.delete_schedule("s1")
        with pytest.raises(ScheduleNotFound):
            await client.get_schedule("s1")

        with pytest.raises(JobNotFound):
            await client.get_status(uuid.uuid4())
        with pytest.raises(InvalidArgument) as bad:
            async for _ in client.watch("nope"):
                pass
        assert [v.field for v in bad.value.violations] == ["job_id"]


# -- the CLI --------------------------------------------------------------------------------------


def cli(
    *args: str, target: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m jobsvc <args>`` with a clean environment (no JOBSVC_* of the caller's)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBSVC_")}
    if target is not None:
        env["JOBSVC_TARGET"] = target
    if token is not None:
        env["JOBSVC_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "jobsvc", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int) -> str:
    """stderr of a command that failed as it should: that exit code, nothing on stdout, and no
    traceback."""
    assert result.returncode == code, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr


def _together(*calls: Callable[[], T]) -> list[T]:
    """Run independent calls at the same time (each CLI call starts a Python process)."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``jobsvc <args>`` run by ``jobsvc.cli.main`` in this process: (exit code, stdout, stderr).
    An exception escaping it (what would be a traceback) fails the test."""
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_operates_the_service(
    service: Service, agents: Agents, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operator command once. A Python process per call costs about a second here, so three
    calls run as real processes (at the same time) and the rest through ``main`` in-process."""
    target = ["--target", service.target]

    def jobsvc(*args: str) -> str:
        code, out, err = main_in_process(capsys, *args, *target)
        assert (code, err) == (0, ""), (args, err)
        return out

    reminder = '{"applicantId":"APP1","reminderType":"day3","missingDocs":["paystub"]}'
    enqueued, delayed, scheduled = _together(
        lambda: cli("enqueue", "crm-match", CRM_JSON, *target),
        lambda: cli(
            "enqueue", "send-reminder", reminder, "--delay", "1d", "--dedup", "APP1-day3", *target
        ),
        lambda: cli(
            "schedule",
            "create",
            "crm-match",
            CRM_JSON,
            "--cron",
            "0 9 1 1 *",
            "--tz",
            "Europe/Berlin",
            "--id",
            "yearly-crm",
            "--json",
            target=service.target,
        ),
    )

    # enqueue, status, jobs
    match = re.fullmatch(rf"job ({UUID}) enqueued: crm-match, pending\n", ok(enqueued))
    assert match, enqueued
    job_id = match[1]
    waited = json.loads(jobsvc("status", job_id, "--wait", "--json"))["job"]
    assert waited["id"] == job_id
    assert waited["state"] == "JOB_STATE_COMPLETED"
    assert waited["attempts"] == 1
    assert waited["crmMatch"] == {"listingId": "L1", "agentId": "A1"}
    assert waited["result"] == {"listingId": "L1", "agentId": "A1", "matched": True}
    assert [a["outcome"] for a in waited["history"]] == ["ATTEMPT_OUTCOME_COMPLETED"]
    text = jobsvc("status", job_id)
    for row in (
        rf"job\s+{job_id}",
        r"type\s+crm-match",
        r"state\s+completed",
        r"attempts\s+1 \(retries allowed: 3\)",
        r"""payload\s+\{"listingId": "L1", "agentId": "A1"\}""",
        r"last error\s+-",
        r"dlq id\s+-",
        r"ATTEMPT\s+STARTED\s+FINISHED\s+OUTCOME\s+ERROR",
        r"1\s+\S+ \S+Z\s+\S+ \S+Z\s+completed\s+-",
    ):
        assert re.search(rf"^{row}$", text, re.MULTILINE), (row, text)
    [result] = re.findall(r"^result\s+(\{.*\})$", text, re.MULTILINE)
    assert json.loads(result) == {"listingId": "L1", "agentId": "A1", "matched": True}

    # a job in the dead-letter queue, retried
    agents.refusing.add("A-refuses")
    refusing = '{"listingId":"L2","agentId":"A-refuses"}'
    code, out, err = main_in_process(
        capsys, "enqueue", "crm-match", refusing, "--retries", "0", "--wait", "--json", *target
    )
    assert (code, err) == (3, "")  # --wait: the job failed
    final = json.loads(out)
    failed_id = final["job"]["id"]
    assert final["deduplicated"] is False
    assert final["job"]["state"] == "JOB_STATE_FAILED"
    assert final["job"]["lastError"] == "agent A-refuses refuses listing L2"
    with JobClient(service.target) as client:
        _dlq_id_of(client, uuid.UUID(failed_id))
    agents.refusing.clear()
    assert re.fullmatch(
        rf"job {failed_id} re-driven from the dead-letter queue: \w+\n", jobsvc("retry", failed_id)
    )
    done = json.loads(jobsvc("status", failed_id, "--wait", "--json"))["job"]
    assert (done["state"], done["attempts"], done["dlqId"]) == ("JOB_STATE_COMPLETED", 2, "")

    listed = json.loads(jobsvc("jobs", "--type", "crm-match", "--state", "completed", "--json"))
    assert sorted(job["id"] for job in listed["jobs"]) == sorted([job_id, failed_id])
    assert listed["nextPageToken"] == ""
    table = jobsvc("jobs", "--type", "crm-match", "--limit", "1").splitlines()
    assert re.fullmatch(r"ID\s+TYPE\s+STATE\s+ATTEMPTS\s+CREATED\s+LAST ERROR", table[0])
    assert re.fullmatch(rf"{failed_id}\s+crm-match\s+completed\s+2\s+\S+ \S+Z\s+.+", table[1])
    assert table[2:4] == ["", table[3]]
    assert table[3].startswith("more: --page-token ")
    assert len(table) == 4

    # a delayed job: deduplicated, cancelled
    match = re.fullmatch(
        rf"job ({UUID}) enqueued: send-reminder, pending, not before \S+ \S+Z\n", ok(delayed)
    )
    assert match, delayed
    reminder_id = match[1]
    assert jobsvc("cancel", reminder_id) == f"job {reminder_id} cancelled\n"
    assert jobsvc("cancel", reminder_id) == f"job {reminder_id} cancelled\n"
    code, out, err = main_in_process(capsys, "status", reminder_id, "--wait", *target)
    assert (code, err) == (4, "")  # --wait: the job was cancelled
    assert re.search(r"^state\s+cancelled$", out, re.MULTILINE), out
    assert jobsvc("enqueue", "send-reminder", reminder, "--dedup", "APP1-day3") == (
        f"job {reminder_id} already exists with deduplication id APP1-day3: "
        "send-reminder, cancelled\n"
    )
    code, out, err = main_in_process(capsys, "retry", reminder_id, *target)
    assert (code, out) == (1, "")
    assert err.startswith("jobsvc retry: INVALID_STATE ")

    # schedules
    schedule = json.loads(ok(scheduled))["schedule"]
    assert (schedule["scheduleId"], schedule["cron"], schedule["timeZone"]) == (
        "yearly-crm",
        "0 9 1 1 *",
        "Europe/Berlin",
    )
    assert schedule["paused"] is False
    assert re.fullmatch(r"\d{4}-01-01T08:00:00Z", schedule["nextRunTime"])  # 09:00 in Berlin
    table = jobsvc("schedule", "list").splitlines()
    assert len(table) == 2
    assert re.fullmatch(r"ID\s+TYPE\s+CRON\s+TIME ZONE\s+STATE\s+NEXT RUN\s+LAST RUN", table[0])
    assert re.fullmatch(
        r"yearly-crm\s+crm-match\s+0 9 1 1 \*\s+Europe/Berlin\s+active\s+"
        r"\d{4}-01-01 08:00:00\.000Z\s+-",
        table[1],
    )
    paused = jobsvc("schedule", "pause", "yearly-crm")
    assert re.search(r"^state\s+paused$", paused, re.MULTILINE)
    assert re.search(r"^next run\s+-$", paused, re.MULTILINE)
    resumed = json.loads(jobsvc("schedule", "resume", "yearly-crm", "--json"))["schedule"]
    assert resumed["paused"] is False
    fetched = json.loads(jobsvc("schedule", "get", "yearly-crm", "--json"))["schedule"]
    assert fetched == resumed | {"nextRunTime": fetched["nextRunTime"]}
    assert jobsvc("schedule", "delete", "yearly-crm") == "schedule yearly-crm deleted\n"
    assert jobsvc("schedule", "list") == "no schedules\n"
    code, out, err = main_in_process(capsys, "schedule", "get", "yearly-crm", *target)
    assert (code, out) == (1, "")
    assert err.startswith("jobsvc schedule get: SCHEDULE_NOT_FOUND ")

    note = {
        "type": "confirmation",
        "recipientId": "U1",
        "templateId": "viewing_confirmation",
        "templateData": {
            "listing_address": "1 Main St",
            "viewing_time": "2026-12-01T10:00:00-05:00",
        },
    }
    one_off = json.loads(
        jobsvc("schedule", "create", "send-notification", json.dumps(note), "--in", "5s", "--json")
    )["job"]
    assert one_off["sendNotification"] == {**note, "type": "NOTIFICATION_TYPE_CONFIRMATION"}
    assert one_off["notBeforeTime"]
    later = jobsvc("status", one_off["id"], "--wait")
    assert re.search(r"^state\s+completed$", later, re.MULTILINE)


# The command line cannot be used: exit 2, before anything is sent. Our own messages are compared
# in full; argparse's message follows its usage lines.
USAGE_ERRORS = [
    (
        ["enqueue", "crm-match", '{"listingId":"L1",'],
        "jobsvc enqueue: the payload is not valid JSON: Expecting property name enclosed in "
        "double quotes: line 1 column 19 (char 18)\n",
    ),
    (
        ["enqueue", "crm-match", '["L1"]'],
        "jobsvc enqueue: the payload must be a JSON object, e.g. "
        """'{"listingId": "...", "agentId": "..."}'\n""",
    ),
    (
        ["enqueue", "crm-match", '{"listingId":"L1","agentID":"A1"}'],
        "jobsvc enqueue: unknown field agentID in a crm-match payload; its fields are "
        "listingId, agentId\n",
    ),
    (
        [
            "schedule",
            "create",
            "crm-match",
            CRM_JSON,
            "--cron",
            "0 9 * * *",
            "--tls-ca-file",
            "/no/such.pem",
        ],
        "jobsvc schedule create: cannot read the TLS CA file /no/such.pem: "
        "No such file or directory\n",
    ),
    (
        ["enqueue", "crm-match", CRM_JSON, "--delay", "10x"],
        "jobsvc enqueue: error: argument --delay: invalid duration '10x': use e.g. 30s, 5m, "
        "1h30m, 2d or a number of seconds\n",
    ),
    (
        ["schedule", "create", "crm-match", CRM_JSON, "--at", "2030-01-01T09:00"],
        "jobsvc schedule create: error: argument --at: time '2030-01-01T09:00' has no UTC offset: "
        "add Z or one such as +02:00\n",
    ),
    (
        ["enqueue", "crm-matches", CRM_JSON],
        "jobsvc enqueue: error: argument TYPE: invalid choice: 'crm-matches' (choose from "
        "'syndicate-listing', 'send-reminder', 'crm-match', 'send-notification')\n",
    ),
]


@sqlite_only
def test_cli_errors_are_one_readable_line(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSVC_TARGET", service.target)
    for args, expected in USAGE_ERRORS:
        code, out, err = main_in_process(capsys, *args)
        assert (code, out) == (2, ""), (args, err)
        if ": error: " in expected:
            assert err.startswith(
                f"usage: jobsvc {' '.join(args[:2] if args[0] == 'schedule' else args[:1])} "
            )
            assert err.splitlines(keepends=True)[-1] == expected
        else:
            assert err == expected

    # The service, or the same validation it runs, refuses: exit 1, "<reason> <message>". Only
    # the reason and the field are compared: the service's message texts are not a contract.
    missing = uuid.uuid4()
    for args, expected in [
        (
            ["enqueue", "crm-match", '{"listingId":"L1"}'],
            "jobsvc enqueue: INVALID_ARGUMENT crm_match.agent_id: ",
        ),
        (
            ["enqueue", "crm-match", CRM_JSON, "--timeout", "1h"],
            "jobsvc enqueue: INVALID_ARGUMENT handler_timeout: ",
        ),
        (["status", "abc"], "jobsvc status: INVALID_ARGUMENT job_id: "),
        (["status", str(missing)], f"jobsvc status: JOB_NOT_FOUND job {missing} "),
        (["cancel", str(missing)], "jobsvc cancel: JOB_NOT_FOUND "),
        (["retry", str(missing)], "jobsvc retry: JOB_NOT_FOUND "),
        (["schedule", "pause", "nope"], "jobsvc schedule pause: SCHEDULE_NOT_FOUND "),
        (
            ["schedule", "create", "crm-match", CRM_JSON, "--cron", "0 9 * *"],
            "jobsvc schedule create: INVALID_ARGUMENT cron: ",
        ),
        (["jobs", "--page-token", "forged"], "jobsvc jobs: INVALID_ARGUMENT page_token: "),
    ]:
        code, out, err = main_in_process(capsys, *args)
        assert (code, out) == (1, ""), (args, err)
        assert err.startswith(expected), (args, err)
        assert err.count("\n") == 1, err
        assert err.endswith("\n"), err
    with JobClient(service.target) as client:
        assert client.list_jobs() == ([], None)  # no refused command wrote anything

    # As a real process: the exit code, one line on stderr, nothing on stdout.
    closed = _free_port()
    down, bad_json = _together(
        lambda: cli("status", str(missing), "--target", f"127.0.0.1:{closed}"),
        lambda: cli("enqueue", "crm-match", "{", target=service.target),
    )
    assert failed(down, 1).startswith(
        f"jobsvc status: SERVICE_UNAVAILABLE cannot reach jobsvc at 127.0.0.1:{closed}: "
    )
    assert down.stderr.count("\n") == 1
    assert failed(bad_json, 2).startswith("jobsvc enqueue: the payload is not valid JSON: ")
    assert bad_json.stderr.count("\n") == 1


# -- jobsvc health --------------------------------------------------------------------------------


def health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``jobsvc health <args>`` with only these JOBSVC_* variables, as a container runs it."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("JOBSVC_")}
    return subprocess.run(
        [sys.executable, "-m", "jobsvc", "health", *args],
        capture_output=True,
        text=True,
        env=clean | env,
        timeout=60,
    )


@contextlib.contextmanager
def _nothing_listening() -> Iterator[int]:
    """A port held bound but not listening: connections to it are refused, and nothing else can
    take it while the test runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@sqlite_only
def test_health_checks_the_configured_server(make_service: MakeService) -> None:
    port = make_service().parts.rpc_port
    assert port is not None
    with _nothing_listening() as free:
        results = _together(
            lambda: health(JOBSVC_TARGET=f"127.0.0.1:{port}"),
            lambda: health(JOBSVC_GRPC_HOST="0.0.0.0", JOBSVC_GRPC_PORT=str(port)),
            lambda: health("--target", f"127.0.0.1:{port}", JOBSVC_TARGET=f"127.0.0.1:{free}"),
            # Nothing on the configured target: unhealthy, whatever serves on 50051.
            lambda: health(JOBSVC_TARGET=f"127.0.0.1:{free}"),
            lambda: health(JOBSVC_GRPC_PORT=str(free)),
        )
    for serving in results[:3]:
        assert (serving.returncode, serving.stderr) == (0, ""), serving
    for down in results[3:]:
        message = failed(down, 1)
        assert message.startswith(f"jobsvc health: 127.0.0.1:{free} (plaintext): UNAVAILABLE")
        assert message.count("\n") == 1


@sqlite_only
def test_health_speaks_tls_with_the_servers_settings(
    make_service: MakeService, tmp_path: Path
) -> None:
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("jobs.example.com")  # not the loopback address the check dials
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = make_service(tls_cert_file=str(cert), tls_key_file=str(key)).parts.rpc_port
    (tmp_path / "own").mkdir()
    own_cert, own_key = _self_signed(tmp_path / "own")
    self_signed_port = make_service(
        tls_cert_file=str(own_cert), tls_key_file=str(own_key)
    ).parts.rpc_port
    server = {"JOBSVC_GRPC_HOST": "0.0.0.0", "JOBSVC_TLS_KEY_FILE": str(key)}
    results = _together(
        # A private CA: its roots, and the name the certificate carries.
        lambda: health(
            **server,
            JOBSVC_GRPC_PORT=str(tls_port),
            JOBSVC_TLS_CERT_FILE=str(cert),
            JOBSVC_TLS_CA_FILE=str(ca_file),
            JOBSVC_TLS_SERVER_NAME="jobs.example.com",
        ),
        # A self-signed certificate for localhost: the server's own settings are enough.
        lambda: health(
            JOBSVC_GRPC_PORT=str(self_signed_port),
            JOBSVC_TLS_CERT_FILE=str(own_cert),
            JOBSVC_TLS_KEY_FILE=str(own_key),
        ),
        lambda: health(JOBSVC_GRPC_PORT=str(tls_port)),  # plaintext to a TLS server
        lambda: health(  # the certificate is not for this name
            JOBSVC_GRPC_PORT=str(tls_port), JOBSVC_TLS_CA_FILE=str(ca_file)
        ),
        lambda: health(JOBSVC_GRPC_PORT=str(tls_port), JOBSVC_TLS_CA_FILE="/no/such.pem"),
    )
    for serving in results[:2]:
        assert (serving.returncode, serving.stderr) == (0, ""), serving
    assert failed(results[2], 1).startswith(f"jobsvc health: 127.0.0.1:{tls_port} (plaintext): ")
    assert failed(results[3], 1).startswith(f"jobsvc health: 127.0.0.1:{tls_port} (TLS): ")
    assert failed(results[4], 2) == (
        "jobsvc health: cannot read /no/such.pem: No such file or directory\n"
    )
