"""The ``inline`` broker, ADR-022's rollback plan: no queue at all; ``publish`` runs the job's
delivery right away, inside the caller's request.

What QStash would do and inline does instead:

- Delivery: ``deliver(body, headers)`` (the sidecar's dispatch, in process; no signature) is
  awaited inside ``publish`` with the headers QStash sends (``Upstash-Message-Id``,
  ``Upstash-Retried``, ``Content-Type``). It returns the HTTP status the sidecar would answer, or
  None for "done".
- Retries: a 5xx (or any non-2xx but 489, or an exception) is delivered again at once, up to
  ``retries`` times, with ``Upstash-Retried`` counting up, so the dispatcher sees its last
  attempt exactly as under QStash. There is no backoff (the caller is waiting) and no
  failure callback or dead-letter queue: the dispatcher marks the job failed on its last attempt.
  489 (a permanent failure) stops at once.
- Delays: a ``delay`` or a ``not_before`` in the future raises ``BrokerUnsupported`` rather than
  run a reminder days early; nothing here could wait durably. A past ``not_before`` runs now.
- Schedules: not supported (``BrokerUnsupported``). ``cancel`` finds nothing waiting (False).
- Deduplication: none; a republished delivery runs again, and the dispatcher's guarded claim
  turns it into a no-op for a job that already finished.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from jobsvc.broker.delivery import CronSchedule, Delivery
from jobsvc.broker.envelope import CONTENT_TYPE
from jobsvc.broker.errors import BrokerUnsupported

log = logging.getLogger("jobsvc.broker")

Deliver = Callable[[bytes, Mapping[str, str]], Awaitable[int | None]]
NON_RETRYABLE_STATUS = 489


class InlineBroker:
    """Runs each delivery now, through ``deliver``; see the module docstring for what that
    means for retries, delays and schedules."""

    def __init__(self, *, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, delivery: Delivery) -> str:
        if _waits(delivery):
            raise _cannot_wait()
        message_id = f"inline_{uuid.uuid4().hex}"
        for retried in range(delivery.retries + 1):
            headers = {
                "Content-Type": CONTENT_TYPE,
                "Upstash-Message-Id": message_id,
                "Upstash-Retried": str(retried),
            }
            try:
                status = await self._deliver(delivery.body, headers)
            except Exception:
                # As QStash would see a 500: the delivery failed, deliver it again.
                log.exception(
                    "inline delivery of job %s raised",
                    delivery.job_id,
                    extra={"action": "inline_delivery_error", "job_id": str(delivery.job_id)},
                )
                status = 500
            if status is None or 200 <= status < 300 or status == NON_RETRYABLE_STATUS:
                break
        return message_id

    async def publish_batch(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Each delivery in turn, as ``publish`` runs it; none runs if one would wait."""
        if any(_waits(delivery) for delivery in deliveries):
            raise _cannot_wait()
        return [await self.publish(delivery) for delivery in deliveries]

    async def create_schedule(self, schedule: CronSchedule) -> str:
        raise _no_schedules()

    async def delete_schedule(self, schedule_id: str) -> None:
        raise _no_schedules()

    async def pause_schedule(self, schedule_id: str) -> None:
        raise _no_schedules()

    async def resume_schedule(self, schedule_id: str) -> None:
        raise _no_schedules()

    async def cancel(self, message_id: str) -> bool:
        return False  # every inline delivery has run by the time its publish returned

    async def delete_dlq(self, dlq_id: str) -> bool:
        return False  # inline runs keep no dead-letter queue

    async def aclose(self) -> None:
        return None


def _waits(delivery: Delivery) -> bool:
    if delivery.delay is not None:
        return delivery.delay > timedelta(0)
    return delivery.not_before is not None and delivery.not_before > datetime.now(UTC)


def _cannot_wait() -> BrokerUnsupported:
    return BrokerUnsupported(
        "the inline broker runs jobs at once and cannot delay them; "
        "use the qstash or local broker for delays"
    )


def _no_schedules() -> BrokerUnsupported:
    return BrokerUnsupported(
        "the inline broker has no schedules; use the qstash or local broker for them"
    )
