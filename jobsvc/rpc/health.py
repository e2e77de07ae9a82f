"""Asking a gRPC server's standard health service, for ``jobsvc health``."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, *, timeout_seconds: float) -> tuple[bool, str]:
    """(serving?, what the server said or why it could not be asked)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            # The stubs package types HealthStub's methods for asyncio channels only.
            response = stub.Check(request, timeout=timeout_seconds)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status
