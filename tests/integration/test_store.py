"""The local server's group-committing store on SQLite and PostgreSQL: replaces in one batch
keep one row per key, the last one; a failed write fails alone, whole, and the writer goes on."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Connection, select

from jobsvc.localqstash import tables
from jobsvc.localqstash.store import Insert, Replace, Statement, Store, StoreError


def _dedup(key: str, message_id: str) -> Replace:
    return Replace(
        tables.deduplication,
        ("user_id", "dedup_key"),
        {"user_id": "u1", "dedup_key": key, "message_id": message_id, "expires_at": 1},
    )


async def test_replaces_keep_the_last_row_of_each_key(database_url: str) -> None:
    store = Store(database_url)
    store.open()
    try:
        await store.write(_dedup("a", "m1"))
        # One batch: "a" replaced twice, "b" new; the stored "a" is replaced too.
        await store.write(_dedup("a", "m2"), _dedup("b", "m3"), _dedup("a", "m4"))
        rows = store.read_sync(
            lambda c: c.execute(
                select(tables.deduplication.c.dedup_key, tables.deduplication.c.message_id)
            ).all()
        )
        assert sorted((key, message) for key, message in rows) == [("a", "m4"), ("b", "m3")]
    finally:
        store.close()


def _raise(exc: BaseException) -> Statement:
    def run(conn: Connection) -> None:
        raise exc

    return Statement(run)


def _keys(store: Store) -> list[str]:
    return sorted(
        store.read_sync(
            lambda c: list(c.execute(select(tables.deduplication.c.dedup_key)).scalars())
        )
    )


async def test_the_writer_survives_any_failed_write_and_runs_the_next(database_url: str) -> None:
    store = Store(database_url)
    store.open()
    try:
        # An OverflowError is what a driver raises for an integer a column cannot hold.
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.write(_raise(OverflowError("too large"))), 10)
        await asyncio.wait_for(store.write(_dedup("after", "m1")), 10)
        assert _keys(store) == ["after"]
    finally:
        store.close()


async def test_a_failed_write_stores_none_of_its_rows_and_the_others_all_of_theirs(
    database_url: str,
) -> None:
    store = Store(database_url)
    store.open()
    try:
        await store.write(_dedup("taken", "m1"))
        duplicate = Insert(
            tables.deduplication,
            {"user_id": "u1", "dedup_key": "taken", "message_id": "m2", "expires_at": 1},
        )
        results = await asyncio.wait_for(
            asyncio.gather(
                store.write(_dedup("half", "m3"), duplicate),
                store.write(_dedup("whole", "m4")),
                return_exceptions=True,
            ),
            10,
        )
        assert isinstance(results[0], StoreError)
        assert results[1] is None
        assert _keys(store) == ["taken", "whole"]
    finally:
        store.close()
