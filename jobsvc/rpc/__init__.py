"""The gRPC server of JobService: the only package that imports grpc and the generated code.

``build_server`` wires a ``JobService`` into a ``grpc.aio`` server with health, reflection,
optional bearer-token authentication and TLS; ``serve`` runs it until SIGTERM and shuts it down
gracefully.

``JobClient`` (blocking) and ``AsyncJobClient`` (``grpc.aio``) are its typed client for sibling
services and the CLI: ``JobClient().enqueue(CrmMatch(listing_id="L1", agent_id="A1"))``.

Names are imported on first use, so a service that only uses the client does not load the
server's stack (the job log, the brokers, the handlers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsvc.rpc.client import AsyncJobClient, EnqueueResult, JobClient, ServiceUnavailable
    from jobsvc.rpc.server import (
        DEFAULT_GRACE_SECONDS,
        MAX_RECEIVE_MESSAGE_BYTES,
        SERVICE_NAME,
        JobServer,
        build_server,
        load_tls,
        serve,
    )

_EXPORTS = {
    "AsyncJobClient": "client",
    "EnqueueResult": "client",
    "JobClient": "client",
    "ServiceUnavailable": "client",
    "DEFAULT_GRACE_SECONDS": "server",
    "MAX_RECEIVE_MESSAGE_BYTES": "server",
    "SERVICE_NAME": "server",
    "JobServer": "server",
    "build_server": "server",
    "load_tls": "server",
    "serve": "server",
}

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "MAX_RECEIVE_MESSAGE_BYTES",
    "SERVICE_NAME",
    "AsyncJobClient",
    "EnqueueResult",
    "JobClient",
    "JobServer",
    "ServiceUnavailable",
    "build_server",
    "load_tls",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"jobsvc.rpc.{module}"), name)
