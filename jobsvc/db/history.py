"""Loading jobs together with their attempt histories, and writing histories."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Row, Select, select

from jobsvc.db.rows import attempt_from_row, attempt_values, job_from_row
from jobsvc.db.tables import job_attempts
from jobsvc.jobs import Attempt, Job

_ATTEMPT_COLUMNS = [column.label(f"attempt_{column.name}") for column in job_attempts.c]


def with_attempts(jobs: Select[Any]) -> Select[Any]:
    """``jobs`` (a select of whole ``job_logs`` rows) joined to their attempts: one statement,
    so a job and its history come from the same snapshot. Read it with ``jobs_of``."""
    page = jobs.subquery("page")
    return (
        select(page, *_ATTEMPT_COLUMNS)
        .select_from(page.outerjoin(job_attempts, job_attempts.c.job_id == page.c.id))
        .order_by(job_attempts.c.number)
    )


def jobs_of(rows: Iterable[Row[Any]]) -> list[Job]:
    """The jobs of ``with_attempts`` rows, in order of first appearance."""
    found: dict[uuid.UUID, tuple[Row[Any], list[Attempt]]] = {}
    for row in rows:
        _, history = found.setdefault(row.id, (row, []))
        if row.attempt_number is not None:
            mapping = row._mapping
            history.append(
                attempt_from_row({c.name: mapping[f"attempt_{c.name}"] for c in job_attempts.c})
            )
    return [job_from_row(row._mapping, history) for row, history in found.values()]


def load_jobs(connection: Connection, jobs: Select[Any]) -> list[Job]:
    """The jobs ``jobs`` selects, with their histories, in one round trip; in no set order."""
    return jobs_of(connection.execute(with_attempts(jobs)))


def with_histories(connection: Connection, rows: Iterable[Row[Any]]) -> list[Job]:
    """Jobs of ``job_logs`` ``rows`` already fetched (e.g. by UPDATE ... RETURNING), each with
    its attempts, in one more query; in the order of ``rows``."""
    rows = list(rows)
    if not rows:
        return []
    histories: dict[uuid.UUID, list[Attempt]] = {row.id: [] for row in rows}
    attempts = connection.execute(
        select(job_attempts)
        .where(job_attempts.c.job_id.in_(list(histories)))
        .order_by(job_attempts.c.job_id, job_attempts.c.number)
    )
    for attempt in attempts.mappings():
        histories[attempt["job_id"]].append(attempt_from_row(attempt))
    return [job_from_row(row._mapping, histories[row.id]) for row in rows]


def insert_history(connection: Connection, job_id: uuid.UUID, history: Iterable[Attempt]) -> None:
    values = [attempt_values(job_id, attempt) for attempt in history]
    if values:
        connection.execute(job_attempts.insert(), values)
