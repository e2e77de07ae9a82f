"""The publisher: hands jobs Enqueue has just committed to the broker, in batches, behind the
caller's back.

Enqueue answers once the job row is committed (the job is in the outbox, so it will run) and
passes the job here. Whatever is waiting when a sender is free goes out as one broker batch
(``/v2/batch`` under QStash) and is marked published in one transaction: under load many jobs
share one HTTP request and one commit, and a lone job goes out at once. A batch the broker
cannot take is left to the relay (its first backoff), exactly as a failed publish at Enqueue
was; jobs still waiting here when the service stops are in the outbox too, and the relay
publishes them after ``OWN_PUBLISH_GRACE``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from jobsvc.broker import Broker, BrokerRejected, Delivery
from jobsvc.db import JobLog
from jobsvc.errors import BrokerUnavailable, JobServiceError
from jobsvc.jobs import Job

log = logging.getLogger("jobsvc.publisher")

BATCH_SIZE = 100
SENDERS = 1
RETRY_AFTER_FAILURE = timedelta(seconds=1)


class Publisher:
    """Publishes submitted jobs with up to ``senders`` batches of up to ``batch_size`` in
    flight. Started by the first ``submit`` in the running event loop; ``aclose`` sends what
    is waiting (for at most ``drain_seconds``) and stops."""

    def __init__(
        self,
        *,
        job_log: JobLog,
        broker: Broker,
        delivery: Callable[[Job], Delivery],
        clock: Callable[[], datetime],
        batch_size: int = BATCH_SIZE,
        senders: int = SENDERS,
    ) -> None:
        if batch_size < 1 or senders < 1:
            raise ValueError("batch_size and senders must be positive")
        self.job_log = job_log
        self.broker = broker
        self.delivery = delivery
        self.clock = clock
        self.batch_size = batch_size
        self.senders = senders
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def submit(self, jobs: Iterable[Job]) -> None:
        """Queue committed jobs for publishing (never blocks, never raises for the broker)."""
        if self._closed:
            return  # the relay publishes them
        self._waiting.extend(jobs)
        if not self._waiting:
            return
        self._idle.clear()
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._send(), name=f"publisher-{n}")
                for n in range(self.senders)
            ]
        self._wake.set()

    async def flush(self) -> None:
        """Return once every job submitted so far has been handed over (or left to the
        relay)."""
        await self._idle.wait()

    async def aclose(self, drain_seconds: float = 5.0) -> None:
        """Send what is waiting, for at most ``drain_seconds``, then stop the senders; anything
        left stays in the outbox for the relay."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                await self.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _send(self) -> None:
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [
                self._waiting.popleft() for _ in range(min(self.batch_size, len(self._waiting)))
            ]
            self._busy += 1
            try:
                await self._publish(batch)
            except JobServiceError as exc:  # the job log could not record the outcome
                log.warning(
                    "recording %d published jobs failed, the relay has them: %s",
                    len(batch),
                    exc,
                    extra={"action": "publish_record_failed"},
                )
            finally:
                self._busy -= 1
                if not self._waiting and not self._busy:
                    self._idle.set()

    async def _publish(self, jobs: list[Job]) -> None:
        try:
            message_ids = await self.broker.publish_batch([self.delivery(job) for job in jobs])
        except BrokerRejected as exc:
            if len(jobs) == 1:
                await self._defer(jobs, exc)
                return
            # One entry spoils a batch: send them one by one, so only that one waits.
            log.warning(
                "the broker refused a batch of %d (%s); publishing them one by one",
                len(jobs),
                exc,
                extra={"action": "publish_batch_refused"},
            )
            for job in jobs:
                await self._publish([job])
            return
        except (BrokerUnavailable, JobServiceError) as exc:
            await self._defer(jobs, exc)
            return
        await asyncio.to_thread(
            self.job_log.mark_published_many,
            [(job.id, message_id) for job, message_id in zip(jobs, message_ids, strict=True)],
        )

    async def _defer(self, jobs: list[Job], exc: Exception) -> None:
        retry_at = self.clock() + RETRY_AFTER_FAILURE
        extra = {"action": "publish_deferred"}
        if len(jobs) == 1:
            extra["job_id"] = str(jobs[0].id)
        log.warning(
            "broker did not take %d job(s), left to the relay: %s", len(jobs), exc, extra=extra
        )
        await asyncio.to_thread(
            self.job_log.publish_failed_many, [job.id for job in jobs], retry_at
        )
