"""The gRPC server (``grpc.aio``): JobService, the standard health service and server reflection,
optional bearer-token authentication and TLS, and a graceful shutdown.

Shutdown goes in the order load balancers need: health turns NOT_SERVING first (optionally
held for ``drain_seconds`` so health checkers notice and stop sending new calls), then the server
stops taking new RPCs and gives the ones in flight ``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jobsvc.rpc.auth import BearerTokenInterceptor
from jobsvc.rpc.guard import RequestGuard
from jobsvc.rpc.servicer import JobServicer
from jobsvc.service.jobs import JobService
from jobsvc.v1 import job_service_pb2, job_service_pb2_grpc

log = logging.getLogger("jobsvc.rpc")

SERVICE_NAME = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
# A full EnqueueBatch of 1,000 typical jobs is a few hundred KiB; 4 MiB (gRPC's default, stated
# here on purpose) leaves room for large notification payloads. Larger calls get
# RESOURCE_EXHAUSTED before any of them is read; split them into several batches.
MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
# Responses: a page of 1,000 jobs with their payloads.
MAX_SEND_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_GRACE_SECONDS = 10.0


class JobServer:
    """A built, not yet started gRPC server; see :func:`build_server`."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer) -> None:
        self.server = server
        self.health = health_servicer

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()

    async def stop(
        self, grace_seconds: float | None = DEFAULT_GRACE_SECONDS, *, drain_seconds: float = 0.0
    ) -> None:
        """Health NOT_SERVING, then (after ``drain_seconds``) no new RPCs and ``grace_seconds``
        for those in flight; RPCs still running after that are cancelled."""
        log.info(
            "gRPC server shutting down (drain %.1f s, grace %s s)",
            drain_seconds,
            grace_seconds,
            extra={"action": "rpc_shutdown"},
        )
        await self.health.enter_graceful_shutdown()
        if drain_seconds > 0:
            await asyncio.sleep(drain_seconds)
        await self.server.stop(grace_seconds)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def build_server(
    service: JobService,
    *,
    host: str,
    port: int,
    auth_token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[JobServer, int]:
    """The server for ``service`` bound to ``host:port`` (0: any free port), and the bound port.

    ``auth_token``: require ``authorization: Bearer <token>`` on JobService calls (health and
    reflection stay open). ``tls``: (certificate chain PEM, private key PEM) to serve TLS
    instead of plaintext. The server is started by :meth:`JobServer.start`.
    """
    # The token is checked first: an unauthenticated call is refused before anything is read.
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestGuard()]
    if auth_token:
        interceptors.insert(0, BearerTokenInterceptor(auth_token))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ],
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    # An IPv6 literal needs brackets before the port.
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        certificate_chain, private_key = tls
        credentials = grpc.ssl_server_credentials([(private_key, certificate_chain)])
        bound = server.add_secure_port(address, credentials)
    return JobServer(server, health_servicer), bound


def load_tls(cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes] | None:
    """The ``tls`` argument of :func:`build_server` from the two PEM files of the settings
    (``JOBSVC_TLS_CERT_FILE``, ``JOBSVC_TLS_KEY_FILE``); None when neither is set."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ValueError("a TLS certificate and its key go together")
    return Path(cert_file).read_bytes(), Path(key_file).read_bytes()


async def serve(
    server: JobServer,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    drain_seconds: float = 0.0,
    stop: asyncio.Event | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Start ``server``, run until one of ``signals`` arrives or ``stop`` is set, then shut it
    down gracefully (:meth:`JobServer.stop`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # asyncio resets a removed handler to the default; the caller's own comes back instead.
    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        log.info("gRPC server serving", extra={"action": "rpc_serving"})
        await stop.wait()
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)
        await server.stop(grace_seconds, drain_seconds=drain_seconds)
