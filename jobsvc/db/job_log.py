"""The job log: every job, its state and its attempts, in PostgreSQL or SQLite.

Synchronous on purpose. The callers (gRPC servicer, sidecar, relay) are async and run each call
in a worker thread (``await asyncio.to_thread(job_log.claim, ...)``). Every method is one short
transaction that never waits on anything but the database, so a thread costs little, and it
buys one code path for both databases: SQLite, the embedded default, has no asynchronous driver
(aiosqlite is itself a thread per connection), and the same code serves the CLI and migrations.
The PostgreSQL pool (10 + 10 overflow) is sized above the default executor's thread count.

Statements that stand alone (an insert, a read, an outbox update) run in autocommit: one round
trip instead of three (BEGIN, the statement, COMMIT) on PostgreSQL.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, select, tuple_

from jobsvc.db import outbox, pages
from jobsvc.db.batches import insert_jobs
from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.driver_errors import storage_errors
from jobsvc.db.engine import dialect_insert
from jobsvc.db.history import insert_history, jobs_of, load_jobs, with_attempts, with_histories
from jobsvc.db.progress import ProgressLog
from jobsvc.db.rows import attempt_values, event_from_row, job_values
from jobsvc.db.schedules import Schedules
from jobsvc.db.tables import job_attempts, job_events, job_logs
from jobsvc.db.transitions import Transitions
from jobsvc.errors import JobNotFound, StorageUnavailable
from jobsvc.jobs import Job, JobState, JobType

_BY_ID = with_attempts(select(job_logs).where(job_logs.c.id == bindparam("p_id")))
_BY_DEDUPLICATION_ID = with_attempts(
    select(job_logs).where(job_logs.c.deduplication_id == bindparam("p_id"))
)

_EVENTS = (
    select(job_events).where(job_events.c.job_id == bindparam("p_id")).order_by(job_events.c.number)
)


class JobLog(Transitions):
    """Reads and writes jobs; returns ``jobsvc.jobs`` objects, raises ``jobsvc.errors``.

    Inserts, reads and the outbox are here; the guarded state transitions are in
    :class:`~jobsvc.db.transitions.Transitions`; ``schedules`` holds the recurring jobs and
    ``progress`` the notes handlers leave for a job's later attempts; ``tokens`` the delivery
    tokens the sidecar has accepted.
    ``clock`` gives "now" for every time the log records (tests pass their own).
    """

    def __init__(
        self, engine: Engine, *, clock: Clock = utc_now, page_token_key: bytes | None = None
    ) -> None:
        """``page_token_key`` signs the page tokens of ``list``; None derives one from the
        database URL (see ``pages.derived_key``)."""
        super().__init__(engine, clock=clock)
        self._page_key = page_token_key or pages.derived_key(
            engine.url.render_as_string(hide_password=False)
        )
        # Built once: a statement built per call costs more CPU than the INSERT's round trip.
        # RETURNING says whether a row was written; an INSERT's rowcount is not reliable.
        insert = dialect_insert(engine)
        self._insert_job = insert(job_logs).returning(job_logs.c.id)
        self._insert_new_job = (
            insert(job_logs)
            .on_conflict_do_nothing(index_elements=[job_logs.c.deduplication_id])
            .returning(job_logs.c.id)
        )
        self.schedules = Schedules(engine, clock=clock, page_token_key=self._page_key)
        self.progress = ProgressLog(engine, clock=clock)

    # -- writing jobs ----------------------------------------------------------------------

    def insert(self, job: Job, *, next_publish_at: datetime | None = None) -> tuple[Job, bool]:
        """Record a new job; return it and whether it was deduplicated.

        With a ``deduplication_id`` that is already recorded, nothing is written and the
        existing job comes back with ``True``: atomically, so concurrent inserts of the same id
        leave exactly one row. ``next_publish_at`` is when the relay may publish the job if the
        caller has not by then (default: at once); a caller that publishes it itself right
        after the commit passes a moment a little later, so the relay does not race it.
        AlreadyExists if its id or QStash message id is taken.
        """
        values = job_values(job, next_publish_at=next_publish_at)
        statement = self._insert_job if job.deduplication_id is None else self._insert_new_job
        # One statement, unless there is a history to write with it.
        engine = self._engine if job.history else self._autocommit
        # A job deduplicated against a row that is deleted in between finds nothing; try again.
        for _ in range(3):
            with storage_errors("insert the job"), engine.begin() as connection:
                if connection.execute(statement, values).first() is not None:
                    insert_history(connection, job.id, job.history)
                    return replace(job, published_at=values["published_at"]), False
                existing = jobs_of(
                    connection.execute(_BY_DEDUPLICATION_ID, {"p_id": job.deduplication_id})
                )
            if existing:
                return existing[0], True
        raise StorageUnavailable(
            f"the job with deduplication id {job.deduplication_id!r} kept vanishing; try again"
        )

    def insert_many(
        self, jobs: Sequence[Job], *, next_publish_at: datetime | None = None
    ) -> list[Job]:
        """Record all ``jobs`` in one transaction, or none of them.

        No deduplication: a deduplication id or QStash message id that is already taken (or
        repeated in ``jobs``) fails the whole batch with AlreadyExists.
        """
        if not jobs:
            return []
        rows = [job_values(job, next_publish_at=next_publish_at) for job in jobs]
        histories = [attempt_values(job.id, a) for job in jobs for a in job.history]
        with storage_errors("insert the jobs"), self._engine.begin() as connection:
            insert_jobs(connection, rows)
            if histories:
                connection.execute(job_attempts.insert(), histories)
        return [
            job
            if job.published_at == row["published_at"]
            else replace(job, published_at=row["published_at"])
            for job, row in zip(jobs, rows, strict=True)
        ]

    # -- reading jobs ----------------------------------------------------------------------

    def by_deduplication_ids(self, deduplication_ids: Collection[str]) -> dict[str, Job]:
        """The recorded jobs among ``deduplication_ids``, by deduplication id (with their
        histories); ids no job holds are absent."""
        if not deduplication_ids:
            return {}
        query = select(job_logs).where(job_logs.c.deduplication_id.in_(list(deduplication_ids)))
        with storage_errors("read jobs by deduplication id"), self._autocommit.connect() as c:
            jobs = load_jobs(c, query)
        return {job.deduplication_id: job for job in jobs if job.deduplication_id is not None}

    def get(self, job_id: uuid.UUID) -> Job:
        """The job with its attempt history; JobNotFound if there is none with this id."""
        with storage_errors("read the job"), self._autocommit.connect() as connection:
            found = jobs_of(connection.execute(_BY_ID, {"p_id": job_id}))
            if found and found[0].redrives:  # events are re-drives so far: most jobs have none
                found[0].events = [
                    event_from_row(row)
                    for row in connection.execute(_EVENTS, {"p_id": job_id}).mappings()
                ]
        if not found:
            raise JobNotFound(f"job {job_id} not found")
        return found[0]

    def list(
        self,
        *,
        state: JobState | None = None,
        type: JobType | None = None,
        states: Collection[JobState] = (),
        types: Collection[JobType] = (),
        schedule_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, created in [``created_after``, ``created_before``), with their
        histories; and the token of the next page, None after the last.

        Filters combine with AND: in one of ``states`` (``state`` is one more), of one of
        ``types`` (``type`` likewise), started by the cron schedule ``schedule_id``; empty
        means any. Keyset pagination on (created_at, id): every job appears exactly once
        across the pages even while new ones arrive. ``page_size``: 0 or None for 50, at most
        1000. InvalidArgument for a negative size or a token issued for other filters.
        """
        size = pages.page_size(page_size)
        wanted_states = sorted({*states, *([state] if state is not None else [])})
        wanted_types = sorted({*types, *([type] if type is not None else [])})
        filters = pages.fingerprint(
            wanted_states, wanted_types, schedule_id, created_after, created_before
        )
        query = select(job_logs)
        if wanted_states:
            query = query.where(job_logs.c.state.in_([s.value for s in wanted_states]))
        if wanted_types:
            query = query.where(job_logs.c.job_type.in_([t.value for t in wanted_types]))
        if schedule_id is not None:
            query = query.where(job_logs.c.schedule_id == schedule_id)
        if created_after is not None:
            query = query.where(job_logs.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(job_logs.c.created_at < created_before)
        if page_token:
            created, last_id = pages.decode(
                page_token, filters, self._page_key, (pages.aware_time, uuid.UUID)
            )
            position = (created, last_id)
            query = query.where(tuple_(job_logs.c.created_at, job_logs.c.id) < position)
        query = query.order_by(job_logs.c.created_at.desc(), job_logs.c.id.desc()).limit(size + 1)
        with storage_errors("list jobs"), self._autocommit.connect() as connection:
            jobs = load_jobs(connection, query)
        jobs.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        if len(jobs) <= size:
            return jobs, None
        last = jobs[size - 1]
        return jobs[:size], pages.encode(
            [last.created_at.isoformat(), str(last.id)], filters, self._page_key
        )

    # -- the outbox ------------------------------------------------------------------------

    def unpublished(
        self, limit: int, now: datetime | None = None, *, lease_seconds: float = 30.0
    ) -> builtins.list[Job]:
        """Up to ``limit`` pending jobs due for publishing (the relay's work): those due the
        longest are taken first, and returned oldest first.

        Each is leased for ``lease_seconds``: its next_publish_at moves on by that much in the
        same statement, so another relay (FOR UPDATE SKIP LOCKED on PostgreSQL skips rows being
        taken) or the next round does not publish it again meanwhile. The relay then calls
        ``mark_published`` or ``publish_failed``; if it crashes, the lease runs out and the job
        comes back.
        """
        now = now or self._clock()
        parameters = {
            "p_now": now,
            "p_limit": limit,
            "p_lease_expires_at": now + timedelta(seconds=lease_seconds),
        }
        with storage_errors("take unpublished jobs"), self._autocommit.connect() as connection:
            rows = connection.execute(outbox.TAKE_DUE, parameters).all()
            jobs = with_histories(connection, rows)
        return sorted(jobs, key=lambda job: (job.created_at, job.id))

    def mark_published(self, job_id: uuid.UUID, qstash_message_id: str) -> bool:
        """Record that the broker accepted the job as ``qstash_message_id``; it leaves the
        outbox. False if it was already published (e.g. a delivery came first)."""
        parameters = {"p_job_id": job_id, "p_now": self._clock(), "p_message_id": qstash_message_id}
        with storage_errors("mark the job published"), self._autocommit.connect() as connection:
            return connection.execute(outbox.MARK_PUBLISHED, parameters).rowcount == 1

    def mark_published_many(self, published: Sequence[tuple[uuid.UUID, str]]) -> int:
        """``mark_published`` for each (job id, message id) pair, in one transaction (one
        round trip on PostgreSQL: the driver pipelines the statements); how many left the
        outbox."""
        if not published:
            return 0
        now = self._clock()
        parameters = [
            {"p_job_id": job_id, "p_now": now, "p_message_id": message_id}
            for job_id, message_id in published
        ]
        with storage_errors("mark the jobs published"), self._engine.begin() as connection:
            return connection.execute(outbox.MARK_PUBLISHED, parameters).rowcount

    def publish_failed(self, job_id: uuid.UUID, next_publish_at: datetime) -> bool:
        """Count a failed publish and retry at ``next_publish_at`` (the relay's backoff). False
        if the job no longer waits for publishing (published, cancelled)."""
        parameters = {
            "p_job_id": job_id,
            "p_now": self._clock(),
            "p_next_publish_at": next_publish_at,
        }
        with storage_errors("record the failed publish"), self._autocommit.connect() as connection:
            return connection.execute(outbox.PUBLISH_FAILED, parameters).rowcount == 1

    def publish_failed_many(self, job_ids: Sequence[uuid.UUID], next_publish_at: datetime) -> int:
        """``publish_failed`` for each of ``job_ids``, in one transaction; how many were
        still waiting for publishing."""
        if not job_ids:
            return 0
        now = self._clock()
        parameters = [
            {"p_job_id": job_id, "p_now": now, "p_next_publish_at": next_publish_at}
            for job_id in job_ids
        ]
        with storage_errors("record the failed publishes"), self._engine.begin() as connection:
            return connection.execute(outbox.PUBLISH_FAILED, parameters).rowcount
