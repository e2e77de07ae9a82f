"""The job log's migrations build exactly the schema the code declares, round-trip, leave other
schemas alone, and ``jobsvc migrate`` applies them from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect

from jobsvc.cli import main
from jobsvc.db import create_database_engine, current_revision, downgrade, head_revision, upgrade
from jobsvc.db import schema as job_log_schema
from jobsvc.db.tables import metadata
from jobsvc.localqstash import schema as qstash_schema
from jobsvc.localqstash import tables as qstash_tables

TABLES = {"job_logs", "job_attempts", "job_schedules", "job_progress", "job_delivery_tokens"}


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))


def _constraint_names(engine: Engine) -> dict[str, set[str]]:
    """Every named constraint and index, by table; compare_metadata does not compare CHECKs."""
    inspector = inspect(engine)
    names: dict[str, set[str]] = {}
    for table in sorted(TABLES):
        found = {c["name"] for c in inspector.get_check_constraints(table)}
        found |= {c["name"] for c in inspector.get_unique_constraints(table)}
        found |= {c["name"] for c in inspector.get_foreign_keys(table)}
        found |= {i["name"] for i in inspector.get_indexes(table) if not i.get("unique")}
        found.add(inspector.get_pk_constraint(table)["name"])
        names[table] = {str(name) for name in found}
    return names


def _declared_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for table in TABLES:
        declared = metadata.tables[table]
        found = {str(c.name) for c in declared.constraints}
        found |= {str(i.name) for i in declared.indexes}
        names[table] = found
    return names


def test_migrations_match_the_declared_tables(empty_database_url: str) -> None:
    engine = create_database_engine(empty_database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision() == "0005"
        assert _differences(engine) == []
        names = _constraint_names(engine)
        if engine.dialect.name == "sqlite":
            # SQLite keeps no name for a primary key.
            names = {t: n | {f"{t}_pkey"} for t, n in names.items()}
        assert names == _declared_names()
        assert "job_logs_max_retries_check" in names["job_logs"]
    finally:
        engine.dispose()


def test_the_unpublished_index_is_partial(empty_database_url: str) -> None:
    engine = create_database_engine(empty_database_url)
    try:
        upgrade(engine)
        (index,) = [
            i
            for i in inspect(engine).get_indexes("job_logs")
            if i["name"] == "job_logs_unpublished_idx"
        ]
        where = index["dialect_options"][f"{engine.dialect.name}_where"]
        assert "published_at IS NULL" in str(where)
        assert index["column_names"] == ["next_publish_at"]
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_round_trip(empty_database_url: str) -> None:
    engine = create_database_engine(empty_database_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        assert current_revision(engine) is None
        upgrade(engine)
        upgrade(engine)  # a second upgrade is a no-op
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_a_database_shared_with_the_local_qstash_server(empty_database_url: str) -> None:
    """Both schemas in one database: each keeps its own version table, and autogenerate (through
    migrations/env.py) neither sees nor proposes to drop the other's tables."""
    engine = create_engine(empty_database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        qstash_schema.upgrade(engine)
        upgrade(engine)
        tables = set(inspect(engine).get_table_names())
        assert tables >= TABLES | set(qstash_tables.metadata.tables)
        assert {"alembic_version", "qstash_alembic_version"} <= tables
        config = job_log_schema.alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.check(config)  # raises if autogenerate would emit any operation
        downgrade(engine, "base")
        assert set(qstash_tables.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _jobsvc(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "JOBSVC_DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jobsvc", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_command_creates_the_tables_and_is_idempotent(
    empty_database_url: str, tmp_path: Path
) -> None:
    first = _jobsvc("migrate", cwd=tmp_path, env={"JOBSVC_DATABASE_URL": empty_database_url})
    assert first.returncode == 0, first.stderr
    assert "migrated from empty to 0005" in first.stdout
    second = _jobsvc("migrate", "--database-url", empty_database_url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "up to date (revision 0005)" in second.stdout
    assert "Traceback" not in first.stderr + second.stderr
    engine = create_database_engine(empty_database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_migrate_command_defaults_to_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOBSVC_DATABASE_URL", raising=False)
    assert main(["migrate"]) == 0
    engine = create_database_engine(f"sqlite:///{tmp_path / 'jobsvc.sqlite3'}")
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_migrate_command_reports_an_unreachable_database_without_a_traceback(
    tmp_path: Path,
) -> None:
    refused = _jobsvc(
        "migrate", "--database-url", "postgresql://root:s3cret@127.0.0.1:1/jobs", cwd=tmp_path
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("jobsvc migrate: cannot migrate postgresql://root:***@")
    assert "s3cret" not in refused.stderr
    assert refused.stderr.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/jobs", "jobsvc migrate: bad database URL mysql://db/jobs: unsupported"),
        ("not a url", "jobsvc migrate: bad database URL not a url: Could not parse"),
        (
            "sqlite://",
            "jobsvc migrate: bad database URL sqlite://: the job log needs a SQLite file",
        ),
    ],
)
def test_migrate_command_rejects_unusable_urls(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
