"""A port that is already taken stops ``jobsvc serve``, ``rpc``, ``sidecar`` and ``qstash-dev``
before they open the database: one line names the address, the part and the setting that moves
it, and nothing is created or migrated. Each case is a real process against a real socket held
open by the test; they run at once, since each costs a Python start-up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from jobsvc.db.engine import normalize_url


@contextlib.contextmanager
def _listening() -> Iterator[int]:
    """A port a real server holds: bound and listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _jobsvc(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("JOBSVC_")}
    return subprocess.run(
        [sys.executable, "-m", "jobsvc", *args],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def _tables(url: str) -> list[str]:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return []
    engine = create_engine(normalize_url(url))
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_busy_port_is_named_before_the_database_is_touched(
    empty_database_url: str, tmp_path: Path
) -> None:
    free = {
        "JOBSVC_GRPC_PORT": "0",
        "JOBSVC_SIDECAR_PORT": "0",
        "JOBSVC_QSTASH_DEV_PORT": "0",
        "JOBSVC_DATABASE_URL": empty_database_url,
        "JOBSVC_QSTASH_DEV_DATABASE_URL": empty_database_url,
    }
    with _listening() as taken, ThreadPoolExecutor(max_workers=5) as pool:
        address = f"127.0.0.1:{taken}"
        cases = {
            "serve": (
                ["serve"],
                {"JOBSVC_SIDECAR_PORT": str(taken)},
                f"jobsvc serve: cannot listen on {address} (sidecar): address already in use; "
                "set JOBSVC_SIDECAR_PORT\n",
            ),
            "serve-local-qstash": (
                ["serve"],
                {"JOBSVC_QSTASH_DEV_PORT": str(taken)},
                f"jobsvc serve: cannot listen on {address} (local QStash server): address "
                "already in use; set JOBSVC_QSTASH_DEV_PORT\n",
            ),
            "rpc": (
                ["rpc"],
                {"JOBSVC_GRPC_PORT": str(taken)},
                f"jobsvc rpc: cannot listen on {address} (gRPC): address already in use; "
                "set JOBSVC_GRPC_PORT\n",
            ),
            "sidecar": (
                ["sidecar"],
                {"JOBSVC_SIDECAR_PORT": str(taken)},
                f"jobsvc sidecar: cannot listen on {address} (sidecar): address already in "
                "use; set JOBSVC_SIDECAR_PORT\n",
            ),
            "qstash-dev": (
                ["qstash-dev", "--port", str(taken), "--database-url", empty_database_url],
                {},
                f"jobsvc qstash-dev: cannot listen on {address} (local QStash server): address "
                "already in use; set --port or JOBSVC_QSTASH_DEV_PORT\n",
            ),
        }
        futures = {
            name: pool.submit(_jobsvc, *args, env=free | env, cwd=tmp_path)
            for name, (args, env, _) in cases.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    for name, (_, _, message) in cases.items():
        result = results[name]
        assert (result.returncode, result.stdout, result.stderr) == (1, "", message), name
    assert _tables(empty_database_url) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no SQLite file, no outbox


@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_two_parts_given_one_port_are_refused(empty_database_url: str, tmp_path: Path) -> None:
    with _listening() as port:  # a port that was free a moment ago
        pass
    result = _jobsvc(
        "serve",
        env={
            "JOBSVC_DATABASE_URL": empty_database_url,
            "JOBSVC_GRPC_PORT": str(port),
            "JOBSVC_SIDECAR_PORT": str(port),
            "JOBSVC_QSTASH_DEV_PORT": "0",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 1, result
    assert result.stderr == (
        f"jobsvc serve: cannot listen on 127.0.0.1:{port} (sidecar): address already in use; "
        "set JOBSVC_SIDECAR_PORT\n"
    )
    assert _tables(empty_database_url) == []
