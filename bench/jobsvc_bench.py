"""Benchmark of the JobService on PostgreSQL, through the local broker, with a raw INSERT baseline.

Runs the service as separate processes on this machine and this script as the gRPC client (the
generated ``JobServiceStub`` over ``grpc.aio``, one channel per client), against a fresh
PostgreSQL database that is dropped at the end.

    python bench/jobsvc_bench.py                          # everything, about 1.5 minutes
    python bench/jobsvc_bench.py --layout split           # rpc, sidecar, qstash-dev apart
    python bench/jobsvc_bench.py --phases insert,enqueue --enqueue-seconds 5
    python bench/jobsvc_bench.py --profile /tmp/prof      # py-spy during enqueue-8, batch, e2e
    python bench/jobsvc_bench.py summarize /tmp/prof/enqueue-8-serve.txt

Layouts (``--layout``):
  serve: ``jobsvc serve``: gRPC, sidecar, relay and the local QStash server in one process.
  split: ``jobsvc qstash-dev``, ``jobsvc rpc`` and ``jobsvc sidecar``, one process each.
The local QStash server keeps its state in its own SQLite file.

Phases (``--phases``, in this order):
  insert:    baseline: a raw single-row INSERT (psycopg, autocommit, prepared) of the job_logs
             row a new job has, at 1 and 8 connections (threads); median of ``--repeat`` runs.
             Runs before the service starts, on the migrated database, which is then emptied.
  status:    GetStatus of one completed job, one client, calls in sequence; p50/p99 (median
             over ``--repeat`` runs).
  steady:    Enqueue at a steady rate (open loop; each of ``--steady-rates``, default 20 and 200
             jobs/s) for ``--steady-seconds``; from the job log afterwards: enqueue→handler-start
             latency (the first attempt's started_at - the job's created_at, both stamped by the
             service's clock) and enqueue→completed latency, p50/p99. A rate above what the
             service sustains measures its queue, not its latency.
  enqueue:   closed-loop Enqueue at each of ``--clients`` (default 1,8,32) for
             ``--enqueue-seconds`` each; calls/s and call latency p50/p99. Deliveries run
             meanwhile (they share the CPU); the backlog is drained before the next phase.
  batch:     EnqueueBatch of ``--batch-size`` jobs per call, ``--batch-clients`` in flight.
  e2e:       ``--e2e-clients`` Enqueue callers for ``--e2e-seconds``, then wait until every job
             is completed; jobs/s completed = jobs / (last completed_at - first created_at).
Every phase reports CPU use (percent of one core) of the client, the service processes and all
PostgreSQL processes, and of the whole machine, over its window: other work on the machine
(tests) shows up there and in the load average printed with each result. Throughput phases also
report CPU milliseconds per job (service, PostgreSQL), which other load disturbs less than jobs/s.
``--broker inline`` runs each handler inside Enqueue: the same phases without the HTTP hops.

Output: one JSON line per result on stdout as it is measured, then a table with the performance
targets (the TARGETS table below).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from processes import Service, admin, fresh_database, migrate, start_service
from psycopg.types.json import Jsonb

from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, jobs_pb2, payloads_pb2

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UNFINISHED = ("pending", "processing", "retrying")
# (phase key, metric) -> (comparison, bound, label)
TARGETS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("enqueue-8", "jobs_per_s"): (">=", 3000, "Enqueue @8 >= 3,000 jobs/s"),
    ("enqueue-8", "share_of_insert"): (">=", 0.30, "Enqueue @8 >= 30% of raw INSERT @8"),
    ("enqueue-8", "p99_ms"): ("<", 20, "Enqueue @8 p99 < 20 ms"),
    ("batch", "jobs_per_s"): (">=", 30000, "EnqueueBatch >= 30,000 jobs/s"),
    ("e2e", "completed_per_s"): (">=", 1000, "end to end >= 1,000 jobs/s"),
    ("steady-200", "start_p50_ms"): ("<", 5, "enqueue->start p50 < 5 ms"),
    ("steady-200", "start_p99_ms"): ("<", 15, "enqueue->start p99 < 15 ms"),
}


# -- measuring ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _process_cpu(pid: int, *, children: bool = False) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:  # cutime, cstime: exited children (closed PostgreSQL backends)
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process, including backends that have exited (through
    the postmaster's children counters). Includes other databases' work."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_comm = Path(f"/proc/{ppid}/comm").read_text().strip() if ppid > 1 else ""
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        total += _process_cpu(int(entry.name), children=parent_comm != "postgres")
    return total


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


@dataclass
class CpuMeter:
    """CPU use over a window, in percent of one core (the machine: percent of all cores)."""

    service_pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        busy, total = _machine_cpu()
        sample = {
            "client": time.process_time(),
            "postgres": _postgres_cpu(),
            "machine_busy": busy,
            "machine_total": total,
        }
        sample.update({name: _process_cpu(pid) for name, pid in self.service_pids.items()})
        sample["service"] = sum(sample[name] for name in self.service_pids)
        return sample

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        self.started_at = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        wall = time.monotonic() - self.started_at

        def share(name: str) -> int:
            return round(100 * (end[name] - self.start[name]) / wall)

        self.result = {name: share(name) for name in ("client", "service", "postgres")}
        total = end["machine_total"] - self.start["machine_total"]
        busy = end["machine_busy"] - self.start["machine_busy"]
        self.result["machine"] = round(100 * busy / total) if total else 0
        if len(self.service_pids) > 1:
            self.result["by_process"] = {name: share(name) for name in self.service_pids}


def cpu_per_job(cpu: dict[str, Any], jobs_per_s: float) -> dict[str, float]:
    """CPU milliseconds per job of the service and of PostgreSQL, from percentages of a core:
    less sensitive to other load on the machine than jobs/s."""
    if not jobs_per_s:
        return {}
    return {name: round(10 * cpu[name] / jobs_per_s, 2) for name in ("service", "postgres")}


# -- the database ---------------------------------------------------------------------------------


def job_states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT state, count(*) FROM job_logs GROUP BY state").fetchall()
    return {state: count for state, count in rows}


def drain(dsn: str, timeout: float) -> tuple[float, dict[str, int]]:
    """Wait until no job is pending, processing or retrying; (seconds waited, states)."""
    started = time.monotonic()
    while True:
        states = job_states(dsn)
        if not any(states.get(s) for s in UNFINISHED) or time.monotonic() - started > timeout:
            return time.monotonic() - started, states
        time.sleep(0.25)


INSERT_ROW = """
INSERT INTO job_logs (id, qstash_message_id, job_type, payload, state, attempts, max_retries,
    started_at, completed_at, result, error, created_at, updated_at, not_before, timeout_seconds,
    deduplication_id, schedule_id, dlq_id, published_at, publish_attempts, next_publish_at,
    lease_expires_at)
