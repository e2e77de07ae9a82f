"""The migrations build exactly the schema the code declares, and they round-trip."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobsvc.localqstash import schema, tables
from jobsvc.localqstash.schema import VERSION_TABLE


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return list(compare_metadata(context, tables.metadata))
    finally:
        engine.dispose()


def test_migrations_match_the_declared_tables(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    schema.upgrade(engine)
    engine.dispose()
    assert _differences(empty_database_url) == []


def test_downgrade_and_upgrade_round_trip(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    schema.upgrade(engine)
    schema.downgrade(engine, "base")
    names = set(inspect(engine).get_table_names())
    assert not names & set(tables.metadata.tables)
    schema.upgrade(engine)
    schema.upgrade(engine)  # a second upgrade is a no-op
    assert set(tables.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert _differences(empty_database_url) == []
