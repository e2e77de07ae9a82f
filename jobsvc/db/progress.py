"""Job progress: the ``job_progress`` table, notes a job's attempts leave for the next one."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Delete, Engine, bindparam, delete, select

from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.driver_errors import storage_errors
from jobsvc.db.engine import dialect_insert
from jobsvc.db.tables import job_progress
from jobsvc.errors import InvalidArgument, JobNotFound
from jobsvc.ports.progress import REJECTED

MAX_KEY_LENGTH = 200

_ALL = select(job_progress.c.key, job_progress.c.value).where(
    job_progress.c.job_id == bindparam("p_job_id")
)
_ONE = _ALL.where(job_progress.c.key == bindparam("p_key"))
FORGET_REFUSALS: Delete = delete(job_progress).where(
    job_progress.c.job_id == bindparam("p_job_id"),
    # Whatever was refused may have been fixed by the time an operator re-drives the job.
    job_progress.c.value["status"].as_string() == REJECTED,
)


class ProgressLog:
    """Read and write a job's notes; each ``record`` commits on its own (it is what makes the
    step it notes count as done)."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        insert = dialect_insert(engine)(job_progress)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[job_progress.c.job_id, job_progress.c.key],
            set_={"value": insert.excluded.value, "recorded_at": insert.excluded.recorded_at},
        )

    def get(self, job_id: uuid.UUID, key: str) -> dict[str, Any] | None:
        """The note under ``key``, or None."""
        with storage_errors("read the job's progress"), self._autocommit.connect() as c:
            row = c.execute(_ONE, {"p_job_id": job_id, "p_key": key}).first()
        return None if row is None else dict(row.value)

    def all(self, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Every note of the job, by key."""
        with storage_errors("read the job's progress"), self._autocommit.connect() as c:
            rows = c.execute(_ALL, {"p_job_id": job_id}).all()
        return {row.key: dict(row.value) for row in rows}

    def record(self, job_id: uuid.UUID, key: str, value: Mapping[str, Any]) -> None:
        """Write (or replace) the note under ``key``; JobNotFound if there is no such job."""
        if not 0 < len(key) <= MAX_KEY_LENGTH:
            raise ValueError(f"a progress key has 1 to {MAX_KEY_LENGTH} characters")
        values = {"job_id": job_id, "key": key, "value": dict(value), "recorded_at": self._clock()}
        try:
            with storage_errors("record the job's progress"), self._autocommit.connect() as c:
                c.execute(self._upsert, values)
        except InvalidArgument as exc:  # the one constraint an upsert can break: the job's key
            raise JobNotFound(f"job {job_id} not found") from exc