VALUES (%s, NULL, 'syndicate-listing', %s, 'pending', 0, 3, NULL, NULL, NULL, NULL, %s, %s,
    NULL, NULL, NULL, NULL, NULL, NULL, 0, %s, NULL)
RETURNING id
"""


def raw_insert(dsn: str, connections: int, seconds: float) -> float:
    """Single-row INSERTs of a new job's row (the service's statement: all columns, RETURNING
    id, autocommit) from ``connections`` threads for ``seconds``; rows/s."""
    counts = [0] * connections
    barrier = threading.Barrier(connections + 1)
    deadline: list[float] = []

    def worker(index: int) -> None:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            barrier.wait()
            n = 0
            while time.monotonic() < deadline[0]:
                now = datetime.now(UTC)
                payload = Jsonb({"listingId": f"L{n}", "platforms": ["zillow"]})
                conn.execute(
                    INSERT_ROW, (uuid.uuid4(), payload, now, now, now + timedelta(seconds=10))
                ).fetchone()
                n += 1
            counts[index] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # connections open
    deadline.append(time.monotonic() + seconds)
    began = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - began)


def start_latencies(dsn: str, job_ids: list[str]) -> dict[str, list[float]]:
    """For ``job_ids``, in seconds after the job's created_at: its first attempt's start, its
    completion, and when Enqueue recorded the broker's acceptance (published_at; a delivery may
    start before that is recorded)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT extract(epoch FROM a.started_at - j.created_at),
                   extract(epoch FROM j.completed_at - j.created_at),
                   extract(epoch FROM j.published_at - j.created_at)
            FROM job_logs j JOIN job_attempts a ON a.job_id = j.id AND a.number = 1
            WHERE j.id = ANY(%s)
            """,
            ([uuid.UUID(i) for i in job_ids],),
        ).fetchall()
    return {
        "start": [float(r[0]) for r in rows],
        "completed": [float(r[1]) for r in rows if r[1] is not None],
        "published": [float(r[2]) for r in rows if r[2] is not None],
    }


# -- the service ----------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(service: Service, phase: str, seconds: float, out: Path | None) -> Iterator[None]:
    """py-spy (``--gil -f raw``) on every service process for the phase, if ``out`` is set."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = []
    for name, pid in service.pids.items():
        output = str(out / f"{phase}-{name}.txt")
        command = [spy, "record", "-p", str(pid), "--gil", "-f", "raw", "-o", output]
        command += ["-d", str(int(seconds))]
        procs.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        yield
    finally:
        for proc in procs:
            try:
                proc.wait(seconds + 20)
            except subprocess.TimeoutExpired:
                proc.terminate()
        for name in service.pids:
            path = out / f"{phase}-{name}.txt"
            if path.exists():
                (out / f"{phase}-{name}.summary.txt").write_text(summarize(path))


