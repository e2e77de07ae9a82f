"""Asking a gRPC server's standard health service, for ``jobsvc health``."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    target: str,
    *,
    timeout_seconds: float,
    tls_root_certificates: bytes | None = None,
    tls_server_name: str | None = None,
) -> tuple[bool, str]:
    """(serving?, what the server said or why it could not be asked).

    ``tls_root_certificates``: PEM roots to verify the server with; given, the channel is TLS.
    ``tls_server_name``: the name the certificate must carry, when not the target's host (a
    container checking itself on 127.0.0.1 with a certificate for its public name).
    """
    if tls_root_certificates is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_certificates)
        options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            # The stubs package types HealthStub's methods for asyncio channels only.
            response = stub.Check(request, timeout=timeout_seconds)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status
