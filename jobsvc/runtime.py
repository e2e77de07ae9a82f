"""The composition root: settings in, running parts out. ``jobsvc serve`` runs them all in one
process; ``jobsvc rpc`` and ``jobsvc sidecar`` run one each, for production."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from jobsvc.adapters.configured import ConfiguredAdapters, configured_adapters
from jobsvc.asgi_server import AsgiServer
from jobsvc.broker import (
    Broker,
    Envelope,
    InlineBroker,
    InvalidEnvelope,
    LocalQStashBroker,
    QStashBroker,
    SidecarUrls,
)
from jobsvc.db import JobLog, create_database_engine, current_revision, head_revision, upgrade
from jobsvc.db.clock import utc_now
from jobsvc.handlers import HandlerPorts, HandlerRegistry, default_registry
from jobsvc.handlers.notifier import Notifier, notification_check
from jobsvc.jobs import EnqueueOptions, JobType
from jobsvc.localqstash.users import DEV_USERS
from jobsvc.payloads import parse_payload
from jobsvc.rpc.server import JobServer, build_server, load_tls
from jobsvc.service.deliveries import Deliveries
from jobsvc.service.handler_slots import HandlerSlots
from jobsvc.service.jobs import EnqueueRequest, JobService
from jobsvc.service.relay import Relay
from jobsvc.settings import BrokerKind, Settings
from jobsvc.templates import default_catalog
from jobsvc.webhooks import SignatureVerifier, build_app, status_code

log = logging.getLogger("jobsvc")
UPSTASH_URL = "https://qstash.upstash.io"
LOCAL_QSTASH_URL = "http://127.0.0.1:8080"


class NotMigrated(Exception):
    """The database schema is not at the revision this version of jobsvc needs."""


@dataclass
class Parts:
    """What is running; ``close`` stops it in the right order."""

    settings: Settings
    engine: Engine
    job_log: JobLog
    broker: Broker
    service: JobService
    deliveries: Deliveries
    rpc: JobServer | None = None
    rpc_port: int | None = None
    sidecar: AsgiServer | None = None
    adapters: ConfiguredAdapters | None = None
    local_qstash_url: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        if self.rpc is not None:
            await self.rpc.stop()
        if self.sidecar is not None:
            await self.sidecar.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.service.aclose()
        await self.deliveries.aclose()
        await self.broker.aclose()
        if self.adapters is not None:
            await self.adapters.aclose()
        self.engine.dispose()


def open_job_log(settings: Settings, *, migrate: bool) -> tuple[Engine, JobLog]:
    """The job log on the configured database; ``migrate`` brings the schema up to date,
    otherwise ``NotMigrated`` if it is not (production runs ``jobsvc migrate`` first)."""
    engine = create_database_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    elif current_revision(engine) != head_revision():
        engine.dispose()
        where = settings.database_url.split("@")[-1]  # never the password
        raise NotMigrated(f"the database {where} is not migrated; run `jobsvc migrate`")
    key = settings.page_token_key.encode() if settings.page_token_key else None
    return engine, JobLog(engine, page_token_key=key)


def _signing_keys(settings: Settings, broker: Broker) -> tuple[str, str]:
    if isinstance(broker, LocalQStashBroker):
        return broker.server.engine.signing_keys(broker.server.user)
    current = settings.qstash_current_signing_key or DEV_USERS[0].current_signing_key
    nxt = settings.qstash_next_signing_key or DEV_USERS[0].next_signing_key
    return current, nxt


async def _broker(settings: Settings, *, embed_local: bool) -> Broker:
    if settings.broker is BrokerKind.QSTASH:
        assert settings.qstash_token is not None  # Settings.validate() checked it
        return QStashBroker(
            token=settings.qstash_token,
            base_url=settings.qstash_url or UPSTASH_URL,
            delivery_parallelism=settings.flow_control_parallelism,
        )
    if embed_local:
        return await LocalQStashBroker.start(
            settings.local_qstash, delivery_parallelism=settings.flow_control_parallelism
        )
    # A separately running `jobsvc qstash-dev` (or any QStash-compatible server).
    return QStashBroker(
        token=settings.qstash_token or DEV_USERS[0].token,
        base_url=settings.qstash_url or LOCAL_QSTASH_URL,
        delivery_parallelism=settings.flow_control_parallelism,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    rpc: bool,
    sidecar: bool,
    relay: bool,
    embed_local_qstash: bool,
    migrate: bool,
    registry: HandlerRegistry | None = None,
) -> AsyncIterator[Parts]:
    """Start the chosen parts; stop them (gracefully) when the block ends. ``registry``
    replaces the default handlers (an installation with handlers of its own, tests). The
    default handlers and the adapters they reach are built only where handlers run: with the
    sidecar, or in any part when the inline broker runs them inside Enqueue."""
    engine, job_log = await asyncio.to_thread(open_job_log, settings, migrate=migrate)
    holder: dict[str, JobService] = {}

    async def follow_up(
        job_type: JobType,
        payload: dict[str, Any],
        *,
        delay: timedelta | None = None,
        deduplication_id: str | None = None,
    ) -> uuid.UUID:
        request = EnqueueRequest(
            payload=parse_payload(job_type, payload),
            options=EnqueueOptions(delay=delay, deduplication_id=deduplication_id),
        )
        job, _ = await holder["service"].enqueue(request)
        return job.id

    adapters: ConfiguredAdapters | None = None
    runs_handlers = sidecar or settings.broker is BrokerKind.INLINE
    if registry is None and not runs_handlers:
        registry = HandlerRegistry()  # `jobsvc rpc` with QStash: the sidecars run the handlers
    elif registry is None:
        adapters = configured_adapters(
            settings.adapters, max_concurrent_handlers=settings.max_concurrent_handlers
        )
        registry = default_registry(
            HandlerPorts(
                listings=adapters.listings,
                applications=adapters.applications,
                crm=adapters.crm,
                platforms=adapters.platforms,
                notifier=Notifier(
                    templates=default_catalog(), email=adapters.email, sms=adapters.sms
                ),
                reminder_interval=settings.reminder_interval,
            )
        )
    deliveries = Deliveries(
        job_log=job_log,
        registry=registry,
        handler_timeout=settings.handler_timeout,
        follow_up=follow_up,
        slots=HandlerSlots(
            settings.max_concurrent_handlers, retry_after=settings.overload_retry_after
        ),
    )

    async def deliver_inline(body: bytes, headers: Mapping[str, str]) -> int:
        try:
            job_type = Envelope.decode(body).job_type.value
        except InvalidEnvelope:
            return 489
        result = await deliveries.handle(
            job_type,
            body,
            message_id=headers["Upstash-Message-Id"],
            retried=int(headers.get("Upstash-Retried", "0")),
            schedule_id=None,
            # Enqueue's caller waits for the run anyway; an inline retry would come at once.
            wait_for_slot=True,
        )
        return status_code(result)

    try:
        broker: Broker = (
            InlineBroker(deliver=deliver_inline)
            if settings.broker is BrokerKind.INLINE
            else await _broker(settings, embed_local=embed_local_qstash)
        )
    except BaseException:
        engine.dispose()
        if adapters is not None:
            await adapters.aclose()
        raise
    service = JobService(
        job_log=job_log,
        broker=broker,
        urls=SidecarUrls(public_url=settings.sidecar_url),
        handler_timeout=settings.handler_timeout,
        clock=utc_now,
        background_publishing=not isinstance(broker, InlineBroker),
        payload_check=notification_check(default_catalog()),
    )
    holder["service"] = service
    parts = Parts(
        settings=settings,
        engine=engine,
        job_log=job_log,
        broker=broker,
        service=service,
        deliveries=deliveries,
        adapters=adapters,
    )
    if isinstance(broker, LocalQStashBroker):
        parts.local_qstash_url = broker.server.url
    try:
        if sidecar:
            current, nxt = _signing_keys(settings, broker)
            verifier = SignatureVerifier(current, nxt, public_url=settings.sidecar_url)
            app = build_app(
                deliveries=deliveries,
                verifier=verifier,
                max_body_bytes=settings.sidecar_max_body_bytes,
            )
            parts.sidecar = AsgiServer(app, host=settings.sidecar_host, port=settings.sidecar_port)
            await parts.sidecar.start()
        if rpc:
            tls = load_tls(settings.tls_cert_file, settings.tls_key_file)
            parts.rpc, parts.rpc_port = build_server(
                service,
                host=settings.grpc_host,
                port=settings.grpc_port,
                auth_token=settings.auth_token,
                tls=tls,
            )
            await parts.rpc.start()
        if relay:
            runner = Relay(service=service, interval=settings.relay_interval, clock=utc_now)
            parts.tasks.append(asyncio.create_task(runner.run(), name="relay"))
        yield parts
    finally:
        await parts.close()
