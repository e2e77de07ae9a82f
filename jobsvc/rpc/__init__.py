"""The gRPC server of JobService: the only package that imports grpc and the generated code.

``build_server`` wires a ``JobService`` into a ``grpc.aio`` server with health, reflection,
optional bearer-token authentication and TLS; ``serve`` runs it until SIGTERM and shuts it down
gracefully.
"""

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
    "JobServer",
    "build_server",
    "load_tls",
    "serve",
]
