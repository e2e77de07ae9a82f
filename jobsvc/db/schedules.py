"""Recurring jobs: the ``job_schedules`` table, read and written as ``jobs.Schedule``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Update, delete, func, select, update

from jobsvc.db import pages
from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.driver_errors import storage_errors
from jobsvc.db.engine import dialect_insert
from jobsvc.db.rows import schedule_from_row, schedule_values
from jobsvc.db.tables import job_schedules
from jobsvc.errors import ScheduleNotFound, quoted
from jobsvc.jobs import Schedule


class Schedules:
    """Create-or-update, read, list, pause and delete schedules."""

    def __init__(
        self, engine: Engine, *, clock: Clock = utc_now, page_token_key: bytes | None = None
    ) -> None:
        self._engine = engine
        self._page_key = page_token_key or pages.derived_key(
            engine.url.render_as_string(hide_password=False)
        )
        self._clock = clock
        self._insert = dialect_insert(engine)

    def save(self, schedule: Schedule) -> Schedule:
        """Create the schedule, or replace the one with its id (caller-chosen ids make Schedule
        create-or-update). An update keeps the original ``created_at`` and ``last_run_at``, and
        the recorded QStash schedule id unless ``schedule`` names a new one. AlreadyExists if
        its QStash schedule id belongs to another schedule."""
        values = schedule_values(schedule) | {"updated_at": self._clock()}
        statement = self._insert(job_schedules).values(values)
        replaced: dict[str, Any] = {
            name: statement.excluded[name]
            for name in values
            if name not in ("schedule_id", "created_at", "last_run_at", "qstash_schedule_id")
        }
        replaced["qstash_schedule_id"] = func.coalesce(
            statement.excluded.qstash_schedule_id, job_schedules.c.qstash_schedule_id
        )
        upsert = statement.on_conflict_do_update(
            index_elements=[job_schedules.c.schedule_id], set_=replaced
        ).returning(*job_schedules.c)
        with storage_errors("save the schedule"), self._engine.begin() as connection:
            row = connection.execute(upsert).one()
        return schedule_from_row(row._mapping)

    def get(self, schedule_id: str) -> Schedule:
        """The schedule; ScheduleNotFound if there is none with this id."""
        query = select(job_schedules).where(job_schedules.c.schedule_id == schedule_id)
        with storage_errors("read the schedule"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise ScheduleNotFound(f"schedule {quoted(schedule_id)} not found")
        return schedule_from_row(row._mapping)

    def list(
        self, *, page_size: int | None = None, page_token: str | None = None
    ) -> tuple[list[Schedule], str | None]:
        """Schedules ordered by id, and the next page's token (None after the last)."""
        size = pages.page_size(page_size)
        filters = pages.fingerprint("schedules")
        query = select(job_schedules)
        if page_token:
            (after,) = pages.decode(page_token, filters, self._page_key, (str,))
            query = query.where(job_schedules.c.schedule_id > after)
        query = query.order_by(job_schedules.c.schedule_id).limit(size + 1)
        with storage_errors("list schedules"), self._engine.connect() as connection:
            found = [schedule_from_row(row._mapping) for row in connection.execute(query)]
        if len(found) <= size:
            return found, None
        return found[:size], pages.encode([found[size - 1].id], filters, self._page_key)

    def delete(self, schedule_id: str) -> Schedule:
        """Delete the schedule and return it; ScheduleNotFound if there is none. Jobs it
        started stay in the log."""
        statement = (
            delete(job_schedules)
            .where(job_schedules.c.schedule_id == schedule_id)
            .returning(*job_schedules.c)
        )
        with storage_errors("delete the schedule"), self._engine.begin() as connection:
            row = connection.execute(statement).first()
        if row is None:
            raise ScheduleNotFound(f"schedule {quoted(schedule_id)} not found")
        return schedule_from_row(row._mapping)

    def set_paused(self, schedule_id: str, paused: bool) -> Schedule:
        """Pause or resume; the schedule as it is now. ScheduleNotFound if there is none."""
        return self._update(schedule_id, {"paused": paused}, "pause the schedule")

    def set_qstash_schedule_id(self, schedule_id: str, qstash_schedule_id: str) -> Schedule:
        """Record the broker's id of the schedule. ScheduleNotFound if there is none."""
        values = {"qstash_schedule_id": qstash_schedule_id}
        return self._update(schedule_id, values, "record the QStash schedule id")

    def record_run(self, schedule_id: str, at: datetime) -> Schedule:
        """Record that the schedule fired at ``at``. ScheduleNotFound if there is none."""
        return self._update(schedule_id, {"last_run_at": at}, "record the schedule's run")

    def _update(self, schedule_id: str, values: dict[str, Any], action: str) -> Schedule:
        statement: Update = (
            update(job_schedules)
            .where(job_schedules.c.schedule_id == schedule_id)
            .values(**values, updated_at=self._clock())
            .returning(*job_schedules.c)
        )
        with storage_errors(action), self._engine.begin() as connection:
            row = connection.execute(statement).first()
        if row is None:
            raise ScheduleNotFound(f"schedule {quoted(schedule_id)} not found")
        return schedule_from_row(row._mapping)
