"""The job state machine, guarded in SQL.

Each transition is ONE conditional UPDATE whose WHERE names the states ``jobs.TRANSITIONS``
allows the move from (the statements are in :mod:`jobsvc.db.guards`); a row in any other state
is left untouched and the method says so. A duplicate or late delivery, a second completion, a
cancel racing a delivery: whichever statement the database runs second finds the row already
moved and changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Executable, func, select

from jobsvc.db import guards
from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.driver_errors import storage_errors
from jobsvc.db.guards import LEASE_EXPIRED
from jobsvc.db.history import load_jobs, with_histories
from jobsvc.db.progress import FORGET_REFUSALS
from jobsvc.db.rows import attempt_values, job_from_row
from jobsvc.db.tables import job_events, job_logs
from jobsvc.db.tokens import DeliveryTokens
from jobsvc.errors import InvalidState, JobNotFound, TokenReused
from jobsvc.jobs import REDRIVEN, Attempt, Job, JobState

__all__ = ["LEASE_EXPIRED", "Transitions"]


class Transitions:
    """The guarded moves of :class:`~jobsvc.db.job_log.JobLog`."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self.tokens = DeliveryTokens(engine, clock=clock)
        # Single statements need no BEGIN/COMMIT round trips around them.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._in_one_statement = engine.dialect.name == "postgresql"

    def claim(
        self,
        job_id: uuid.UUID,
        *,
        qstash_message_id: str | None,
        retried: int | None,
        lease_seconds: float,
        token: tuple[str, datetime] | None = None,
    ) -> Job | None:
        """Start an attempt for a delivery; the claimed job, or None if refused.

        ``token``: the delivery's signature token (``jti``, usable until), spent in the same
        transaction (see ``tokens``): TokenReused, with nothing written, if it was spent
        before; spent even when the claim is refused, so a replay cannot try again later.

        pending or retrying → processing, or processing → processing once the previous
        attempt's lease expired (that attempt is closed as a retry). The attempt is numbered
        by the database (attempts + 1, returned as ``job.attempts`` and the last entry of
        ``job.history``), so numbers never collide, whatever the delivery's ``retried`` count.
        None for a job that is running under a live lease, finished, or missing.
        """
        now = self._clock()
        parameters = {
            "p_job_id": job_id,
            "p_now": now,
            "p_lease_expires_at": now + timedelta(seconds=lease_seconds),
            "p_message_id": qstash_message_id,
            "p_retried": retried,
            "p_error": LEASE_EXPIRED,
            "p_outcome": "retry",
        }
        attempt = Attempt(
            number=0, started_at=now, qstash_message_id=qstash_message_id, retried=retried
        )
        with storage_errors("claim the job"):
            if token is None and self._in_one_statement:
                with self._autocommit.connect() as connection:
                    return self._claim_in_one(connection, parameters, attempt)
            # With a token: one transaction, one commit, for the token and the claim.
            with self._engine.begin() as connection:
                if token is not None and not self.tokens.spend_in(connection, *token):
                    raise TokenReused("this signature token has been used already")
                if self._in_one_statement:
                    claimed = self._claim_in_one(connection, parameters, attempt)
                else:
                    claimed = self._claim_in_steps(connection, parameters, attempt)
            if token is not None:
                self.tokens.prune_if_due()
            return claimed

    def _claim_in_one(
        self, connection: Connection, parameters: dict[str, Any], attempt: Attempt
    ) -> Job | None:
        row = connection.execute(guards.CLAIM_IN_ONE, parameters).first()
        if row is None:
            return None
        attempt.number = row.attempts
        if row.attempts == 1:  # the first attempt: the history is just this one
            return job_from_row(row._mapping, [attempt])
        return with_histories(connection, [row])[0]

    def _claim_in_steps(
        self, connection: Connection, parameters: dict[str, Any], attempt: Attempt
    ) -> Job | None:
        row = connection.execute(guards.CLAIM, parameters).first()
        if row is None:
            return None
        attempt.number = row.attempts
        if row.attempts > 1:  # earlier attempts exist; one may have been left running
            connection.execute(guards.CLOSE_OPEN_ATTEMPTS, parameters)
        connection.execute(guards.START_ATTEMPT, attempt_values(parameters["p_job_id"], attempt))
        if row.attempts == 1:
            return job_from_row(row._mapping, [attempt])
        return with_histories(connection, [row])[0]

    def complete(
        self,
        job_id: uuid.UUID,
        result: dict[str, Any] | None,
        *,
        attempt: int | None = None,
        skipped: bool = False,
    ) -> bool:
        """processing → completed, recording ``result`` (``skipped``: the handler had nothing
        to do, e.g. documents already complete). With ``attempt``, only if that attempt is
        still the current one (a worker whose lease expired cannot finish its successor's)."""
        guarded = attempt is not None
        return self._finish(
            guards.COMPLETE_IN_ONE[guarded] if self._in_one_statement else guards.COMPLETE[guarded],
            {"p_job_id": job_id, "p_result": result, "p_attempt": attempt, "p_error": None},
            "skipped" if skipped else "completed",
            "complete the job",
        )

    def attempt_failed(
        self, job_id: uuid.UUID, error: str, *, final: bool, attempt: int | None = None
    ) -> bool:
        """processing → retrying (QStash will deliver again) or, when ``final`` (retries
        exhausted or a permanent error), → failed. ``attempt`` as for :meth:`complete`."""
        guarded = attempt is not None
        if self._in_one_statement:
            statement: Executable = (guards.FAIL_IN_ONE if final else guards.RETRY_IN_ONE)[guarded]
        else:
            statement = (guards.FAIL if final else guards.RETRY)[guarded]
        return self._finish(
            statement,
            {"p_job_id": job_id, "p_error": error, "p_attempt": attempt},
            "failed" if final else "retry",
            "record the failure",
        )

    def mark_failed(self, job_id: uuid.UUID, dlq_id: str, error: str | None = None) -> bool:
        """QStash's failure callback: pending, retrying or processing → failed, recording the
        dead-letter queue id. Also records the DLQ id of a job already failed by its last
        attempt (the callback follows that attempt), once; False otherwise."""
        parameters = {
            "p_job_id": job_id,
            "p_now": self._clock(),
            "p_dlq_id": dlq_id,
            "p_error": error,
            "p_outcome": "failed",
        }
        with storage_errors("mark the job failed"), self._engine.begin() as connection:
            if connection.execute(guards.DEAD_LETTER, parameters).rowcount != 1:
                return False
            connection.execute(guards.CLOSE_OPEN_ATTEMPTS, parameters)
            return True

    def cancel(self, job_id: uuid.UUID) -> Job:
        """pending or retrying → cancelled; the cancelled job. JobNotFound if there is no such
        job, InvalidState if it is processing or finished."""
        return self._move_or_explain(guards.CANCEL, job_id, "cancel", guards.CANCELLABLE)

    def requeue_failed(self, job_id: uuid.UUID, *, next_publish_at: datetime | None = None) -> Job:
        """failed → pending, for an operator's retry: the DLQ id and QStash message id are
        cleared and the job rejoins the outbox, so the relay publishes it anew from
        ``next_publish_at`` (default: now; later when the caller publishes it itself). Attempt
        numbers continue. The job's progress notes of refusals are forgotten (what was refused
        is asked again); those of steps that succeeded stay. JobNotFound if missing,
        InvalidState unless failed."""
        extra = {"p_next_publish_at": next_publish_at or self._clock()}
        return self._move_or_explain(
            guards.REQUEUE,
            job_id,
            "requeue",
            guards.REQUEUEABLE,
            extra=extra,
            then=FORGET_REFUSALS,
        )

    def redrive(
        self,
        job_id: uuid.UUID,
        *,
        qstash_message_id: str,
        max_redrives: int,
        not_before: datetime,
        detail: str,
    ) -> Job | None:
        """pending or retrying → pending, back in the outbox (the relay publishes it anew at
        once, for delivery from ``not_before``), when QStash gave up on its current message
        ``qstash_message_id`` before any delivery of it could fail the job; ``redrives`` counts
        up and a ``redriven`` event with ``detail`` joins its history. None (nothing changed)
        if the job is in another state, has another message, or was re-driven
        ``max_redrives`` times already."""
        now = self._clock()
        parameters = {
            "p_job_id": job_id,
            "p_now": now,
            "p_message_id": qstash_message_id,
            "p_max_redrives": max_redrives,
            "p_not_before": not_before,
        }
        with storage_errors("re-drive the job"), self._engine.begin() as connection:
            row = connection.execute(guards.REDRIVE, parameters).first()
            if row is None:
                return None
            number = connection.execute(
                select(func.coalesce(func.max(job_events.c.number), 0) + 1).where(
                    job_events.c.job_id == job_id
                )
            ).scalar_one()
            connection.execute(
                job_events.insert(),
                {
                    "job_id": job_id,
                    "number": number,
                    "at": now,
                    "kind": REDRIVEN,
                    "detail": detail,
                    "qstash_message_id": qstash_message_id,
                },
            )
            return with_histories(connection, [row])[0]

    def _finish(
        self, statement: Executable, parameters: dict[str, Any], outcome: str, action: str
    ) -> bool:
        """Run a move out of processing; if it applied, close the attempt it ended."""
        parameters = {**parameters, "p_now": self._clock(), "p_outcome": outcome}
        with storage_errors(action):
            if self._in_one_statement:
                with self._autocommit.connect() as connection:
                    return connection.execute(statement, parameters).first() is not None
            with self._engine.begin() as connection:
                row = connection.execute(statement, parameters).first()
                if row is None:
                    return False
                finish = {**parameters, "p_attempt": row.attempts}
                connection.execute(guards.FINISH_ATTEMPT, finish)
                return True

    def _move_or_explain(
        self,
        statement: Executable,
        job_id: uuid.UUID,
        verb: str,
        allowed: frozenset[JobState],
        *,
        extra: dict[str, Any] | None = None,
        then: Executable | None = None,
    ) -> Job:
        """Run the move; if it applied, ``then`` too, in the same transaction."""
        parameters = {"p_job_id": job_id, "p_now": self._clock(), **(extra or {})}
        with storage_errors(f"{verb} the job"), self._engine.begin() as connection:
            rows = connection.execute(statement, parameters).all()
            if rows:
                if then is not None:
                    connection.execute(then, {"p_job_id": job_id})
                return with_histories(connection, rows)[0]
            found = load_jobs(connection, select(job_logs).where(job_logs.c.id == job_id))
        if not found:
            raise JobNotFound(f"job {job_id} not found")
        names = " or ".join(sorted(state.value for state in allowed))
        raise InvalidState(f"cannot {verb} job {job_id}: it is {found[0].state}, not {names}")
