"""The job log's memory of spent delivery tokens, on SQLite and PostgreSQL: a token is spent
once, whichever process (sidecar replica) tries, and expired tokens are forgotten in bounded
steps."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from jobsvc.db import JobLog, create_database_engine
from jobsvc.db.tables import job_delivery_tokens
from jobsvc.db.tokens import PRUNE_LIMIT
from jobsvc.errors import TokenReused
from jobsvc.jobs import Job, JobState, JobType

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CRM = JobType.CRM_MATCH


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(job_delivery_tokens)).scalar_one()
        )


def test_a_token_is_spent_once_across_replicas(engine: Engine, database_url: str) -> None:
    other_engine = create_database_engine(database_url)  # another replica's connections
    try:
        here, there = JobLog(engine), JobLog(other_engine)
        until = datetime.now(UTC) + timedelta(minutes=5)
        assert here.tokens.spend("jwt_a", until)
        assert not there.tokens.spend("jwt_a", until)
        assert not here.tokens.spend("jwt_a", until)
        assert there.tokens.spend("jwt_b", until)

        # Racing: of many concurrent spends of one token, exactly one wins.
        results: list[bool] = []
        start = threading.Barrier(8)

        def spend(log: JobLog) -> None:
            start.wait()
            results.append(log.tokens.spend("jwt_raced", until))

        threads = [threading.Thread(target=spend, args=(log,)) for log in [here, there] * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False] * 7 + [True]
        assert count(engine) == 3
    finally:
        other_engine.dispose()


def test_a_claim_spends_its_token_in_its_own_transaction(engine: Engine, database_url: str) -> None:
    other_engine = create_database_engine(database_url)
    try:
        logs = [JobLog(engine), JobLog(other_engine)]
        until = datetime.now(UTC) + timedelta(minutes=5)
        job, _ = logs[0].insert(Job(id=uuid.uuid4(), type=CRM, payload={}, created_at=T0))

        # Concurrent deliveries with one token: one claims, the others change nothing.
        outcomes: list[object] = []
        start = threading.Barrier(6)

        def claim(log: JobLog) -> None:
            start.wait()
            try:
                outcomes.append(
                    log.claim(
                        job.id,
                        qstash_message_id="m",
                        retried=0,
                        lease_seconds=60,
                        token=("jwt_once", until),
                    )
                )
            except TokenReused:
                outcomes.append("reused")

        threads = [threading.Thread(target=claim, args=(log,)) for log in logs * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes.count("reused") == 5
        claimed = logs[1].get(job.id)
        assert (claimed.state, claimed.attempts) == (JobState.PROCESSING, 1)

        # A refused claim (the job is running) spends its token all the same.
        assert (
            logs[0].claim(
                job.id,
                qstash_message_id="m",
                retried=0,
                lease_seconds=60,
                token=("jwt_busy", until),
            )
            is None
        )
        assert not logs[1].tokens.spend("jwt_busy", until)
        assert count(engine) == 2
    finally:
        other_engine.dispose()


def test_expired_tokens_are_forgotten_in_bounded_steps(engine: Engine) -> None:
    now = [T0]
    log = JobLog(engine, clock=lambda: now[0])
    for i in range(PRUNE_LIMIT + 5):
        assert log.tokens.spend(f"jwt_{i}", T0 + timedelta(minutes=5))
    assert log.tokens.spend("jwt_later", T0 + timedelta(hours=2))
    assert log.tokens.prune() == 0  # nothing has expired yet

    now[0] = T0 + timedelta(hours=1)
    assert log.tokens.prune() == PRUNE_LIMIT
    assert log.tokens.prune() == 5
    assert log.tokens.prune() == 0
    assert count(engine) == 1
    # Forgotten once expired: by then no signature check would accept it anyway.
    assert log.tokens.spend("jwt_0", T0 + timedelta(hours=1, minutes=5))
