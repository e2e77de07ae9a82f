"""The broker on the official QStash SDK: real Upstash, or any QStash-compatible server (the
embedded local one included) at ``base_url``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import httpx
from qstash import AsyncQStash
from qstash.errors import DailyMessageLimitExceededError, QStashError, RateLimitExceededError
from qstash.message import BatchRequest, BatchResponse, FlowControl, PublishResponse

from jobsvc.broker.delivery import CronSchedule, Delivery
from jobsvc.broker.envelope import CONTENT_TYPE
from jobsvc.broker.errors import BrokerRejected
from jobsvc.errors import BrokerUnavailable, JobServiceError, ScheduleNotFound

log = logging.getLogger("jobsvc.broker")

# The SDK reports an HTTP error status only inside its message.
_STATUS = re.compile(r"^Request failed with status: (\d{3})\b")
# Statuses that mean "come back later" rather than "never like this".
_TRANSIENT_4XX = frozenset({408, 425, 429})
# The flow-control key of the deliveries to jobsvc's sidecars.
DEFAULT_FLOW_CONTROL_KEY = "jobsvc-sidecar"


class _Gone(Exception):
    """QStash no longer holds the message (404 to a cancel)."""


class QStashBroker:
    """Publishes through ``qstash.AsyncQStash``.

    ``request_timeout_seconds`` bounds each call as a whole, the SDK's own retries included;
    ``client_retries`` and ``client_backoff_seconds`` (doubling) configure those retries of a
    request that did not get an answer (the SDK also sleeps after the last one: 0.3 s in all by
    default). Its own defaults (5 retries, up to 7 s apart) would hold Enqueue for 12 s when
    QStash is down; the relay retries later anyway, and the deduplication id makes a retried
    publish harmless.

    ``delivery_parallelism`` (None: unbounded) caps, through QStash's flow control under
    ``flow_control_key``, how many deliveries of the messages and schedules published here
    QStash has in flight at once. Set to what the sidecars run at once, it makes a load they
    cannot finish quickly wait in QStash's queue, instead of being delivered, refused with
    ``Overloaded`` and retried (each refusal spends one of the job's retries).
    """

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        request_timeout_seconds: float = 10.0,
        client_retries: int = 1,
        client_backoff_seconds: float = 0.1,
        delivery_parallelism: int | None = None,
        flow_control_key: str = DEFAULT_FLOW_CONTROL_KEY,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            # The SDK would fall back to QSTASH_URL for an empty one: say so instead.
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if request_timeout_seconds <= 0:
            raise ValueError("request_timeout_seconds must be positive")
        if delivery_parallelism is not None and delivery_parallelism < 1:
            raise ValueError("delivery_parallelism must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._timeout = request_timeout_seconds
        self._flow_control: FlowControl | None = (
            None
            if delivery_parallelism is None
            else {"key": flow_control_key, "parallelism": delivery_parallelism}
        )
        self._client = AsyncQStash(
            token,
            base_url=self.base_url,
            retry={
                "retries": max(0, client_retries),
                "backoff": lambda attempt: client_backoff_seconds * 1000 * 2**attempt,
            },
        )

    async def publish(self, delivery: Delivery) -> str:
        async with self._call("publish"):
            response = await self._client.message.publish(
                url=delivery.url,
                body=delivery.body,
                content_type=CONTENT_TYPE,
                retries=delivery.retries,
                delay=_whole_seconds(delivery.delay),
                not_before=_unix_seconds(delivery.not_before),
                deduplication_id=delivery.deduplication_id,
                timeout=_whole_seconds(delivery.timeout),
                failure_callback=delivery.failure_callback,
                label=delivery.job_type.value,
                flow_control=self._flow_control,
            )
        if not isinstance(response, PublishResponse):  # only a URL group answers with a list
            raise BrokerRejected(f"QStash treated {delivery.url!r} as a URL group")
        if response.deduplicated:
            _log_deduplicated(delivery, response.message_id)
        return response.message_id

    async def publish_batch(self, deliveries: Sequence[Delivery]) -> list[str]:
        if not deliveries:
            return []
        async with self._call("batch publish"):
            responses = await self._client.message.batch(
                [_batch_request(delivery, self._flow_control) for delivery in deliveries]
            )
        if len(responses) != len(deliveries):
            raise BrokerUnavailable(
                f"QStash answered a batch of {len(deliveries)} with {len(responses)} entries"
            )
        message_ids: list[str] = []
        for delivery, response in zip(deliveries, responses, strict=True):
            if not isinstance(response, BatchResponse):
                raise BrokerRejected(f"QStash treated {delivery.url!r} as a URL group")
            if response.deduplicated:
                _log_deduplicated(delivery, response.message_id)
            message_ids.append(response.message_id)
        return message_ids

    async def create_schedule(self, schedule: CronSchedule) -> str:
        async with self._call("create_schedule"):
            schedule_id: str = await self._client.schedule.create(
                destination=schedule.url,
                cron=schedule.cron_expression,
                body=schedule.body,
                content_type=CONTENT_TYPE,
                retries=schedule.retries,
                timeout=_whole_seconds(schedule.timeout),
                failure_callback=schedule.failure_callback,
                schedule_id=schedule.schedule_id,
                label=schedule.job_type.value,
                flow_control=self._flow_control,
            )
        return schedule_id

    async def delete_schedule(self, schedule_id: str) -> None:
        async with self._call("delete_schedule", not_found=_unknown_schedule(schedule_id)):
            await self._client.schedule.delete(schedule_id)

    async def pause_schedule(self, schedule_id: str) -> None:
        async with self._call("pause_schedule", not_found=_unknown_schedule(schedule_id)):
            await self._client.schedule.pause(schedule_id)

    async def resume_schedule(self, schedule_id: str) -> None:
        async with self._call("resume_schedule", not_found=_unknown_schedule(schedule_id)):
            await self._client.schedule.resume(schedule_id)

    async def cancel(self, message_id: str) -> bool:
        try:
            async with self._call("cancel", not_found=_Gone()):
                await self._client.message.cancel(message_id)
        except _Gone:
            return False
        return True

    async def delete_dlq(self, dlq_id: str) -> bool:
        try:
            async with self._call("delete the DLQ entry", not_found=_Gone()):
                await self._client.dlq.delete(dlq_id)
        except _Gone:
            return False
        return True

    async def aclose(self) -> None:
        # The SDK has no close of its own; its httpx pool is all it holds.
        await self._client.http._client.aclose()

    @contextlib.asynccontextmanager
    async def _call(
        self, operation: str, *, not_found: Exception | None = None
    ) -> AsyncIterator[None]:
        """Bound one SDK call in time and turn what it raises into broker errors; a 404 raises
        ``not_found`` when given."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except JobServiceError:
            raise
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"QStash at {self.base_url} did not answer {operation} within {self._timeout:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise BrokerUnavailable(
                f"QStash at {self.base_url} is unreachable ({operation}): {exc!r}"
            ) from exc
        except (RateLimitExceededError, DailyMessageLimitExceededError) as exc:
            raise BrokerUnavailable(f"QStash rate limit ({operation}): {exc}") from exc
        except QStashError as exc:
            match = _STATUS.match(str(exc))
            status = int(match.group(1)) if match else None
            if status == 404 and not_found is not None:
                raise not_found from exc
            if status is not None and (status >= 500 or status in _TRANSIENT_4XX):
                raise BrokerUnavailable(f"QStash failed {operation}: {exc}") from exc
            raise BrokerRejected(f"QStash refused {operation}: {exc}", status=status) from exc
        except (ValueError, KeyError) as exc:
            # A 2xx whose body is not QStash's JSON: something in between (a proxy) answered.
            raise BrokerUnavailable(
                f"unexpected answer from {self.base_url} to {operation}: {exc!r}"
            ) from exc


