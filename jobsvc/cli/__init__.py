"""The ``jobsvc`` command: one module per group of subcommands, each imported only when used,
so an operator command does not pay for starting servers it will not run."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

# subcommand -> module in this package that has add_parser(commands) and run(args) -> int
COMMANDS = {
    "serve": "serve",
    "rpc": "serve",
    "sidecar": "serve",
    "qstash-dev": "qstash_dev",
    "migrate": "migrate",
    "health": "health",
    "enqueue": "operator",
    "status": "operator",
    "jobs": "operator",
    "schedule": "operator",
    "cancel": "operator",
    "retry": "operator",
}


SERVERS = frozenset({"serve", "rpc", "sidecar", "qstash-dev"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobsvc",
        description="Background jobs: a gRPC JobService over PostgreSQL and QStash.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"jobsvc.cli.{module_name}").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Servers narrate at INFO; one-shot commands print their own result and log warnings only.
    level = logging.INFO if args.command in SERVERS else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per broker call is noise
    logging.getLogger("alembic").setLevel(logging.WARNING)
    module = importlib.import_module(f"jobsvc.cli.{COMMANDS[args.command]}")
    result: int = module.run(args)
    return result
