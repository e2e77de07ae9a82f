"""The ``Progress`` port of one job, on the job log's ``job_progress`` table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from jobsvc.db.progress import ProgressLog


class JobProgress:
    """Notes of the job ``job_id``; each call is one short transaction in a worker thread."""

    def __init__(self, progress_log: ProgressLog, job_id: uuid.UUID) -> None:
        self._log = progress_log
        self._job_id = job_id

    async def get(self, key: str) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(self._log.get, self._job_id, key)

    async def record(self, key: str, value: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._log.record, self._job_id, key, value)

    async def all(self) -> dict[str, Mapping[str, Any]]:
        return dict(await asyncio.to_thread(self._log.all, self._job_id))