def _log_deduplicated(delivery: Delivery, message_id: str) -> None:
    log.info(
        "publish of job %s deduplicated to %s",
        delivery.job_id,
        message_id,
        extra={"action": "publish_deduplicated", "job_id": str(delivery.job_id)},
    )


def _batch_request(delivery: Delivery, flow_control: FlowControl | None) -> BatchRequest:
    # The SDK serialises the batch as JSON: the body goes as text (an envelope is UTF-8 JSON).
    request: BatchRequest = {
        "url": delivery.url,
        "body": delivery.body.decode(),
        "content_type": CONTENT_TYPE,
        "retries": delivery.retries,
        "label": delivery.job_type.value,
    }
    if delivery.delay is not None:
        request["delay"] = _whole_seconds(delivery.delay) or 0
    if delivery.not_before is not None:
        request["not_before"] = _unix_seconds(delivery.not_before) or 0
    if delivery.deduplication_id is not None:
        request["deduplication_id"] = delivery.deduplication_id
    if delivery.timeout is not None:
        request["timeout"] = _whole_seconds(delivery.timeout) or 1
    if delivery.failure_callback is not None:
        request["failure_callback"] = delivery.failure_callback
    if flow_control is not None:
        request["flow_control"] = flow_control
    return request


def _unknown_schedule(schedule_id: str) -> ScheduleNotFound:
    return ScheduleNotFound(f"schedule {schedule_id} not found in QStash")


def _whole_seconds(span: timedelta | None) -> int | None:
    # QStash counts in whole seconds; rounding up keeps "not before" and "at least" true.
    return None if span is None else math.ceil(span.total_seconds())


def _unix_seconds(moment: datetime | None) -> int | None:
    return None if moment is None else math.ceil(moment.timestamp())
