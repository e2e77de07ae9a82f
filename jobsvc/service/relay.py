"""The relay: publishes jobs the outbox still holds (broker down at Enqueue, a crash between
commit and publish, an operator's retry whose publish failed), with backoff per job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from jobsvc.errors import BrokerUnavailable, JobServiceError
from jobsvc.service.jobs import JobService

log = logging.getLogger("jobsvc.relay")
BATCH = 100
MAX_BACKOFF = timedelta(minutes=5)


def backoff(publish_attempts: int) -> timedelta:
    """1 s, 2 s, 4 s … up to five minutes between publishes of one job."""
    return min(MAX_BACKOFF, timedelta(seconds=2 ** min(publish_attempts, 16)))


class Relay:
    """Runs ``run_once`` every ``interval`` until stopped."""

    def __init__(
        self, *, service: JobService, interval: timedelta, clock: Callable[[], datetime]
    ) -> None:
        self.service = service
        self.interval = interval
        self.clock = clock

    async def run_once(self) -> int:
        """Publish what is due; how many jobs the broker accepted."""
        job_log = self.service.job_log
        jobs = await asyncio.to_thread(job_log.unpublished, BATCH)
        published = 0
        for job in jobs:
            try:
                message_id = await self.service.broker.publish(self.service.delivery(job))
            except (BrokerUnavailable, JobServiceError) as exc:
                retry_at = self.clock() + backoff(job.publish_attempts)
                await asyncio.to_thread(job_log.publish_failed, job.id, retry_at)
                log.warning(
                    "publishing job %s failed, next try at %s: %s",
                    job.id,
                    retry_at.isoformat(),
                    exc,
                    extra={"action": "relay_publish_failed", "job_id": str(job.id)},
                )
                continue
            await asyncio.to_thread(job_log.mark_published, job.id, message_id)
            published += 1
        if published:
            log.info("relay published %d jobs", published, extra={"action": "relay_published"})
        return published

    async def run(self) -> None:
        """Forever (until cancelled); a failing round is logged and the next one comes."""
        while True:
            try:
                await self.run_once()
            except JobServiceError as exc:
                log.warning("relay round failed: %s", exc, extra={"action": "relay_failed"})
            await asyncio.sleep(self.interval.total_seconds())
