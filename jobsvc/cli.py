"""The ``jobsvc`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from jobsvc.db import DEFAULT_DATABASE_URL, create_database_engine, current_revision, upgrade
from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings, banner


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobsvc", description="Background jobs over QStash.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    migrate = commands.add_parser(
        "migrate",
        help="bring the job log's database to the current schema",
        description=(
            "Apply the job log's migrations up to the newest; a no-op on an up-to-date "
            "database. The URL also comes from JOBSVC_DATABASE_URL."
        ),
    )
    migrate.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL of the job log (default {DEFAULT_DATABASE_URL})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "qstash-dev":
        return _qstash_dev(args)
    if args.command == "migrate":
        return _migrate(args)
    return 2  # argparse rejects unknown commands before this


def _qstash_dev(args: argparse.Namespace) -> int:
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
        print(f"jobsvc qstash-dev: {exc}", file=sys.stderr)
        return 2
    try:
        _run(_serve(settings))
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        reason = exc.strerror or exc
        print(f"jobsvc qstash-dev: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    # ImportError: a dialect whose driver is not installed (e.g. mysql:// without MySQLdb).
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        print(
            f"jobsvc qstash-dev: cannot open the database {_safe_url(settings.database_url)}: "
            f"{exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    url = args.database_url or os.environ.get("JOBSVC_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        engine = create_database_engine(url)
    except (ArgumentError, ValueError) as exc:
        print(f"jobsvc migrate: bad database URL {_safe_url(url)}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a dialect whose driver is not installed
        print(f"jobsvc migrate: cannot open the database {_safe_url(url)}: {exc}", file=sys.stderr)
        return 1
    # Alembic narrates every step at INFO; the one line printed below says what happened.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except (SQLAlchemyError, CommandError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"jobsvc migrate: cannot migrate {_safe_url(url)}: {reason}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if before == after:
        print(f"jobsvc migrate: {_safe_url(url)} is up to date (revision {after})")
    else:
        print(f"jobsvc migrate: {_safe_url(url)} migrated from {before or 'empty'} to {after}")
    return 0


def _safe_url(url: str) -> str:
    """``url`` with its password masked, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


async def _serve(settings: LocalQStashSettings) -> None:
    # The store's writer thread competes for the GIL; a short switch interval keeps the event
    # loop from waiting behind it for the default 5 ms after every system call.
    sys.setswitchinterval(0.0005)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalQStashServer(settings) as server:
        print(banner(server), flush=True)
        await stop.wait()


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
