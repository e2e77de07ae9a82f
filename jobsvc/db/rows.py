"""Conversion between table rows and the domain objects of ``jobsvc.jobs``; nothing above the
database layer ever sees a row."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from jobsvc.jobs import Attempt, Job, JobEvent, JobState, JobType, Schedule


def seconds(span: timedelta | None) -> float | None:
    return None if span is None else span.total_seconds()


def span(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def job_values(job: Job, *, next_publish_at: datetime | None) -> dict[str, Any]:
    """The ``job_logs`` row of a job about to be inserted.

    A job that already has a QStash message id (a delivery fired by a cron schedule) counts as
    published; any other one joins the outbox, due to the relay at ``next_publish_at``
    (default: its creation time).
    """
    published_at = job.published_at
    if published_at is None and job.qstash_message_id is not None:
        published_at = job.created_at
    return {
        "id": job.id,
        "qstash_message_id": job.qstash_message_id,
        "job_type": job.type.value,
        "payload": job.payload,
        "state": job.state.value,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "started_at": job.started_at,
        "completed_at": job.finished_at,
        "result": job.result,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.created_at,
        "not_before": job.not_before,
        "timeout_seconds": seconds(job.timeout),
        "deduplication_id": job.deduplication_id,
        "schedule_id": job.schedule_id,
        "dlq_id": job.dlq_id,
        "published_at": published_at,
        "publish_attempts": job.publish_attempts,
        "redrives": job.redrives,
        "next_publish_at": None if published_at else (next_publish_at or job.created_at),
        "lease_expires_at": None,
    }


def attempt_values(job_id: uuid.UUID, attempt: Attempt) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "number": attempt.number,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "outcome": attempt.outcome,
        "error": attempt.error,
        "qstash_message_id": attempt.qstash_message_id,
        "retried": attempt.retried,
    }


def job_from_row(row: Mapping[Any, Any], history: Iterable[Attempt] = ()) -> Job:
    return Job(
        id=row["id"],
        type=JobType(row["job_type"]),
        payload=row["payload"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        max_retries=row["max_retries"],
        created_at=row["created_at"],
        not_before=row["not_before"],
        started_at=row["started_at"],
        finished_at=row["completed_at"],
        result=row["result"],
        error=row["error"],
        qstash_message_id=row["qstash_message_id"],
        dlq_id=row["dlq_id"],
        deduplication_id=row["deduplication_id"],
        schedule_id=row["schedule_id"],
        timeout=span(row["timeout_seconds"]),
        published_at=row["published_at"],
        publish_attempts=row["publish_attempts"],
        redrives=row["redrives"],
        history=list(history),
    )


def attempt_from_row(row: Mapping[Any, Any]) -> Attempt:
    return Attempt(
        number=row["number"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
        error=row["error"],
        qstash_message_id=row["qstash_message_id"],
        retried=row["retried"],
    )


def schedule_values(schedule: Schedule) -> dict[str, Any]:
    return {
        "schedule_id": schedule.id,
        "cron": schedule.cron,
        "time_zone": schedule.time_zone,
        "job_type": schedule.type.value,
        "payload": schedule.payload,
        "retries": schedule.retries,
        "timeout_seconds": seconds(schedule.timeout),
        "paused": schedule.paused,
        "qstash_schedule_id": schedule.qstash_schedule_id,
        "created_at": schedule.created_at,
        "updated_at": schedule.updated_at,
        "last_run_at": schedule.last_run_at,
    }


def schedule_from_row(row: Mapping[Any, Any]) -> Schedule:
    return Schedule(
        id=row["schedule_id"],
        cron=row["cron"],
        time_zone=row["time_zone"],
        type=JobType(row["job_type"]),
        payload=row["payload"],
        retries=row["retries"],
        timeout=span(row["timeout_seconds"]),
        paused=row["paused"],
        qstash_schedule_id=row["qstash_schedule_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_run_at=row["last_run_at"],
    )


def event_from_row(row: Mapping[Any, Any]) -> JobEvent:
    return JobEvent(
        at=row["at"],
        kind=row["kind"],
        detail=row["detail"],
        qstash_message_id=row["qstash_message_id"],
    )
