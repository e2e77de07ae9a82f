"""The gRPC server of JobService: the only package that imports grpc and the generated code.

``build_server`` wires a ``JobService`` into a ``grpc.aio`` server with health, reflection,
optional bearer-token authentication and TLS; ``serve`` runs it until SIGTERM and shuts it down
gracefully.

``JobClient`` (blocking) and ``AsyncJobClient`` (``grpc.aio``) are its typed client for sibling
services and the CLI: ``JobClient().enqueue(CrmMatch(listing_id="L1", agent_id="A1"))``.
"""

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
