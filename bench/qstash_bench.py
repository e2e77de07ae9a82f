"""Benchmark of the local QStash server: publish→delivered throughput and latency.

Runs three processes on this machine: the server (``jobsvc qstash-dev``), a no-op receiver, and
this script as the publisher. Each message body carries its publish time; the receiver records
when it arrived.

    python bench/qstash_bench.py                      # SQLite and PostgreSQL, default phases
    python bench/qstash_bench.py --databases sqlite --throughput-seconds 10

Phases, per database:
  throughput: publishers keep ``--concurrency`` publishes in flight for ``--throughput-seconds``;
              reported: delivered messages/s over the window (and published/s).
  latency:    a light steady load (``--latency-rate`` msg/s for ``--latency-seconds``);
              reported: publish→delivery latency p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import psycopg

DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="


# -- the receiver (a separate process) -----------------------------------------------------------


def run_receiver() -> None:
    import uvicorn

    state: dict[str, Any] = {"latencies": [], "arrivals": []}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        now = time.time()
        if scope["path"] == "/stats":
            payload = json.dumps(state).encode()
            state["latencies"], state["arrivals"] = [], []
        else:
            state["arrivals"].append(now)
            with contextlib.suppress(ValueError):
                state["latencies"].append(now - float(body))
            payload = b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"RECEIVER_URL=http://127.0.0.1:{port}", flush=True)
        await task

    asyncio.run(main())


# -- process helpers ----------------------------------------------------------------------------


def start(
    cmd: list[str], marker: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(marker):
            return proc, line.strip().split("=", 1)[1]
    proc.kill()
    raise RuntimeError(f"{cmd} did not print {marker}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- the publisher ------------------------------------------------------------------------------


async def throughput(
    session: aiohttp.ClientSession, base: str, dest: str, *, seconds: float, concurrency: int
) -> int:
    published = 0
    deadline = time.monotonic() + seconds
    url = f"{base}/v2/publish/{dest}"
    headers = {"Authorization": f"Bearer {DEV_TOKEN}", "Content-Type": "text/plain"}

    async def worker() -> None:
        nonlocal published
        while time.monotonic() < deadline:
            async with session.post(url, data=repr(time.time()), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"publish answered {response.status}")
            published += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return published


async def steady(
    session: aiohttp.ClientSession, base: str, dest: str, *, rate: float, seconds: float
) -> int:
    url = f"{base}/v2/publish/{dest}"
    headers = {"Authorization": f"Bearer {DEV_TOKEN}", "Content-Type": "text/plain"}
    tasks = []
    start_time = time.monotonic()
    n = int(rate * seconds)

    async def one() -> None:
        async with session.post(url, data=repr(time.time()), headers=headers) as response:
            await response.read()

    for i in range(n):
        target = start_time + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return n


async def stats(session: aiohttp.ClientSession, receiver: str) -> dict[str, Any]:
    async with session.get(f"{receiver}/stats") as response:
        return dict(await response.json(content_type=None))


async def wait_delivered(
    session: aiohttp.ClientSession, receiver: str, expected: int, timeout_seconds: float
) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"latencies": [], "arrivals": []}
    deadline = time.monotonic() + timeout_seconds
    while len(got["arrivals"]) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        s = await stats(session, receiver)
        got["latencies"] += s["latencies"]
        got["arrivals"] += s["arrivals"]
    return got


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench_one(name: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    receiver_proc, receiver = start([sys.executable, __file__, "receiver"], "RECEIVER_URL=")
    server_proc, base = start(
        [
            sys.executable,
            "-m",
            "jobsvc",
            "qstash-dev",
            "--port",
            "0",
            "--database-url",
            database_url,
        ],
        "QSTASH_URL=",
    )
    result: dict[str, Any] = {"database": name}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            dest = f"{receiver}/hook"
            await steady(session, base, dest, rate=50, seconds=1)  # warm up
            await wait_delivered(session, receiver, 50, 10)

            published = await throughput(
                session, base, dest, seconds=args.throughput_seconds, concurrency=args.concurrency
            )
            got = await wait_delivered(session, receiver, published, 60)
            arrivals = sorted(got["arrivals"])
            span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
            result["throughput"] = {
                "published": published,
                "delivered": len(arrivals),
                "published_per_s": round(published / args.throughput_seconds),
                "delivered_per_s": round(len(arrivals) / span) if span else None,
                "p50_ms_under_load": round(pct(got["latencies"], 0.5) * 1000, 1),
            }
            await asyncio.sleep(1)
            sent = await steady(
                session, base, dest, rate=args.latency_rate, seconds=args.latency_seconds
            )
            got = await wait_delivered(session, receiver, sent, 30)
            result["latency"] = {
                "rate_per_s": args.latency_rate,
                "messages": len(got["latencies"]),
                "p50_ms": round(pct(got["latencies"], 0.5) * 1000, 2),
                "p99_ms": round(pct(got["latencies"], 0.99) * 1000, 2),
                "mean_ms": round(statistics.fmean(got["latencies"]) * 1000, 2),
            }
    finally:
        stop(server_proc)
        stop(receiver_proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "receiver"])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--throughput-seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-rate", type=float, default=50)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--postgres-admin-url", default="postgresql://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.mode == "receiver":
        run_receiver()
        return
    results = []
    for name in args.databases.split(","):
        if name == "sqlite":
            tmp = tempfile.mkdtemp()
            results.append(asyncio.run(bench_one(name, f"sqlite:///{tmp}/bench.sqlite3", args)))
        else:
            db = f"jobsvc_bench_{os.getpid()}"
            with psycopg.connect(args.postgres_admin_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            try:
                url = f"postgresql+psycopg://root@127.0.0.1:5432/{db}"
                results.append(asyncio.run(bench_one(name, url, args)))
            finally:
                with psycopg.connect(args.postgres_admin_url, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE {db} WITH (FORCE)")
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
