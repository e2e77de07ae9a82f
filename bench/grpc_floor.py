"""The floor under any gRPC call in Python here: a grpc.aio server (on uvloop, as jobsvc runs)
answering the standard health check, which does no work, and 8 concurrent grpc.aio clients in
this process for 10 s. Prints calls/s and the server's CPU per call, to compare with what an
Enqueue costs the ``jobsvc rpc`` process (``bench/jobsvc_bench.py``).

    python bench/grpc_floor.py [--seconds S] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer


async def serve(port_file: Path) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 - once, before serving
    await server.wait_for_termination()


async def call(port: int, seconds: float, clients: int) -> int:
    calls = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal calls
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                await stub.Check(health_pb2.HealthCheckRequest())
                calls += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return calls


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        uvloop.run(serve(args.serve))
        return
    with tempfile.TemporaryDirectory() as folder:
        port_file = Path(folder) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not (port_file.exists() and port_file.read_text()):
                time.sleep(0.05)
            before, started = cpu_seconds(server.pid), time.monotonic()
            calls = uvloop.run(call(int(port_file.read_text()), args.seconds, args.clients))
            elapsed, used = time.monotonic() - started, cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            server.wait()
    print(
        f"{calls / elapsed:,.0f} calls/s from {args.clients} clients; server CPU "
        f"{100 * used / elapsed:.0f}% of a core, {1000 * used / calls:.3f} ms per call"
    )


if __name__ == "__main__":
    main()
