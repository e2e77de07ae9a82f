"""The ``jobsvc qstash-dev`` process: crash durability, graceful stop, CLI errors, env settings.

Every server here is a real subprocess (``python -m jobsvc qstash-dev``), found through the
``QSTASH_URL=`` line of its banner, so SIGKILL and SIGTERM hit the real process.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from qstash import QStash
from qstash.log import LogState
from qstash.message import BatchResponse, PublishResponse

from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 30.0
DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
DEV_CURRENT_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEV_NEXT_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


@dataclass
class DevServer:
    """One ``jobsvc qstash-dev`` process and what its banner said."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    banner: dict[str, str] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)
    clients: list[QStash] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.banner["QSTASH_URL"]

    @property
    def token(self) -> str:
        return self.banner["QSTASH_TOKEN"]

    def client(self) -> QStash:
        # No client-side retries: a request to a killed server must fail at once.
        client = QStash(self.token, base_url=self.url, retry=False)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close the SDK clients' connection pools (the SDK has no public close)."""
        for client in self.clients:
            client.http._client.close()
        self.clients.clear()

    def receiver(self, make_receiver: ReceiverFactory) -> Receiver:
        return make_receiver(
            current_signing_key=self.banner["QSTASH_CURRENT_SIGNING_KEY"],
            next_signing_key=self.banner["QSTASH_NEXT_SIGNING_KEY"],
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` and wait; return (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"the server did not exit within {timeout}s of signal {sig}; "
                f"stderr:\n{self.stderr()}"
            )
        return code, time.monotonic() - started


@dataclass
class Spawned:
    """A finished ``jobsvc`` run that was expected to fail."""

    returncode: int
    stdout: str
    stderr: str


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobsvc", "qstash-dev", *args]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSVC_QSTASH_DEV_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_dev_server(
    args: list[str],
    stderr_path: Path,
    *,
    env: dict[str, str] | None = None,
    deadline_seconds: float = STARTUP_SECONDS,
) -> DevServer:
    """Start the CLI and wait (with a deadline) for the ``QSTASH_URL=`` line of its banner.

    stdout is drained by a thread for the life of the process and stderr goes to a file, so a
    chatty server can never block on a full pipe. On failure the test fails with its stderr.
    """
    stderr_file = stderr_path.open("w")
    try:
        proc = subprocess.Popen(
            _command(*args),
            cwd=ROOT,
            env=_clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
    finally:
        stderr_file.close()
    server = DevServer(proc=proc, stderr_path=stderr_path)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def drain() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed here, at EOF, when the process has exited
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name=f"dev-server-stdout-{proc.pid}", daemon=True).start()
    deadline = time.monotonic() + deadline_seconds
    while "QSTASH_URL" not in server.banner:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.0, remaining)) if remaining > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            why = (
                f"exited with code {proc.poll()}"
                if proc.poll() is not None
                else f"printed no QSTASH_URL= line within {deadline_seconds}s"
            )
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pytest.fail(
                f"`{' '.join(_command(*args))}` {why}.\nstdout:\n{''.join(server.stdout_lines)}"
                f"\nstderr:\n{server.stderr()}",
                pytrace=False,
            )
        server.stdout_lines.append(line)
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("QSTASH_"):
            server.banner[name] = value
    # The whole banner is printed in one flush; take the rest of it without waiting long.
    while len(server.banner) < 4:
        try:
            line = lines.get(timeout=2.0)
        except queue.Empty:
            break
        if line is None:
            break
        server.stdout_lines.append(line)
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("QSTASH_"):
            server.banner[name] = value
    return server


def run_dev_server_expecting_failure(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 30.0
) -> Spawned:
    try:
        done = subprocess.run(
            _command(*args),
            cwd=ROOT,
            env=_clean_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`jobsvc qstash-dev {' '.join(args)}` kept running: {exc.stderr!r}")
    return Spawned(done.returncode, done.stdout, done.stderr)


StartServer = Callable[..., DevServer]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[StartServer]:
    """``spawn(database_url, *more_args, env=...)`` starts a dev server process on port 0 with
    time scale 0.01; every process still running at teardown is killed."""
    servers: list[DevServer] = []
    counter = iter(range(1000))

    def start(database_url: str | None, *more: str, env: dict[str, str] | None = None) -> DevServer:
        args = ["--port", "0", "--time-scale", "0.01"]
        if database_url is not None:
            args += ["--database-url", database_url]
        args += list(more)
        server = start_dev_server(args, tmp_path / f"server-{next(counter)}.stderr", env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close_clients()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _published_id(result: object) -> str:
    assert isinstance(result, PublishResponse), result
    return result.message_id


def _message_ids(deliveries: list[Delivery]) -> dict[str, list[Delivery]]:
    by_id: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_id.setdefault(delivery.headers.get("upstash-message-id", ""), []).append(delivery)
    return by_id


def _wait_until(
    what: str, check: Callable[[], bool], timeout: float, why: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}. {why()}")
        time.sleep(0.02)


class _Publisher(threading.Thread):
    """Publishes to one URL as fast as it can until the server stops answering."""

    def __init__(self, client: QStash, url: str) -> None:
        super().__init__(name="burst-publisher", daemon=True)
        self.client = client
        self.url = url
        self.accepted: list[str] = []
        self.error: BaseException | None = None
        self.error_at = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set() and n < 5000:
            try:
                result = self.client.message.publish_json(url=self.url, body={"n": n})
            except BaseException as exc:
                self.error, self.error_at = exc, time.monotonic()
                return
            self.accepted.append(_published_id(result))
            n += 1


# -- SIGKILL ---------------------------------------------------------------------------------


def test_sigkill_mid_delivery_loses_no_accepted_message(
    database_url: str, spawn: StartServer, make_receiver: ReceiverFactory
) -> None:
    first = spawn(database_url)
    rx = first.receiver(make_receiver)
    rx.respond("/slow", Response(delay_seconds=5.0))
    rx.respond("/fail", Response(status=500, body="nope"))
    client = first.client()

    # A schedule firing every (scaled) minute: every 0.6 s.
    schedule_id = client.schedule.create(destination=rx.url_for("/sched"), cron="* * * * *")

    # A DLQ entry: one attempt, answered 500.
    failed_id = _published_id(
        client.message.publish_json(url=rx.url_for("/fail"), body={"kind": "fail"}, retries=0)
    )
    dlq_ids: list[str] = []

    def in_dlq() -> bool:
        dlq_ids[:] = [m.dlq_id for m in client.dlq.list().messages if m.message_id == failed_id]
        return bool(dlq_ids)

    _wait_until("the failed message is in the DLQ", in_dlq, timeout=10)

    # Pending: 300 s of delay is 3 s on this clock.
    delayed_from = time.time()
    delayed_ids = [
        _published_id(
            client.message.publish_json(url=rx.url_for("/delayed"), body={"i": i}, delay="300s")
        )
        for i in range(3)
    ]

    # In flight: the receiver holds each of these for 5 s (one batch, so they start together).
    batch = client.message.batch_json(
        [{"url": rx.url_for("/slow"), "body": {"i": i}} for i in range(20)]
    )
    slow_ids = [entry.message_id for entry in batch if isinstance(entry, BatchResponse)]
    assert len(slow_ids) == 20
    burst = _Publisher(first.client(), rx.url_for("/burst"))
    burst.start()
    arrived = rx.wait_for(20, path="/slow", timeout=10)
    assert set(_message_ids(arrived)) == set(slow_ids)
    _wait_until(
        "the burst publisher had 10 messages accepted", lambda: len(burst.accepted) >= 10, 10
    )

    # Everything is where it should be at the moment of the crash.
    assert all(d.responded_at is None for d in rx.deliveries("/slow")), "not in flight any more"
    assert rx.deliveries("/delayed") == [], "the delayed messages were not pending any more"
    killed_at = time.monotonic()
    code, _ = first.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    burst.join(10)
    assert not burst.is_alive()
    assert burst.error is not None
    assert burst.error_at >= killed_at, f"the publisher failed before the kill: {burst.error!r}"
    first.close_clients()
    accepted_burst = list(burst.accepted)
    assert len(accepted_burst) >= 10

    rx.respond("/slow")  # answer at once from now on
    restarted_at = time.monotonic()
    second = spawn(database_url)
    client2 = second.client()

    def everything_delivered() -> bool:
        slow = _message_ids(rx.deliveries("/slow"))
        burst_seen = _message_ids(rx.deliveries("/burst"))
        delayed = _message_ids(rx.deliveries("/delayed"))
        return (
            all(len(slow.get(mid, [])) >= 2 for mid in slow_ids)
            and all(mid in burst_seen for mid in accepted_burst)
            and all(mid in delayed for mid in delayed_ids)
        )

    def missing() -> str:
        slow = _message_ids(rx.deliveries("/slow"))
        burst_seen = _message_ids(rx.deliveries("/burst"))
        delayed = _message_ids(rx.deliveries("/delayed"))
        return (
            f"in flight, not attempted again: {[m for m in slow_ids if len(slow.get(m, [])) < 2]}; "
            f"accepted, never delivered: {[m for m in accepted_burst if m not in burst_seen]}; "
            f"delayed, never delivered: {[m for m in delayed_ids if m not in delayed]}; "
            f"server stderr:\n{second.stderr()}"
        )

    _wait_until(
        "every accepted message was delivered after the restart", everything_delivered, 20, missing
    )

    # The in-flight ones were attempted again by the new process, correctly signed.
    slow = _message_ids(rx.deliveries("/slow"))
    assert set(slow) == set(slow_ids)
    for mid in slow_ids:
        first_attempt, *again = slow[mid]
        assert first_attempt.received_at < killed_at
        assert any(d.received_at > restarted_at for d in again), mid
        assert all(d.signature_ok for d in slow[mid]), [d.signature_error for d in slow[mid]]
        assert all(d.json() == first_attempt.json() for d in again)

    # Accepted means durable: every publish that was answered is delivered, signed.
    burst_seen = _message_ids(rx.deliveries("/burst"))
    assert set(accepted_burst) <= set(burst_seen)
    assert all(d.signature_ok for d in rx.deliveries("/burst"))

    # The delayed messages kept their due time (not due again from the restart, not lost).
    delayed = rx.deliveries("/delayed")
    assert set(_message_ids(delayed)) == set(delayed_ids)
    assert min(d.received_unix for d in delayed) >= delayed_from + 3.0 - 0.05
    assert all(d.signature_ok for d in delayed)

    # The schedule survived and fires from the new process.
    schedule = client2.schedule.get(schedule_id)
    assert schedule.schedule_id == schedule_id
    assert schedule.cron == "* * * * *"
    assert schedule.destination == rx.url_for("/sched")

    def fired_again() -> bool:
        return any(
            d.received_at > restarted_at and d.headers.get("upstash-schedule-id") == schedule_id
            for d in rx.deliveries("/sched")
        )

    _wait_until("the schedule fired after the restart", fired_again, timeout=10)

    # The DLQ entry survived, and its message stays failed: no new attempt.
    entries = [m for m in client2.dlq.list().messages if m.message_id == failed_id]
    assert [m.dlq_id for m in entries] == dlq_ids
    assert entries[0].response_status == 500
    assert entries[0].url == rx.url_for("/fail")
    assert client2.dlq.get(dlq_ids[0]).message_id == failed_id
    assert len(rx.deliveries("/fail")) == 1
    assert "Traceback" not in second.stderr()


# -- SIGTERM ---------------------------------------------------------------------------------


def test_sigterm_finishes_the_running_attempt_and_exits_zero(
    database_url: str, spawn: StartServer, make_receiver: ReceiverFactory
) -> None:
    server = spawn(database_url)
    rx = server.receiver(make_receiver)
    rx.respond("/inflight", Response(delay_seconds=1.0))
    client = server.client()
    message_id = _published_id(client.message.publish_json(url=rx.url_for("/inflight"), body={}))
    [delivery] = rx.wait_for(1, path="/inflight", timeout=10)

    code, took = server.stop(signal.SIGTERM)
    assert code == 0, server.stderr()
    assert took < 5.0
    # The attempt in flight was allowed to finish before the process exited.
    assert delivery.responded_at is not None
    assert "Traceback" not in server.stderr()

    # ... and its outcome was recorded: the next process does not deliver it again.
    again = spawn(database_url)
    client2 = again.client()
    states = [log.state for log in client2.log.list(filter={"message_id": message_id}).logs]
    assert LogState.DELIVERED in states
    marker = _published_id(client2.message.publish_json(url=rx.url_for("/marker"), body={}))
    [seen] = rx.wait_for(1, path="/marker", timeout=10)
    assert seen.headers["upstash-message-id"] == marker
    time.sleep(0.2)
    assert len(rx.deliveries("/inflight")) == 1

    code, _ = again.stop(signal.SIGINT)
    assert code == 0, again.stderr()


# -- CLI errors ------------------------------------------------------------------------------

# id -> (args, extra environment, texts stderr must contain, exit code). Each run costs a Python
# start-up (~1 s), so the module runs them all at once, concurrently, and each test checks one.
_FAILING_RUNS: dict[str, tuple[list[str], dict[str, str], list[str], int]] = {
    "port-in-use": (["--port", "{taken_port}"], {}, ["cannot listen on 127.0.0.1:{taken_port}"], 1),
    "unknown-dialect": (
        ["--port", "0", "--database-url", "nosuchdb://x"],
        {},
        ["cannot open the database nosuchdb://x", "nosuchdb"],
        1,
    ),
    # A dialect SQLAlchemy knows, whose driver is not installed.
    "missing-driver": (
        ["--port", "0", "--database-url", "mysql://x/y"],
        {},
        ["cannot open the database mysql://x/y", "MySQLdb"],
        1,
    ),
    "sqlite-memory": (
        ["--port", "0", "--database-url", "sqlite:///:memory:"],
        {},
        ["needs a file database"],
        1,
    ),
    "unreachable-postgresql": (
        ["--port", "0", "--database-url", "postgresql://who:s3cret-pw@127.0.0.1:{free_port}/x"],
        {},
        ["cannot open the database postgresql://who:***@127.0.0.1:{free_port}/x"],
        1,
    ),
    "time-scale-0": (["--port", "0", "--time-scale", "0"], {}, ["time_scale must be positive"], 2),
    "port-range": (["--port", "70000"], {}, ["port must be between 0 and 65535, not 70000"], 2),
    "env-not-a-number": (
        ["--port", "0"],
        {"JOBSVC_QSTASH_DEV_TIME_SCALE": "fast"},
        ["JOBSVC_QSTASH_DEV_TIME_SCALE must be a float: 'fast'"],
        2,
    ),
    "token-without-keys": (
        ["--port", "0", "--token", "t0ken"],
        {},
        ["needs both current_signing_key and next_signing_key"],
        2,
    ),
}


@dataclass
class _FailedRuns:
    results: dict[str, Spawned]
    ports: dict[str, int]
    settings_db: Path


@pytest.fixture(scope="module")
def failed_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_FailedRuns]:
    directory = tmp_path_factory.mktemp("cli")
    # Runs with bad settings (exit code 2) get a database of their own that must stay unmade.
    settings_db, other_db = directory / "settings.sqlite3", directory / "db.sqlite3"
    with socket.socket() as taken, socket.socket() as unused:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        ports = {"taken_port": taken.getsockname()[1], "free_port": unused.getsockname()[1]}

        def run(args: list[str], env: dict[str, str], code: int) -> Spawned:
            args = [a.format(**ports) for a in args]
            if "--database-url" not in args:
                db = settings_db if code == 2 else other_db
                args += ["--database-url", f"sqlite:///{db}"]
            return run_dev_server_expecting_failure(args, env=env)

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                name: pool.submit(run, args, env, code)
                for name, (args, env, _, code) in _FAILING_RUNS.items()
            }
            results = {name: future.result() for name, future in futures.items()}
        yield _FailedRuns(results, ports, settings_db)


@pytest.mark.parametrize("case", list(_FAILING_RUNS))
def test_cli_errors_are_readable_not_tracebacks(failed_runs: _FailedRuns, case: str) -> None:
    _, _, expected, code = _FAILING_RUNS[case]
    result = failed_runs.results[case]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "jobsvc qstash-dev: " in result.stderr, result.stderr
    for text in expected:
        assert text.format(**failed_runs.ports) in result.stderr, result.stderr
    assert "QSTASH_URL=" not in result.stdout
    assert "s3cret-pw" not in result.stderr  # a database password is never printed


def test_invalid_settings_are_rejected_before_the_database_is_touched(
    failed_runs: _FailedRuns,
) -> None:
    assert [name for name, run in failed_runs.results.items() if run.returncode == 2]
    assert not failed_runs.settings_db.exists()


def test_time_scale_that_is_not_a_number_is_an_argparse_error() -> None:
    result = run_dev_server_expecting_failure(["--port", "0", "--time-scale", "abc"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--time-scale: invalid float value: 'abc'" in result.stderr


# -- environment variables -------------------------------------------------------------------


def test_environment_variables_configure_the_server_without_flags(
    database_url: str, tmp_path: Path, make_receiver: ReceiverFactory
) -> None:
    env = {
        "JOBSVC_QSTASH_DEV_PORT": "0",
        "JOBSVC_QSTASH_DEV_DATABASE_URL": database_url,
        "JOBSVC_QSTASH_DEV_TIME_SCALE": "0.001",
    }
    server = start_dev_server([], tmp_path / "env.stderr", env=env)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        assert server.url == f"http://127.0.0.1:{port}"
        assert port not in (0, 8080)
        # The banner is the default dev user of `qstash-cli dev` (so the JS SDK's dev mode
        # adopts this server), and the keys API agrees with it.
        assert server.banner == {
            "QSTASH_URL": server.url,
            "QSTASH_TOKEN": DEV_TOKEN,
            "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_KEY,
            "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_KEY,
        }
        keys = server.client().signing_key.get()
        assert (keys.current, keys.next) == (DEV_CURRENT_KEY, DEV_NEXT_KEY)
        rx = server.receiver(make_receiver)
        client = server.client()
        # Time scale from the environment: a 10 minute delay takes 0.6 s.
        published = time.time()
        message_id = _published_id(
            client.message.publish_json(url=rx.url_for("/env"), body={}, delay="10m")
        )
        [delivery] = rx.wait_for(1, path="/env", timeout=10)
        assert delivery.headers["upstash-message-id"] == message_id
        assert 0.6 - 0.05 <= delivery.received_unix - published < 5.0
        schedule_id = client.schedule.create(destination=rx.url_for("/kept"), cron="0 0 1 1 *")
        code, _ = server.stop(signal.SIGTERM)
        assert code == 0, server.stderr()
    finally:
        server.close_clients()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()

    # The schedule went to the database named by the environment: a server given the same
    # database with flags (and a contradicting environment) sees it.
    flagged = start_dev_server(
        ["--port", "0", "--database-url", database_url, "--time-scale", "0.01"],
        tmp_path / "flags.stderr",
        env={"JOBSVC_QSTASH_DEV_PORT": "1", "JOBSVC_QSTASH_DEV_DATABASE_URL": "nosuchdb://x"},
    )
    try:
        assert [s.schedule_id for s in flagged.client().schedule.list()] == [schedule_id]
    finally:
        flagged.close_clients()
        code, _ = flagged.stop(signal.SIGTERM)
    assert code == 0, flagged.stderr()
