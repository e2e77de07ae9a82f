"""The guarded statements of the job state machine, built once with bind parameters (``p_*``):
building a statement per call costs more CPU than its round trip to the database.

Each move is ONE conditional UPDATE whose WHERE names the states ``jobs.TRANSITIONS`` allows
the move from. On PostgreSQL the move and its bookkeeping in ``job_attempts`` also exist as one
statement (data-modifying CTEs): one round trip in autocommit instead of four in a transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    Text,
    Update,
    Uuid,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)

from jobsvc.db.tables import Json, UtcDateTime, job_attempts, job_events, job_logs
from jobsvc.jobs import REDRIVEN, TRANSITIONS, JobState

LEASE_EXPIRED = "lease expired before the attempt finished"


def sources(target: JobState) -> frozenset[JobState]:
    """The states ``jobs.TRANSITIONS`` allows a move to ``target`` from."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)


def _in(states: frozenset[JobState] | set[JobState]) -> ColumnElement[bool]:
    # Constants in the SQL, not parameters: the statement says which states it accepts.
    return job_logs.c.state.in_([literal_column(f"'{s.value}'") for s in sorted(states)])


def _state(state: JobState) -> ColumnElement[str]:
    return literal_column(f"'{state.value}'")


_JOB_ID: BindParameter[uuid.UUID] = bindparam("p_job_id", type_=Uuid())
_NOW: BindParameter[datetime] = bindparam("p_now", type_=UtcDateTime())
_ATTEMPT: BindParameter[int] = bindparam("p_attempt", type_=Integer())
_ERROR: BindParameter[str] = bindparam("p_error", type_=Text())
_COLUMNS = list(job_logs.c)


def _move(guard: ColumnElement[bool], target: JobState, **values: Any) -> Update:
    return (
        update(job_logs)
        .where(job_logs.c.id == _JOB_ID, guard)
        .values(state=_state(target), updated_at=_NOW, **values)
    )


def _either(statement: Update, guard: ColumnElement[bool]) -> dict[bool, Update]:
    """Without and with the guard that the current attempt is ``p_attempt``."""
    return {False: statement, True: statement.where(guard)}


