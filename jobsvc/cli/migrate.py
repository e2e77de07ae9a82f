"""``jobsvc migrate``: bring the job log's database to the current schema."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from jobsvc.cli.process import safe_url
from jobsvc.settings import Settings

DEFAULT_DATABASE_URL = Settings.database_url


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "migrate",
        help="bring the job log's database to the current schema",
        description=(
            "Apply the job log's migrations up to the newest; a no-op on an up-to-date "
            "database. The URL also comes from JOBSVC_DATABASE_URL."
        ),
    )
    parser.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL of the job log (default {DEFAULT_DATABASE_URL})",
    )


def run(args: argparse.Namespace) -> int:
    # Alembic narrates every step at INFO (from its import on); the one line printed below
    # says what happened.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.util import CommandError
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from jobsvc.db import create_database_engine, current_revision, upgrade

    url = args.database_url or os.environ.get("JOBSVC_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        engine = create_database_engine(url)
    except (ArgumentError, ValueError) as exc:
        print(f"jobsvc migrate: bad database URL {safe_url(url)}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a dialect whose driver is not installed
        print(f"jobsvc migrate: cannot open the database {safe_url(url)}: {exc}", file=sys.stderr)
        return 1
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except (SQLAlchemyError, CommandError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"jobsvc migrate: cannot migrate {safe_url(url)}: {reason}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if before == after:
        print(f"jobsvc migrate: {safe_url(url)} is up to date (revision {after})")
    else:
        print(f"jobsvc migrate: {safe_url(url)} migrated from {before or 'empty'} to {after}")
    return 0
