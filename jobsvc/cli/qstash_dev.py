"""``jobsvc qstash-dev``: the local QStash-compatible server on its own."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from jobsvc.cli.ports import Listener, unavailable
from jobsvc.cli.process import fail, run_async, safe_url
from jobsvc.localqstash.settings import LocalQStashSettings


def add_parser(commands: Any) -> None:
    dev = commands.add_parser(
        "qstash-dev",
        help="run the local QStash-compatible server",
        description=(
            "Run the local QStash-compatible server. Every option also reads an environment "
            "variable (JOBSVC_QSTASH_DEV_HOST, _PORT, _DATABASE_URL, _TOKEN, "
            "_CURRENT_SIGNING_KEY, _NEXT_SIGNING_KEY, _TIME_SCALE)."
        ),
    )
    dev.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="port to listen on, 0 for any (default 8080)")
    dev.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the state (default sqlite:///jobsvc-qstash.sqlite3)",
    )
    dev.add_argument("--token", help="accept this token instead of the four public dev users")
    dev.add_argument("--current-signing-key", help="signing key for --token")
    dev.add_argument("--next-signing-key", help="next signing key for --token")
    dev.add_argument(
        "--time-scale",
        type=float,
        help="multiply every delay and backoff by this factor (tests use e.g. 0.001)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = LocalQStashSettings.from_env(
            host=args.host,
            port=args.port,
            database_url=args.database_url,
            token=args.token,
            current_signing_key=args.current_signing_key,
            next_signing_key=args.next_signing_key,
            time_scale=args.time_scale,
        )
    except ValueError as exc:
        return fail("qstash-dev", str(exc), 2)
    listener = Listener(
        "local QStash server", settings.host, settings.port, "--port or JOBSVC_QSTASH_DEV_PORT"
    )
    busy = unavailable([listener])
    if busy is not None:  # said before the database is opened or migrated
        return fail("qstash-dev", busy)
    try:
        run_async(_serve(settings))
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        reason = exc.strerror or exc
        print(f"jobsvc qstash-dev: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    # ImportError: a dialect whose driver is not installed (e.g. mysql:// without MySQLdb).
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        print(
            f"jobsvc qstash-dev: cannot open the database {safe_url(settings.database_url)}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(settings: LocalQStashSettings) -> None:
    # The store's writer thread competes for the GIL; a short switch interval keeps the event
    # loop from waiting behind it for the default 5 ms after every system call.
    from jobsvc.localqstash import LocalQStashServer, banner

    sys.setswitchinterval(0.0005)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalQStashServer(settings) as server:
        print(banner(server), flush=True)
        await stop.wait()