# A processing job is claimed again only once its lease expired (its worker vanished).
CLAIM = _move(
    or_(
        _in(sources(JobState.PROCESSING) - {JobState.PROCESSING}),
        and_(job_logs.c.state == _state(JobState.PROCESSING), job_logs.c.lease_expires_at <= _NOW),
    ),
    JobState.PROCESSING,
    attempts=job_logs.c.attempts + 1,
    started_at=func.coalesce(job_logs.c.started_at, _NOW),
    lease_expires_at=bindparam("p_lease_expires_at", type_=UtcDateTime()),
    # Delivered means published, whether or not the relay got to record it.
    published_at=func.coalesce(job_logs.c.published_at, _NOW),
    qstash_message_id=func.coalesce(
        job_logs.c.qstash_message_id, bindparam("p_message_id", type_=Text())
    ),
    next_publish_at=None,
).returning(*_COLUMNS)
_CURRENT_ATTEMPT = job_logs.c.attempts == _ATTEMPT
COMPLETE = _either(
    _move(
        _in(sources(JobState.COMPLETED)),
        JobState.COMPLETED,
        result=bindparam("p_result", type_=Json),
        error=None,
        completed_at=_NOW,
        lease_expires_at=None,
    ).returning(job_logs.c.id, job_logs.c.attempts),
    _CURRENT_ATTEMPT,
)
RETRY = _either(
    _move(
        _in(sources(JobState.RETRYING)), JobState.RETRYING, error=_ERROR, lease_expires_at=None
    ).returning(job_logs.c.id, job_logs.c.attempts),
    _CURRENT_ATTEMPT,
)
FAIL = _either(
    _move(
        _in(sources(JobState.FAILED) & {JobState.PROCESSING}),  # only a running attempt fails
        JobState.FAILED,
        error=_ERROR,
        completed_at=_NOW,
        lease_expires_at=None,
    ).returning(job_logs.c.id, job_logs.c.attempts),
    _CURRENT_ATTEMPT,
)
DEAD_LETTER = _move(
    or_(
        _in(sources(JobState.FAILED)),
        # The callback that follows a last failed attempt records its DLQ id, once.
        and_(job_logs.c.state == _state(JobState.FAILED), job_logs.c.dlq_id.is_(None)),
    ),
    JobState.FAILED,
    dlq_id=bindparam("p_dlq_id", type_=Text()),
    error=func.coalesce(_ERROR, job_logs.c.error),
    completed_at=func.coalesce(job_logs.c.completed_at, _NOW),
    lease_expires_at=None,
    next_publish_at=None,
)
CANCELLABLE = sources(JobState.CANCELLED)
CANCEL = _move(
    _in(CANCELLABLE), JobState.CANCELLED, completed_at=_NOW, next_publish_at=None
).returning(*_COLUMNS)
# Only a failed job is an operator's to retry; the other ways back to pending are re-drives.
REQUEUEABLE = frozenset({JobState.FAILED})
REQUEUE = _move(
    _in(REQUEUEABLE),
    JobState.PENDING,
    dlq_id=None,
    qstash_message_id=None,
    completed_at=None,
    lease_expires_at=None,
    published_at=None,
    publish_attempts=0,
    next_publish_at=bindparam("p_next_publish_at", type_=_NOW.type),
).returning(*_COLUMNS)
# QStash gave up on the job's current message while no attempt of it was running or had failed
# the job: published anew by the relay at once, to be delivered from p_not_before, under a
# fresh retry budget. A job with no message id recorded counts as that message's too (its
# publisher stopped between the publish and recording the id), unless that message re-drove
# it already (a repeated callback).
REDRIVABLE = frozenset({JobState.PENDING, JobState.RETRYING})
_MESSAGE_ID = bindparam("p_message_id", type_=Text())
REDRIVE = _move(
    and_(
        _in(REDRIVABLE),
        or_(
            job_logs.c.qstash_message_id == _MESSAGE_ID,
            and_(
                job_logs.c.qstash_message_id.is_(None),
                ~select(job_events.c.job_id)
                .where(
                    job_events.c.job_id == job_logs.c.id,
                    job_events.c.kind == REDRIVEN,
                    job_events.c.qstash_message_id == _MESSAGE_ID,
                )
                .exists(),
            ),
        ),
        job_logs.c.redrives < bindparam("p_max_redrives", type_=Integer()),
    ),
    JobState.PENDING,
    qstash_message_id=None,
    lease_expires_at=None,
    published_at=None,
    publish_attempts=0,
    next_publish_at=_NOW,
    not_before=bindparam("p_not_before", type_=_NOW.type),
    redrives=job_logs.c.redrives + 1,
).returning(*_COLUMNS)
FINISH_ATTEMPT = (
    update(job_attempts)
    .where(job_attempts.c.job_id == _JOB_ID, job_attempts.c.number == _ATTEMPT)
    .values(finished_at=_NOW, outcome=bindparam("p_outcome", type_=Text()), error=_ERROR)
)
# Attempts left running by a worker whose lease expired, or under a failure callback.
CLOSE_OPEN_ATTEMPTS = (
    update(job_attempts)
    .where(job_attempts.c.job_id == _JOB_ID, job_attempts.c.finished_at.is_(None))
    .values(finished_at=_NOW, outcome=bindparam("p_outcome", type_=Text()), error=_ERROR)
)
START_ATTEMPT = job_attempts.insert()


# -- PostgreSQL: a move and its attempt bookkeeping in one statement -----------------------


def _claim_in_one() -> Select[Any]:
    """CLAIM, closing attempts a vanished worker left open and starting the new one."""
    claimed = CLAIM.cte("claimed")
    closed = (
        update(job_attempts)
        .where(job_attempts.c.job_id == claimed.c.id, job_attempts.c.finished_at.is_(None))
        .values(finished_at=_NOW, outcome=literal_column("'retry'"), error=_ERROR)
        .cte("closed")
    )
    started = (
        insert(job_attempts)
        .from_select(
            ["job_id", "number", "started_at", "qstash_message_id", "retried"],
            select(
                claimed.c.id,
                claimed.c.attempts,
                _NOW,
                bindparam("p_message_id", type_=Text()),
                bindparam("p_retried", type_=Integer()),
            ),
        )
        .cte("started")
    )
    return select(claimed).add_cte(closed, started)


def _finish_in_one(move: Update) -> Select[Any]:
    """A move out of processing that also closes the attempt it ended."""
    moved = move.cte("moved")
    finished = (
        update(job_attempts)
        .where(job_attempts.c.job_id == moved.c.id, job_attempts.c.number == moved.c.attempts)
        .values(finished_at=_NOW, outcome=bindparam("p_outcome", type_=Text()), error=_ERROR)
        .cte("finished")
    )
    return select(moved.c.attempts).add_cte(finished)


CLAIM_IN_ONE = _claim_in_one()
COMPLETE_IN_ONE = {guarded: _finish_in_one(move) for guarded, move in COMPLETE.items()}
RETRY_IN_ONE = {guarded: _finish_in_one(move) for guarded, move in RETRY.items()}
FAIL_IN_ONE = {guarded: _finish_in_one(move) for guarded, move in FAIL.items()}
