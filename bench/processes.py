"""The benchmarks' shared part: a fresh PostgreSQL database, and jobsvc started as separate
processes on this machine (``jobsvc serve``, or the production layout: ``jobsvc qstash-dev``,
``jobsvc sidecar`` and ``jobsvc rpc`` apart), each of which can be killed and started again on
the same ports with the same environment.

Each process writes its stdout to ``<workdir>/<name>.out`` and its log to ``<name>.log``; a
restart appends to both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
# name -> (jobsvc subcommand, what its stdout says once it serves)
PARTS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "is running"),
    "qstash-dev": ("qstash-dev", "QSTASH_URL="),
    "sidecar": ("sidecar", "is running"),
    "rpc": ("rpc", "is running"),
}
START_TIMEOUT_SECONDS = 60.0


# -- the database ---------------------------------------------------------------------------------


def admin(admin_url: str, sql: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def database_url(admin_url: str, database: str) -> str:
    """``admin_url`` with its database replaced by ``database``."""
    return f"{admin_url.rsplit('/', 1)[0]}/{database}"


def migrate(dsn: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "jobsvc", "migrate", "--database-url", dsn],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new database with a random name (``prefix`` + hex), dropped on the way out however
    the block ends; yields its URL."""
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(admin_url, f"CREATE DATABASE {database}")
    try:
        yield database_url(admin_url, database)
    finally:
        admin(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# -- the service ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Ports:
    grpc: int = field(default_factory=free_port)
    sidecar: int = field(default_factory=free_port)
    qstash: int = field(default_factory=free_port)


def service_env(
    broker: str,
    database_url: str,
    workdir: Path,
    ports: Ports,
    *,
    qstash_database_url: str | None = None,
) -> dict[str, str]:
    """The environment every process of one service gets. The local QStash server keeps its
    state in its own SQLite file unless ``qstash_database_url`` says otherwise."""
    return {
        "JOBSVC_BROKER": broker,
        "JOBSVC_DATABASE_URL": database_url,
        "JOBSVC_GRPC_PORT": str(ports.grpc),
        "JOBSVC_SIDECAR_PORT": str(ports.sidecar),
        "JOBSVC_QSTASH_DEV_PORT": str(ports.qstash),
        "JOBSVC_QSTASH_DEV_DATABASE_URL": (
            qstash_database_url or f"sqlite:///{workdir}/qstash.sqlite3"
        ),
        # The handlers' development adapters write what they would have sent here.
        "JOBSVC_OUTBOX_DIR": str(workdir / "outbox"),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Service:
    """jobsvc's processes by name (``PARTS``), started in the order given and stopped in the
    reverse order."""

    env: dict[str, str]
    workdir: Path
    grpc_address: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start part ``name`` and wait until it says it serves; ``RuntimeError`` (with the
        end of its log) if it exits or stays silent for ``START_TIMEOUT_SECONDS``."""
        command, marker = PARTS[name]
        out_path, log_path = self.workdir / f"{name}.out", self.workdir / f"{name}.log"
        offset = out_path.stat().st_size if out_path.exists() else 0
        with out_path.open("ab") as out, log_path.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobsvc", command],
                stdout=out,
                stderr=err,
                env={**os.environ, **self.env},
                cwd=ROOT,
            )
        self.processes[name] = proc
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with out_path.open("rb") as out:
                out.seek(offset)
                if marker in out.read().decode(errors="replace"):
                    return proc
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        log_tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"jobsvc {command} did not start:\n{log_tail}")

    def signal(self, name: str, signum: signal.Signals) -> None:
        self.processes[name].send_signal(signum)

    def kill(self, name: str) -> None:
        """SIGKILL part ``name`` and reap it."""
        proc = self.processes[name]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """Stop every process: SIGTERM (after SIGCONT, for one that was stopped), SIGKILL for
        one that has not exited 15 s later."""
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_service(
    layout: str,
    broker: str,
    database_url: str,
    workdir: Path,
    *,
    ports: Ports | None = None,
    extra_env: dict[str, str] | None = None,
    qstash_database_url: str | None = None,
) -> Service:
    """Start jobsvc in ``layout`` ``serve`` (one process) or ``split`` (``qstash-dev``,
    ``sidecar``, ``rpc``); on a failure to start, whatever started is stopped."""
    ports = ports or Ports()
    env = service_env(broker, database_url, workdir, ports, qstash_database_url=qstash_database_url)
    if layout == "split":
        env["QSTASH_URL"] = f"http://127.0.0.1:{ports.qstash}"
    env.update(extra_env or {})
    service = Service(env, workdir, f"127.0.0.1:{ports.grpc}")
    try:
        for name in ["serve"] if layout == "serve" else ["qstash-dev", "sidecar", "rpc"]:
            service.start(name)
    except BaseException:
        service.stop()
        raise
    return service
