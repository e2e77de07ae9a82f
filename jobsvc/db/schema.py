"""Bringing a database to the job log's schema with the Alembic migrations in ``migrations/``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


def migrations_directory() -> Path:
    """Where the migrations are: the ``jobsvc.migrations`` package of an installed wheel (the
    top-level ``migrations/`` mapped into the package), else ``migrations/`` of the source tree."""
    spec = importlib.util.find_spec("jobsvc.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    source = Path(__file__).resolve().parents[2] / "migrations"
    if (source / "env.py").is_file():
        return source
    raise FileNotFoundError(f"the job log's migrations are missing (looked in {source})")


def alembic_config() -> Config:
    """Alembic's configuration, built in code: there is no alembic.ini to find or get wrong."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    return config


def head_revision() -> str:
    """The newest revision the code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise FileNotFoundError("the job log's migrations have no head revision")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision``; a no-op on an up-to-date database."""
    _run(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``"base"``: drop the job log's tables)."""
    _run(engine, lambda config: command.downgrade(config, revision))


def _run(engine: Engine, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        action(config)
