"""``jobsvc serve`` (everything in one process, zero configuration), ``jobsvc rpc`` and
``jobsvc sidecar`` (one part each, for production)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from jobsvc.cli.ports import Listener, unavailable
from jobsvc.cli.process import fail, run_async, safe_url
from jobsvc.errors import JobServiceError
from jobsvc.settings import BrokerKind, Settings

_HELP = {
    "serve": (
        "run the gRPC API, the webhook sidecar, the relay and (with the default local broker) "
        "the local QStash server in one process; the database is migrated first"
    ),
    "rpc": "run the gRPC API and the relay (production: the database must be migrated)",
    "sidecar": "run the webhook sidecar that QStash delivers to (production)",
}


def add_parser(commands: Any) -> None:
    for name, help_text in _HELP.items():
        parser = commands.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ". Configured by JOBSVC_* and "
            "QSTASH_* environment variables (see the README).",
        )
        parser.set_defaults(part=name)


def run(args: argparse.Namespace) -> int:
    command = args.part
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return fail(command, str(exc), 2)
    busy = unavailable(_listeners(settings, command))
    if busy is not None:  # said before the database is opened, migrated or written
        return fail(command, busy)
    try:
        run_async(_serve(settings, command))
    except OSError as exc:
        return fail(command, f"cannot listen: {exc.strerror or exc}")
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return fail(
            command, f"cannot open the database {safe_url(settings.database_url)}: {reason}"
        )
    except JobServiceError as exc:
        return fail(command, exc.message)
    except Exception as exc:  # NotMigrated and start-up failures: one readable line
        return fail(command, str(exc) or type(exc).__name__)
    return 0


def _listeners(settings: Settings, command: str) -> list[Listener]:
    listeners = []
    if command in ("serve", "rpc"):
        listeners.append(
            Listener("gRPC", settings.grpc_host, settings.grpc_port, "JOBSVC_GRPC_PORT")
        )
    if command in ("serve", "sidecar"):
        listeners.append(
            Listener("sidecar", settings.sidecar_host, settings.sidecar_port, "JOBSVC_SIDECAR_PORT")
        )
    if command == "serve" and settings.broker is BrokerKind.LOCAL:
        local = settings.local_qstash
        listeners.append(
            Listener("local QStash server", local.host, local.port, "JOBSVC_QSTASH_DEV_PORT")
        )
    return listeners


async def _serve(settings: Settings, command: str) -> None:
    from jobsvc.runtime import running

    sys.setswitchinterval(0.0005)  # see jobsvc.cli.qstash_dev: writer threads and the GIL
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    everything = command == "serve"
    async with running(
        settings,
        rpc=command in ("serve", "rpc"),
        sidecar=command in ("serve", "sidecar"),
        relay=command in ("serve", "rpc"),
        embed_local_qstash=everything and settings.broker is BrokerKind.LOCAL,
        migrate=everything,
    ) as parts:
        lines = [f"jobsvc {command} is running"]
        if parts.rpc_port is not None:
            lines.append(f"gRPC JobService: {settings.grpc_host}:{parts.rpc_port}")
        if parts.sidecar is not None:
            lines.append(f"webhook sidecar: http://{settings.sidecar_host}:{parts.sidecar.port}")
            lines.append(f"QStash delivers to: {settings.sidecar_url}/api/jobs/{{type}}")
        if parts.local_qstash_url is not None:
            lines.append(f"local QStash server: {parts.local_qstash_url}")
        lines.append(f"broker: {settings.broker.value}")
        lines.append(f"database: {safe_url(settings.database_url)}")
        print("\n".join(lines), flush=True)
        await stop.wait()