def summarize(path: Path, top: int = 25) -> str:
    """The hottest functions and packages of a py-spy raw (collapsed) profile, by own samples
    (the innermost frame) and inclusive (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own_package: collections.Counter[str] = collections.Counter()
    inclusive_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_frame(frame) for frame in stack.split(";")]
        own[frames[-1][0]] += count
        own_package[frames[-1][1]] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
        for package in {package for _, package in frames}:
            inclusive_package[package] += count
    lines = [f"{path.name}: {total} samples with the GIL held"]
    for title, counter in (
        ("own, by package", own_package),
        ("inclusive, by package", inclusive_package),
        ("own, by function", own),
        ("inclusive, by function", inclusive),
    ):
        lines += ["", f"{title}:"]
        lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> tuple[str, str]:
    """(``function (file)``, package) of a py-spy frame ``function (path/file.py:line)``."""
    function, _, location = frame.rpartition(" (")
    file = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    parts = file.split("/")
    if parts[0] == "jobsvc" and len(parts) > 2:
        package = "/".join(parts[:2])
    elif len(parts) > 1:
        package = parts[0]
    else:
        package = parts[0].removesuffix(".py")
    return f"{function} ({file})", package


# -- the clients ----------------------------------------------------------------------------------


def enqueue_request(n: int) -> pb.EnqueueRequest:
    return pb.EnqueueRequest(
        syndicate_listing=payloads_pb2.SyndicateListing(listing_id=f"L{n}", platforms=["zillow"])
    )


async def channels(address: str, count: int) -> list[grpc.aio.Channel]:
    made = [grpc.aio.insecure_channel(address) for _ in range(count)]
    await asyncio.gather(*(channel.channel_ready() for channel in made))
    return made


def stub(channel: grpc.aio.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)


@dataclass
class Calls:
    latencies: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    per_second: collections.Counter[int] = field(default_factory=collections.Counter)
    seconds: float = 0.0


async def closed_loop(
    address: str,
    clients: int,
    seconds: float,
    call: Callable[[Any, int], Awaitable[list[str]]],
) -> Calls:
    """``clients`` callers, each on its own channel, calling back to back for ``seconds``."""
    made = await channels(address, clients)
    result = Calls()
    counter = iter(range(10**12))
    began = time.monotonic()
    deadline = began + seconds

    async def caller(channel: grpc.aio.Channel) -> None:
        client = stub(channel)
        while (now := time.monotonic()) < deadline:
            try:
                ids = await call(client, next(counter))
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1
                continue
            done = time.monotonic()
            result.latencies.append(done - now)
            result.job_ids += ids
            result.per_second[int(done - began)] += len(ids)

    await asyncio.gather(*(caller(channel) for channel in made))
    result.seconds = time.monotonic() - began
    for channel in made:
        await channel.close()
    return result


async def call_enqueue(client: Any, n: int) -> list[str]:
    response = await client.Enqueue(enqueue_request(n))
    return [response.job.id]


def call_batch(size: int) -> Callable[[Any, int], Awaitable[list[str]]]:
    async def call(client: Any, n: int) -> list[str]:
        requests = [enqueue_request(n * size + i) for i in range(size)]
        response = await client.EnqueueBatch(pb.EnqueueBatchRequest(requests=requests))
        return [r.job.id for r in response.responses]

    return call


async def open_loop(address: str, rate: float, seconds: float, channel_count: int = 8) -> Calls:
    """Enqueue at a fixed rate regardless of answers (calls spread over ``channel_count``)."""
    made = await channels(address, channel_count)
    stubs = [stub(channel) for channel in made]
    result = Calls()

    async def one(n: int) -> None:
        started = time.monotonic()
        try:
            response = await stubs[n % len(stubs)].Enqueue(enqueue_request(n))
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
            return
        result.latencies.append(time.monotonic() - started)
        result.job_ids.append(response.job.id)

    tasks = []
    began = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = began + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - began
    for channel in made:
        await channel.close()
    return result


async def get_status_latencies(address: str, job_id: str, calls: int) -> list[float]:
    (channel,) = await channels(address, 1)
    client = stub(channel)
    latencies = []
    for _ in range(calls):
        started = time.monotonic()
        response = await client.GetStatus(pb.GetStatusRequest(job_id=job_id))
        latencies.append(time.monotonic() - started)
        assert response.job.state == jobs_pb2.JOB_STATE_COMPLETED
    await channel.close()
    return latencies


# -- the run --------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, dsn: str) -> None:
        self.args = args
        self.dsn = dsn
        self.results: list[dict[str, Any]] = []
        self.service: Service | None = None

    def emit(self, result: dict[str, Any]) -> dict[str, Any]:
        result["load"] = load_average()
        self.results.append(result)
        print(json.dumps(result), flush=True)
        return result

    def meter(self) -> CpuMeter:
        assert self.service is not None
        return CpuMeter(self.service.pids)

    def drain(self, phase: str) -> dict[str, Any]:
        waited, states = drain(self.dsn, self.args.drain_timeout)
        left = sum(states.get(s, 0) for s in UNFINISHED)
        if left:
            print(f"# {phase}: {left} jobs still unfinished after {waited:.0f} s", flush=True)
        return {"drain_s": round(waited, 1), "unfinished_after_drain": left}

    def calls_result(self, phase: str, calls: Calls, cpu: dict[str, int]) -> dict[str, Any]:
        jobs = len(calls.job_ids)
        # Whole seconds of the window only (the last one is cut short); meaningless when a
        # call takes longer than a second (batches under load).
        full = [calls.per_second[s] for s in range(int(calls.seconds))]
        if pct(calls.latencies, 0.5) > 0.5:
            full = []
        return {
            "phase": phase,
            "calls": len(calls.latencies),
            "jobs": jobs,
            "seconds": round(calls.seconds, 1),
            "jobs_per_s": round(jobs / calls.seconds),
            "median_second_jobs_per_s": round(statistics.median(full)) if full else None,
            "p50_ms": ms(pct(calls.latencies, 0.5)),
            "p99_ms": ms(pct(calls.latencies, 0.99)),
            "errors": dict(calls.errors),
            "cpu_pct": cpu,
            "cpu_ms_per_job": cpu_per_job(cpu, jobs / calls.seconds),
        }

    # -- phases -----------------------------------------------------------------------------

    def phase_insert(self) -> None:
        for connections in (1, 8):
            runs = []
            busy0, total0 = _machine_cpu()
            for _ in range(self.args.repeat):
                runs.append(raw_insert(self.dsn, connections, self.args.insert_seconds))
            busy1, total1 = _machine_cpu()
            self.emit(
                {
                    "phase": f"insert-{connections}",
                    "connections": connections,
                    "jobs_per_s": round(statistics.median(runs)),
                    "runs": [round(r) for r in runs],
                    "cpu_pct": {"machine": round(100 * (busy1 - busy0) / (total1 - total0))},
                }
            )
        admin(self.dsn, "TRUNCATE job_logs CASCADE")

    async def phase_status(self, job_id: str) -> None:
        runs = []
        with self.meter() as meter:
            for _ in range(self.args.repeat):
                runs.append(
                    await get_status_latencies(self.address, job_id, self.args.status_calls)
                )
        self.emit(
            {
                "phase": "status",
                "calls": sum(len(r) for r in runs),
                "p50_ms": ms(statistics.median(pct(r, 0.5) for r in runs)),
                "p99_ms": ms(statistics.median(pct(r, 0.99) for r in runs)),
                "calls_per_s": round(sum(len(r) for r in runs) / sum(sum(r) for r in runs)),
                "cpu_pct": meter.result,
            }
        )

    async def phase_steady(self) -> None:
        for rate in self.args.steady_rates:
            await self.steady(rate)

    async def steady(self, rate: float) -> None:
        name = f"steady-{rate:g}"
        with self.meter() as meter:
            calls = await open_loop(self.address, rate, self.args.steady_seconds)
        extra = self.drain(name)
        latency = start_latencies(self.dsn, calls.job_ids)
        self.emit(
            {
                "phase": name,
                "rate_per_s": rate,
                "jobs": len(calls.job_ids),
                "started": len(latency["start"]),
                "start_p50_ms": ms(pct(latency["start"], 0.5)),
                "start_p99_ms": ms(pct(latency["start"], 0.99)),
                "completed_p50_ms": ms(pct(latency["completed"], 0.5)),
                "completed_p99_ms": ms(pct(latency["completed"], 0.99)),
                "published_p50_ms": ms(pct(latency["published"], 0.5)),
                "enqueue_p50_ms": ms(pct(calls.latencies, 0.5)),
                "enqueue_p99_ms": ms(pct(calls.latencies, 0.99)),
                "errors": dict(calls.errors),
                "cpu_pct": meter.result,
                **extra,
            }
        )

    async def phase_enqueue(self) -> None:
        assert self.service is not None
        for clients in self.args.clients:
            name = f"enqueue-{clients}"
            seconds = self.args.enqueue_seconds
            with (
                profiled(self.service, name, seconds, self.profile_dir(name)),
                self.meter() as meter,
            ):
                calls = await closed_loop(self.address, clients, seconds, call_enqueue)
            result = self.calls_result(name, calls, meter.result)
            result["clients"] = clients
            insert = self.find("insert-8")
            if insert and clients == 8:
                result["share_of_insert"] = round(result["jobs_per_s"] / insert["jobs_per_s"], 2)
            result.update(self.drain(name))
            self.emit(result)

    async def phase_batch(self) -> None:
        assert self.service is not None
        args = self.args
        with (
            profiled(self.service, "batch", args.batch_seconds, self.profile_dir("batch")),
            self.meter() as meter,
        ):
            calls = await closed_loop(
                self.address, args.batch_clients, args.batch_seconds, call_batch(args.batch_size)
            )
        result = self.calls_result("batch", calls, meter.result)
        result.update(batch_size=args.batch_size, clients=args.batch_clients)
        result.update(self.drain("batch"))
        self.emit(result)

    async def phase_e2e(self) -> None:
        assert self.service is not None
        args = self.args
        with (
            profiled(self.service, "e2e", args.e2e_seconds, self.profile_dir("e2e")),
            self.meter() as meter,
        ):
            calls = await closed_loop(
                self.address, args.e2e_clients, args.e2e_seconds, call_enqueue
            )
        with self.meter() as drain_meter:
            extra = self.drain("e2e")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            first, last, completed = conn.execute(
                "SELECT min(created_at), max(completed_at), count(*) FILTER "
                "(WHERE state = 'completed') FROM job_logs WHERE id = ANY(%s)",
                ([uuid.UUID(i) for i in calls.job_ids],),
            ).fetchone() or (None, None, 0)
        span = (last - first).total_seconds() if first and last else float("nan")
        self.emit(
            {
                "phase": "e2e",
                "clients": args.e2e_clients,
                "jobs": len(calls.job_ids),
                "completed": completed,
                "enqueued_per_s": round(len(calls.job_ids) / calls.seconds),
                "completed_per_s": round(completed / span) if span else None,
                "span_s": round(span, 1),
                "enqueue_p50_ms": ms(pct(calls.latencies, 0.5)),
                "enqueue_p99_ms": ms(pct(calls.latencies, 0.99)),
                "errors": dict(calls.errors),
                "cpu_pct": meter.result,
                "cpu_ms_per_job": cpu_per_job(meter.result, len(calls.job_ids) / calls.seconds),
                "cpu_pct_drain": drain_meter.result,
                **extra,
            }
        )

    # -- helpers ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        assert self.service is not None
        return self.service.grpc_address

    def find(self, phase: str) -> dict[str, Any] | None:
        return next((r for r in self.results if r["phase"] == phase), None)

    def profile_dir(self, phase: str) -> Path | None:
        if self.args.profile is None or phase not in self.args.profile_phases:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        return Path(self.args.profile)

    async def first_completed_job(self) -> str:
        (channel,) = await channels(self.address, 1)
        client = stub(channel)
        job_id = (await client.Enqueue(enqueue_request(0))).job.id

        async def completed() -> None:
            async for update in client.WatchJob(pb.WatchJobRequest(job_id=job_id)):
                if update.job.state == jobs_pb2.JOB_STATE_COMPLETED:
                    return
            raise RuntimeError(f"job {job_id} ended without completing")

        await asyncio.wait_for(completed(), 60)
        await channel.close()
        return str(job_id)

    async def service_phases(self, phases: list[str]) -> None:
        # Warm up: connections, pools, code paths; then an empty log.
        job_id = await self.first_completed_job()
        await closed_loop(self.address, 8, 1.0, call_enqueue)
        self.drain("warm-up")
        if "status" in phases:
            await self.phase_status(job_id)
        for name in ("steady", "enqueue", "batch", "e2e"):
            if name in phases:
                await getattr(self, f"phase_{name}")()


def table(results: list[dict[str, Any]]) -> str:
    rows = [("phase", "result", "latency p50/p99 ms", "cpu% client/service/pg/machine", "load")]
    for r in results:
        phase = r["phase"]
        if phase.startswith("insert"):
            value = f"{r['jobs_per_s']} rows/s"
        elif phase == "status":
            value = f"{r['calls_per_s']} calls/s"
        elif phase.startswith("steady"):
            value = f"start {r['start_p50_ms']}/{r['start_p99_ms']} @{r['rate_per_s']:g}/s"
        elif phase == "e2e":
            value = f"{r['completed_per_s']} completed/s (fed {r['enqueued_per_s']}/s)"
        else:
            value = f"{r['jobs_per_s']} jobs/s"
            if "share_of_insert" in r:
                value += f" ({100 * r['share_of_insert']:.0f}% of INSERT)"
        if phase.startswith("steady"):
            latency = f"done {r['completed_p50_ms']}/{r['completed_p99_ms']}"
        elif "p50_ms" in r:
            latency = f"{r['p50_ms']}/{r['p99_ms']}"
        else:
            latency = ""
        cpu = r.get("cpu_pct", {})
        cpus = "/".join(str(cpu.get(k, "-")) for k in ("client", "service", "postgres", "machine"))
        rows.append((phase, value, latency, cpus, r["load"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    for (phase, metric), (op, bound, label) in TARGETS.items():
        found = next((r for r in results if r["phase"] == phase), None)
        if found is None or found.get(metric) is None:
            continue
        value = found[metric]
        met = value >= bound if op == ">=" else value < bound
        lines.append(f"{'MET   ' if met else 'MISSED'}  {label}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="jobsvc-bench-"))
    started = time.strftime("%H:%M:%S")
    print(
        f"# {started} layout={args.layout} broker={args.broker} load={load_average()} "
        f"logs={workdir}",
        flush=True,
    )
    with fresh_database(args.postgres_admin_url, "jobsvc_bench") as dsn:
        bench = Run(args, dsn)
        migrate(dsn)
        if "insert" in args.phases:
            bench.phase_insert()
        service_phases = [p for p in args.phases if p != "insert"]
        if service_phases:
            bench.service = start_service(args.layout, args.broker, dsn, workdir)
            print(f"# service pids {bench.service.pids}", flush=True)
            try:
                asyncio.run(bench.service_phases(service_phases))
            finally:
                bench.service.stop()
                for state in workdir.glob("qstash.sqlite3*"):  # the logs stay
                    state.unlink()
    print()
    print(table(bench.results))
    print(f"# {time.strftime('%H:%M:%S')} done, load={load_average()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "summarize"])
    parser.add_argument("files", nargs="*", type=Path, help="summarize: py-spy raw profiles")
    parser.add_argument("--layout", choices=["serve", "split"], default="serve")
    parser.add_argument(
        "--broker",
        choices=["local", "inline"],
        default="local",
        help="JOBSVC_BROKER; inline runs each handler inside Enqueue (no HTTP hops)",
    )
    parser.add_argument(
        "--phases",
        default="insert,status,steady,enqueue,batch,e2e",
        type=lambda s: s.split(","),
        help="comma-separated subset of insert,status,steady,enqueue,batch,e2e",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of insert and status")
    parser.add_argument("--insert-seconds", type=float, metavar="S", default=2.0, help="per run")
    parser.add_argument("--status-calls", type=int, default=500, help="per run")
    parser.add_argument(
        "--steady-rates",
        default=[20.0, 200.0],
        type=lambda s: [float(r) for r in s.split(",")],
        metavar="JOBS_PER_S,...",
        help="one steady phase per rate (the target is at 200/s; 20/s shows the unloaded latency)",
    )
    parser.add_argument("--steady-seconds", type=float, metavar="S", default=8)
    parser.add_argument(
        "--clients", default=[1, 8, 32], type=lambda s: [int(c) for c in s.split(",")]
    )
    parser.add_argument("--enqueue-seconds", type=float, metavar="S", default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--batch-seconds", type=float, metavar="S", default=3)
    parser.add_argument("--e2e-clients", type=int, default=16)
    parser.add_argument("--e2e-seconds", type=float, metavar="S", default=10)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        default=180,
        help="longest wait for the backlog after a phase",
    )
    parser.add_argument("--profile", type=Path, help="write py-spy profiles to this directory")
    parser.add_argument(
        "--profile-phases",
        default="enqueue-8,batch,e2e",
        type=lambda s: s.split(","),
        help="phases to profile with --profile",
    )
    parser.add_argument("--postgres-admin-url", default="postgresql://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.broker == "inline" and args.layout == "split":
        parser.error("the inline broker runs handlers inside the gRPC process: --layout serve")
    if args.mode == "summarize":
        for path in args.files:
            print(summarize(path))
        return
    run(args)


if __name__ == "__main__":
    main()
