"""The local server's group-committing store on SQLite and PostgreSQL: replaces in one batch
keep one row per key, the last one."""

from __future__ import annotations

from sqlalchemy import select

from jobsvc.localqstash import tables
from jobsvc.localqstash.store import Replace, Store


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
