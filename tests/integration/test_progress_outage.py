"""A database outage between a notification's send and its "sent" note does not send it twice,
and a note that cannot be written by the handler's deadline is held and written later.

The job log reaches PostgreSQL through a TCP proxy (``tests.standins.tcp``); the proxy is cut
the moment the SMTP stand-in receives the email, before it answers, and restored once the
note's first write has failed. Everything else is the real pipeline: gRPC, the embedded local
QStash server (on the database directly), the sidecar, the notifier, the SMTP and HTTP
stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import make_url

from jobsvc.adapters.settings import AdapterSettings, HttpSystem
from jobsvc.adapters.settings import SmtpServer as SmtpSettings
from jobsvc.db import JobLog, create_database_engine, upgrade
from jobsvc.errors import StorageUnavailable
from jobsvc.jobs import Job, JobType
from jobsvc.localqstash import LocalQStashSettings
from jobsvc.runtime import running
from jobsvc.service.progress import JobProgress, UnsavedNotes
from jobsvc.settings import Settings
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2
from tests.integration.test_job_handlers import adverse_action
from tests.polling import eventually
from tests.standins.http import ExternalSystems
from tests.standins.records import applicant, seeded
from tests.standins.smtp import ReceivedMail, SmtpServer
from tests.standins.tcp import TcpProxy

FINAL = (jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _RestoreOn(logging.Handler):
    """Restores ``proxy`` at the first record with one of ``actions``; keeps every action."""

    def __init__(self, proxy: TcpProxy, *actions: str) -> None:
        super().__init__()
        self.proxy = proxy
        self.triggers = set(actions)
        self.actions: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        action = getattr(record, "action", None)
        if not isinstance(action, str):
            return
        self.actions.append(action)
        if action in self.triggers and self.proxy.is_cut:
            self.proxy.restore()


@contextlib.contextmanager
def restoring(proxy: TcpProxy, *actions: str) -> Iterator[_RestoreOn]:
    handler = _RestoreOn(proxy, *actions)
    logger = logging.getLogger("jobsvc")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# A database reached over TCP, so that the proxy can cut it: PostgreSQL only.
_POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@_POSTGRESQL_ONLY
async def test_an_email_sent_while_the_database_goes_away_is_noted_and_not_sent_again(
    database_url: str, tmp_path: Path
) -> None:
    url = make_url(database_url)
    with (
        TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy,
        ExternalSystems() as external,
        SmtpServer() as smtp,
    ):
        seeded(external)
        external.applicants["A1"] = applicant("A1", phone=None)  # email only
        first = threading.Event()

        def cut_at_first_mail(mail: ReceivedMail) -> None:
            if not first.is_set():
                first.set()
                proxy.cut()

        smtp.on_message(cut_at_first_mail)
        port = free_port()
        settings = Settings(
            database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            ),
            grpc_port=0,
            sidecar_port=port,
            public_url=f"http://127.0.0.1:{port}",
            local_qstash=LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001),
            relay_interval=timedelta(milliseconds=50),
            handler_timeout=timedelta(seconds=30),
            adapters=AdapterSettings(
                application_service=HttpSystem(url=external.application_service_url),
                smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, starttls=False),
                outbox_dir=tmp_path / "outbox",
            ),
        )
        # Restored when the note's write failed (or, were it not retried, when the attempt
        # crashed), so the job log is back for whatever comes next.
        with restoring(proxy, "progress_note_retry", "handler_crashed") as log:
            async with running(
                settings, rpc=True, sidecar=True, relay=True, embed_local_qstash=True, migrate=True
            ) as parts:
                assert parts.rpc_port is not None
                async with grpc.aio.insecure_channel(f"127.0.0.1:{parts.rpc_port}") as channel:
                    stub = job_service_pb2_grpc.JobServiceStub(channel)
                    request = pb.EnqueueRequest(**adverse_action("A1"))
                    job_id = (await stub.Enqueue(request)).job.id

                    async def final() -> jobs_pb2.Job | None:
                        try:
                            answer = await stub.GetStatus(pb.GetStatusRequest(job_id=job_id))
                        except grpc.aio.AioRpcError as exc:
                            # A pooled connection the cut closed: asked again, it reconnects.
                            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                                raise
                            return None
                        return answer.job if answer.job.state in FINAL else None

                    job = await eventually(final, what="the notification to end", timeout=30)

        assert proxy.cuts == 1
        assert len(smtp.messages) == 1
        assert "progress_note_retry" in log.actions
        assert "handler_crashed" not in log.actions
        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_COMPLETED, 1)


@_POSTGRESQL_ONLY
async def test_a_note_not_written_by_the_deadline_is_held_and_written_once_storage_returns(
    database_url: str,
) -> None:
    url = make_url(database_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        engine = create_database_engine(proxied)
        try:
            upgrade(engine)
            job_log = JobLog(engine)
            job = Job(
                id=uuid.uuid4(),
                type=JobType.CRM_MATCH,
                payload={"listingId": "L1", "agentId": "A1"},
                created_at=datetime.now(UTC),
            )
            job_log.insert(job)
            unsaved = UnsavedNotes(job_log.progress)
            progress = JobProgress(job_log.progress, job.id, unsaved)

            proxy.cut()
            # The handler's deadline ends the attempt while the note cannot be written.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await progress.record("email", {"status": "sent"})
            # This process's next attempt knows, without the job log.
            later = JobProgress(job_log.progress, job.id, unsaved)
            assert await later.get("email") == {"status": "sent"}

            proxy.restore()

            async def written() -> dict[str, Any] | None:
                try:
                    return await asyncio.to_thread(job_log.progress.get, job.id, "email")
                except StorageUnavailable:  # a pooled connection the cut closed
                    return None

            assert await eventually(written, what="the note in the job log", timeout=20) == {
                "status": "sent"
            }

            async def forgotten() -> bool | None:
                return True if unsaved.of(job.id) == {} else None

            await eventually(forgotten, what="the held note to be let go", timeout=10)
            await unsaved.aclose()
        finally:
            engine.dispose()
