"""Group commit for Enqueue: concurrent inserts of new jobs share one transaction.

Each Enqueue waits for its own job's commit, as before; but while one transaction is being
written, the jobs that arrive meanwhile gather and go into the next one together. Under load
that is one worker-thread hop, one statement and one commit for many jobs; a lone job is
written at once. Only jobs without a deduplication id are grouped: they cannot collide (their
ids are fresh UUIDs), so a transaction fails only for a reason that fails every job in it (the
database is unreachable), and each caller then gets that error and nothing of theirs is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from jobsvc.jobs import Job

MAX_GROUP = 500

InsertMany = Callable[[Sequence[Job], datetime | None], list[Job]]


class GroupedInserts:
    """``await insert(job)`` returns the stored job once its transaction has committed."""

    def __init__(
        self,
        insert_many: InsertMany,
        *,
        next_publish_at: Callable[[], datetime | None],
        max_group: int = MAX_GROUP,
    ) -> None:
        self._insert_many = insert_many
        self._next_publish_at = next_publish_at
        self._max_group = max_group
        self._pending: list[tuple[Job, asyncio.Future[Job]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, job: Job) -> Job:
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        # Its error is seen even if the caller has gone (no "never retrieved" warning).
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._pending.append((job, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="grouped-inserts")
        # Shielded: a caller that goes away does not take the others' transaction with it.
        return await asyncio.shield(future)

    async def _write(self) -> None:
        try:
            while self._pending:
                group = self._pending[: self._max_group]
                del self._pending[: self._max_group]
                try:
                    stored = await asyncio.to_thread(
                        self._insert_many, [job for job, _ in group], self._next_publish_at()
                    )
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), job in zip(group, stored, strict=True):
                    if not future.done():
                        future.set_result(job)
        finally:
            self._writer = None
