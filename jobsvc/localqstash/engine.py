"""The delivery engine: accepts messages durably, keeps the live ones in memory, and delivers
each when it is due and its queue, flow-control key and the server's concurrency cap allow.

Bookkeeping after an attempt is written without waiting for the commit. A crash can therefore
lose that an attempt happened, never the message: whatever was not recorded as ended is
delivered again on restart (at-least-once, as QStash promises).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select, update

from jobsvc.localqstash import tables
from jobsvc.localqstash.callbacks import (
    CALLBACK_PREFIX,
    FAILURE_CALLBACK_PREFIX,
    callback_body,
    callback_message,
)
from jobsvc.localqstash.delivery import Deliverer, Outcome
from jobsvc.localqstash.durations import (
    MAX_RETRY_DELAY_SECONDS,
    bounded_retry_delay,
    default_backoff_seconds,
    later_ms,
    parse_retry_after,
    retry_delay_ms,
)
from jobsvc.localqstash.errors import BadRequest, NotFound, PreconditionFailed
from jobsvc.localqstash.gates import FlowGate, Gate, QueueGate
from jobsvc.localqstash.messages import (
    ACTIVE,
    CANCEL_REQUESTED,
    CANCELED,
    CREATED,
    DELIVERED,
    ERROR,
    FAILED,
    FINAL_STATES,
    RETRY,
    Message,
    new_id,
    now_ms,
)
from jobsvc.localqstash.options import Options
from jobsvc.localqstash.records import dlq_row, event_row, state_update
from jobsvc.localqstash.settings import LocalQStashSettings
from jobsvc.localqstash.signing import new_signing_key
from jobsvc.localqstash.store import Insert, Op, Replace, Statement, Store
from jobsvc.localqstash.urlgroups import UrlGroups
from jobsvc.localqstash.users import User

log = logging.getLogger("jobsvc.localqstash")
RETRY_AFTER_HEADERS = (
    "Retry-After",
    "X-RateLimit-Reset",
    "X-RateLimit-Reset-Requests",
    "X-RateLimit-Reset-Tokens",
)
JANITOR_INTERVAL_SECONDS = 60.0


@dataclass
class Published:
    """One accepted (or deduplicated) message, as publish answers it."""

    message_id: str
    url: str
    deduplicated: bool = False
    topic: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messageId": self.message_id}
        if self.topic:
            out["url"] = self.url
        if self.deduplicated:
            out["deduplicated"] = True
        return out


@dataclass
class Prepared:
    """Messages built for one request, with the writes that make them durable."""

    results: list[Published]
    messages: list[Message]
    ops: list[Op]
    dedup_keys: list[tuple[str, str]]
    # Queues this request created in memory: forgotten again if it is not committed.
    new_queues: list[tuple[str, str]] = field(default_factory=list)


class Engine:
    """Owns live messages, gates, keys, URL groups and deduplication for every user."""

    def __init__(self, settings: LocalQStashSettings, store: Store, users: Iterable[User]) -> None:
        self.settings = settings
        self.store = store
        self.scale = settings.time_scale
        self.users = {user.token: user for user in users}
        self.keys: dict[str, tuple[str, str]] = {}
        self.live: dict[str, Message] = {}
        self.queues: dict[tuple[str, str], QueueGate] = {}
        self.flows: dict[tuple[str, str], FlowGate] = {}
        self.url_groups = UrlGroups(store)
        self.dedup: dict[tuple[str, str], tuple[str, int]] = {}
        self.capacity = Gate()
        self.deliverer = Deliverer(max_connections=settings.max_concurrent_deliveries)
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._dlq_seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self.on_final: Callable[[Message], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.deliverer.start()
        await self.store.read(self._load)
        for message in sorted(self.live.values(), key=lambda m: (m.due_at, m.created_at)):
            self._admit(message)
        self._loops.append(asyncio.create_task(self._due_loop(), name="qstash-due"))
        self._loops.append(asyncio.create_task(self._janitor_loop(), name="qstash-janitor"))
        log.info(
            "engine started with %d live messages",
            len(self.live),
            extra={"action": "engine_started"},
        )

    async def close(self, *, grace_seconds: float = 5.0) -> None:
        """Stop starting attempts, let running ones finish for a while, then cancel them."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.deliverer.close()

    def _load(self, conn: Connection) -> None:
        for user in self.users.values():
            row = conn.execute(
                select(tables.signing_keys).where(tables.signing_keys.c.user_id == user.user_id)
            ).first()
            if row is None:
                conn.execute(
                    tables.signing_keys.insert().values(
                        user_id=user.user_id,
                        current=user.current_signing_key,
                        next=user.next_signing_key,
                    )
                )
                self.keys[user.user_id] = (user.current_signing_key, user.next_signing_key)
            else:
                self.keys[user.user_id] = (row.current, row.next)
        conn.commit()
        # One unreadable row is logged and left aside: start-up serves the rest.
        for row in conn.execute(select(tables.queues)):
            with _left_aside("queue", row):
                self.queues[(row.user_id, row.name)] = QueueGate(
                    name=row.name,
                    parallelism=row.parallelism,
                    paused=row.paused,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                )
        self.url_groups.load(conn)
        for row in conn.execute(select(tables.flow_controls)):
            with _left_aside("flow control key", row):
                gate = self._flow(row.user_id, row.flow_control_key)
                gate.paused = row.paused
                gate.pinned_parallelism = row.pinned_parallelism
                gate.pinned_rate = row.pinned_rate
                gate.pinned_period = row.pinned_period
        now = now_ms()
        for row in conn.execute(
            select(tables.deduplication).where(tables.deduplication.c.expires_at > now)
        ):
            self.dedup[(row.user_id, row.dedup_key)] = (row.message_id, row.expires_at)
        for row in conn.execute(
            select(tables.messages).where(tables.messages.c.state.not_in(FINAL_STATES))
        ):
            with _left_aside("message", row):
                message = Message.from_row(row)
                self.live[message.message_id] = message

    # -- users and keys -------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> User | None:
        return self.users.get(token) if token else None

    def signing_keys(self, user: User) -> tuple[str, str]:
        return self.keys[user.user_id]

    async def rotate_keys(self, user: User) -> tuple[str, str]:
        """The next key becomes current and a fresh next key is made, as QStash rotates."""
        _, nxt = self.keys[user.user_id]
        keys = (nxt, new_signing_key())
        await self.store.write(
            Statement(
                lambda conn: conn.execute(
                    update(tables.signing_keys)
                    .where(tables.signing_keys.c.user_id == user.user_id)
                    .values(current=keys[0], next=keys[1])
                )
            )
        )
        self.keys[user.user_id] = keys
        return keys

    # -- accepting messages ---------------------------------------------------------------------

    def prepare(
        self,
        user: User,
        destination: str,
        options: Options,
        body: bytes,
        *,
        caller_ip: str | None,
        queue_name: str | None = None,
        schedule_id: str | None = None,
    ) -> Prepared:
        """Build the messages a publish makes (one per URL-group endpoint) without storing them."""
        targets = self.url_groups.targets(user, destination)
        prepared = Prepared(results=[], messages=[], ops=[], dedup_keys=[])
        now = now_ms()
        due = now
        not_before = 0
        if options.not_before is not None:
            not_before = options.not_before * 1000
            due = later_ms(now, (not_before - now) / 1000, scale=self.scale)
        elif options.delay_seconds:
            not_before = later_ms(now, options.delay_seconds)
            due = later_ms(now, options.delay_seconds, scale=self.scale)
        self.check_plan(options, due - now)
        queue_name = queue_name or options.queue_name
        if queue_name is not None:
            queue_ops = self._ensure_queue(user, queue_name, now)
            if queue_ops:
                prepared.new_queues.append((user.user_id, queue_name))
            prepared.ops.extend(queue_ops)
        for url, topic_name, endpoint_name in targets:
            dedup_key = self._dedup_key(destination, url, options, body)
            if dedup_key is not None:
                existing = self.dedup.get((user.user_id, dedup_key))
                if existing is not None and existing[1] > now:
                    prepared.results.append(
                        Published(existing[0], url, deduplicated=True, topic=topic_name is not None)
                    )
                    continue
            message = Message(
                message_id=new_id("msg_"),
                user_id=user.user_id,
                url=url,
                method=options.method,
                body=body,
                headers=options.forward,
                callback=options.callback,
                failure_callback=options.failure_callback,
                callback_headers=options.callback_headers,
                failure_callback_headers=options.failure_callback_headers,
                max_retries=3 if options.retries is None else options.retries,
                retry_delay_expression=options.retry_delay_expression,
                timeout_seconds=options.timeout_seconds,
                not_before=not_before,
                due_at=due,
                created_at=now,
                queue_name=queue_name,
                topic_name=topic_name,
                endpoint_name=endpoint_name,
                schedule_id=schedule_id,
                caller_ip=caller_ip,
                flow_control=options.flow_control,
                labels=options.labels,
                redact=options.redact,
            )
            prepared.messages.append(message)
            prepared.results.append(
                Published(message.message_id, url, topic=topic_name is not None)
            )
            prepared.ops.append(Insert(tables.messages, message.to_row()))
            prepared.ops.append(event_row(message, CREATED, created=True))
            if dedup_key is not None:
                expires = later_ms(now, self.settings.dedup_window_seconds, scale=self.scale)
                self.dedup[(user.user_id, dedup_key)] = (message.message_id, expires)
                prepared.dedup_keys.append((user.user_id, dedup_key))
                prepared.ops.append(_dedup_op(user.user_id, dedup_key, message.message_id, expires))
        return prepared

    def check_plan(self, options: Options, wait_ms: int | None = None) -> None:
        """Limits of the plan the server simulates; QStash answers 412 when one is exceeded.
        ``wait_ms`` defaults to the scaled wait of ``options.delay_seconds``."""
        if wait_ms is None:
            now = now_ms()
            wait_ms = later_ms(now, options.delay_seconds or 0, scale=self.scale) - now
        limits = self.settings
        if options.retries is not None and options.retries > limits.max_retries:
            raise PreconditionFailed(
                f"retries {options.retries} exceeds the maximum of {limits.max_retries}"
            )
        if wait_ms / 1000 > limits.max_delay_seconds * self.scale:
            raise PreconditionFailed(
                f"delay exceeds the maximum of {int(limits.max_delay_seconds)} seconds"
            )

    async def commit(self, *batch: Prepared) -> None:
        """Store prepared messages (one transaction) and only then let them be delivered."""
        ops = [op for prepared in batch for op in prepared.ops]
        try:
            if ops:
                await self.store.write(*ops)
        except BaseException:
            self.discard(*batch)
            raise
        for prepared in batch:
            for message in prepared.messages:
                self._admit(message)

    def discard(self, *batch: Prepared) -> None:
        """Undo what preparing did in memory for messages that will not be committed."""
        for prepared in batch:
            for key in prepared.dedup_keys:
                self.dedup.pop(key, None)
            for queue_key in prepared.new_queues:
                self.queues.pop(queue_key, None)

    async def publish(
        self, user: User, destination: str, options: Options, body: bytes, **kwargs: Any
    ) -> list[Published]:
        prepared = self.prepare(user, destination, options, body, **kwargs)
        await self.commit(prepared)
        return prepared.results

    def _dedup_key(self, destination: str, url: str, options: Options, body: bytes) -> str | None:
        if options.deduplication_id is not None:
            base = "id:" + options.deduplication_id
        elif options.content_based_deduplication:
            digest = hashlib.sha256()
            for part in (
                destination,
                body.decode("latin-1"),
                json.dumps(options.forward, sort_keys=True),
            ):
                digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
            base = "content:" + digest.hexdigest()
        else:
            return None
        if len(base) > 80:  # the key column holds 128 characters
            base = "sha256:" + hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()
        # URL-group endpoints each keep their own copy.
        return base if url == destination else base + "|" + hashlib.sha1(url.encode()).hexdigest()

    # -- scheduling deliveries ------------------------------------------------------------------

    def _admit(self, message: Message) -> None:
        self.live[message.message_id] = message
        if message.due_at <= now_ms():
            self._try_start(message)
        else:
            heapq.heappush(self._heap, (message.due_at, next(self._seq), message.message_id))
            self._wake.set()

    async def _due_loop(self) -> None:
        while True:
            now = now_ms()
            while self._heap and self._heap[0][0] <= now:
                due, _, message_id = heapq.heappop(self._heap)
                message = self.live.get(message_id)
                if message is not None and message.due_at == due and message.state != ACTIVE:
                    self._try_start(message)
            self._wake.clear()
            timeout = (self._heap[0][0] - now) / 1000 if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _try_start(self, message: Message) -> None:
        if self._closing or message.message_id not in self.live:
            return
        if self.capacity.active >= self.settings.max_concurrent_deliveries:
            self.capacity.waiting.append(message)
            return
        if message.queue_name is not None and not message.holds_queue_slot:
            queue = self._queue(message.user_id, message.queue_name)
            if not queue.has_room():
                queue.waiting.append(message)
                return
            queue.active += 1
            message.holds_queue_slot = True
        if message.flow_control is not None:
            gate = self._flow(message.user_id, message.flow_control.key)
            if not gate.pinned_parallelism and not gate.pinned_rate:
                gate.adopt(message.flow_control)
            until = gate.blocked_until(self.scale)
            if until is not None:
                gate.waiting.append(message)
                if until != math.inf:
                    self._drain_later(gate, until)
                return
            gate.started(self.scale)
        self.capacity.active += 1
        message.state = ACTIVE
        task = asyncio.create_task(self._run(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drain(self, gate: Gate) -> None:
        while gate.waiting:
            if isinstance(gate, QueueGate) and not gate.has_room():
                return
            if isinstance(gate, FlowGate):
                until = gate.blocked_until(self.scale)
                if until is not None:
                    if until != math.inf:
                        self._drain_later(gate, until)
                    return
            if gate is self.capacity and gate.active >= self.settings.max_concurrent_deliveries:
                return
            self._try_start(gate.waiting.popleft())

    def _drain_later(self, gate: Gate, when_monotonic: float) -> None:
        if id(gate) in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(id(gate), None)
            self._drain(gate)

        self._timers[id(gate)] = loop.call_at(
            loop.time() + max(0.0, when_monotonic - time.monotonic()), fire
        )

    def _queue(self, user_id: str, name: str) -> QueueGate:
        queue = self.queues.get((user_id, name))
        if queue is None:
            now = now_ms()
            queue = self.queues[(user_id, name)] = QueueGate(
                name=name, created_at=now, updated_at=now
            )
        return queue

    def _flow(self, user_id: str, key: str) -> FlowGate:
        gate = self.flows.get((user_id, key))
        if gate is None:
            gate = self.flows[(user_id, key)] = FlowGate(key=key)
        return gate

    def _ensure_queue(self, user: User, name: str, now: int) -> list[Op]:
        if (user.user_id, name) in self.queues:
            return []
        self._queue(user.user_id, name)
        return [queue_upsert_op(user.user_id, self.queues[(user.user_id, name)])]

    # -- one attempt and what follows -----------------------------------------------------------

    async def _run(self, message: Message) -> None:
        user_keys = self.keys[message.user_id]
        timeout = message.timeout_seconds or self.settings.default_timeout_seconds
        self.store.submit(event_row(message, ACTIVE))
        try:
            outcome = await self.deliverer.attempt(
                message, signing_key=user_keys[0], timeout_seconds=timeout
            )
        except asyncio.CancelledError:
            message.state = CREATED
            raise
        finally:
            self.capacity.active -= 1
            if message.flow_control is not None:
                gate = self._flow(message.user_id, message.flow_control.key)
                gate.active -= 1
                self._drain(gate)
            self._drain(self.capacity)
        try:
            self._settle(message, outcome)
        except Exception:
            log.exception(
                "settling %s failed", message.message_id, extra={"action": "settle_failed"}
            )

    def _settle(self, message: Message, outcome: Outcome) -> None:
        ops: list[Op] = []
        callbacks: list[Message] = []
        if outcome.ok:
            self._finish(message, DELIVERED, outcome, ops)
            callbacks = self._callbacks(message, outcome, ops)
        elif message.cancel_requested:
            ops.append(event_row(message, ERROR, outcome=outcome))
            self._finish(message, CANCELED, outcome, ops)
        elif outcome.non_retryable or message.retried >= message.max_retries:
            dlq_id = f"{now_ms()}-{next(self._dlq_seq)}"
            ops.append(event_row(message, ERROR, outcome=outcome))
            ops.append(Insert(tables.dlq, dlq_row(message, outcome, dlq_id)))
            self._finish(message, FAILED, outcome, ops)
            callbacks = self._callbacks(message, outcome, ops, dlq_id=dlq_id)
        else:
            delay = self._retry_delay_seconds(message, outcome)
            # The callback reports the attempt that failed, so `retried` before counting it.
            callbacks = self._callbacks(message, outcome, ops)
            message.retried += 1
            message.due_at = later_ms(now_ms(), delay, scale=self.scale)
            message.state = RETRY
            ops.append(event_row(message, ERROR, outcome=outcome))
            ops.append(event_row(message, RETRY, next_delivery=message.due_at))
            ops.append(state_update(message))
            heapq.heappush(self._heap, (message.due_at, next(self._seq), message.message_id))
            self._wake.set()
        if callbacks:
            # A callback may look up what it reports (the DLQ entry, the message): deliver it
            # only once that is committed.
            task = asyncio.create_task(self._commit_then_admit(ops, callbacks))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.store.submit(*ops)

    async def _commit_then_admit(self, ops: list[Op], callbacks: list[Message]) -> None:
        try:
            await self.store.write(*ops)
        except Exception:  # the rows are not stored: neither is the callback, nothing to send
            log.exception("recording an attempt failed", extra={"action": "settle_write_failed"})
            return
        for callback in callbacks:
            self._admit(callback)

    def _finish(self, message: Message, state: str, outcome: Outcome | None, ops: list[Op]) -> None:
        message.state = state
        self.live.pop(message.message_id, None)
        if self.on_final is not None:
            self.on_final(message)
        ops.append(event_row(message, state, outcome=outcome if state == DELIVERED else None))
        ops.append(state_update(message))
        if message.holds_queue_slot and message.queue_name is not None:
            message.holds_queue_slot = False
            queue = self.queues.get((message.user_id, message.queue_name))
            if queue is not None:  # None: the queue was deleted meanwhile
                queue.active -= 1
                self._drain(queue)

    def _retry_delay_seconds(self, message: Message, outcome: Outcome) -> float:
        """The answer's Retry-After (up to a day), else the message's expression (capped at a
        day), else the default backoff: always a finite number of seconds."""
        for name in RETRY_AFTER_HEADERS:
            value = outcome.header(name)
            if value is not None:
                seconds = parse_retry_after(value, now=time.time())
                if seconds is not None and seconds <= MAX_RETRY_DELAY_SECONDS:
                    return seconds
        if message.retry_delay_expression:
            try:
                ms = retry_delay_ms(message.retry_delay_expression, retried=message.retried)
            except BadRequest:  # checked at publish; stored before that check existed
                pass
            else:
                if not math.isnan(ms):
                    return bounded_retry_delay(ms / 1000)
        return default_backoff_seconds(message.retried)

    def _callbacks(
        self,
        message: Message,
        outcome: Outcome,
        ops: list[Op],
        *,
        dlq_id: str | None = None,
    ) -> list[Message]:
        """The callback (every attempt) and the failure callback (once, with the DLQ id) as new
        messages, their rows added to ``ops`` in the same transaction as the source's update."""
        made: list[Message] = []
        targets: list[tuple[str, dict[str, list[str]], bool]] = []
        if message.callback and not message.is_callback:
            targets.append((message.callback, message.callback_headers, False))
        if dlq_id is not None and message.failure_callback and not message.is_callback:
            targets.append((message.failure_callback, message.failure_callback_headers, True))
        for url, config, failure in targets:
            prefix = FAILURE_CALLBACK_PREFIX if failure else CALLBACK_PREFIX
            body = callback_body(message, outcome, dlq_id if failure else None)
            callback = callback_message(message, url, config, prefix, body)
            ops.insert(0, event_row(callback, CREATED, created=True))
            ops.insert(0, Insert(tables.messages, callback.to_row()))
            made.append(callback)
        return made

    # -- cancelling -----------------------------------------------------------------------------

    async def cancel(self, user: User, message_ids: Iterable[str]) -> int:
        """Cancel live messages of ``user``; one in flight ends after its attempt, unretried."""
        ops: list[Op] = []
        count = 0
        for message_id in message_ids:
            message = self.live.get(message_id)
            if message is None or message.user_id != user.user_id or message.cancel_requested:
                continue
            count += 1
            message.cancel_requested = True
            ops.append(event_row(message, CANCEL_REQUESTED))
            if message.state == ACTIVE:
                continue
            for gate in self._gates_of(message):
                if message in gate.waiting:
                    gate.waiting.remove(message)
            self._finish(message, CANCELED, None, ops)
        if ops:
            await self.store.write(*ops)
        return count

    def live_ids(self, user: User, matches: Callable[[Message], bool]) -> list[str]:
        return [
            m.message_id for m in self.live.values() if m.user_id == user.user_id and matches(m)
        ]

    def _gates_of(self, message: Message) -> list[Gate]:
        gates: list[Gate] = [self.capacity]
        if message.queue_name is not None:
            gates.append(self._queue(message.user_id, message.queue_name))
        if message.flow_control is not None:
            gates.append(self._flow(message.user_id, message.flow_control.key))
        return gates

    # -- queues and flow control ----------------------------------------------------------------

    async def upsert_queue(
        self, user: User, name: str, *, parallelism: int | None, paused: bool | None
    ) -> QueueGate:
        queue = self._queue(user.user_id, name)
        if parallelism is not None:
            queue.parallelism = parallelism
        if paused is not None:
            queue.paused = paused
        queue.updated_at = now_ms()
        await self.store.write(queue_upsert_op(user.user_id, queue))
        self._drain(queue)
        return queue

    async def delete_queue(self, user: User, name: str) -> None:
        """Delete a queue and cancel the messages still in it (one in flight finishes first)."""
        if (user.user_id, name) not in self.queues:
            raise NotFound(f"queue {name} not found")
        await self.cancel(user, self.live_ids(user, lambda m: m.queue_name == name))
        self.queues.pop((user.user_id, name), None)
        await self.store.write(
            Statement(
                lambda conn: conn.execute(
                    delete(tables.queues).where(
                        tables.queues.c.user_id == user.user_id, tables.queues.c.name == name
                    )
                )
            )
        )

    def queue_lag(self, user: User, name: str) -> int:
        return sum(
            1 for m in self.live.values() if m.user_id == user.user_id and m.queue_name == name
        )

    async def save_flow(self, user: User, key: str) -> FlowGate:
        gate = self._flow(user.user_id, key)
        row = {
            "user_id": user.user_id,
            "flow_control_key": key,
            "paused": gate.paused,
            "pinned_parallelism": gate.pinned_parallelism,
            "pinned_rate": gate.pinned_rate,
            "pinned_period": gate.pinned_period,
        }

        def upsert(conn: Connection) -> None:
            table = tables.flow_controls
            conn.execute(
                delete(table).where(
                    table.c.user_id == user.user_id, table.c.flow_control_key == key
                )
            )
            conn.execute(table.insert().values(**row))

        await self.store.write(Statement(upsert))
        self._drain(gate)
        return gate

    # -- housekeeping ---------------------------------------------------------------------------

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL_SECONDS)
            try:
                self.purge()
            except Exception:
                log.exception("purge failed", extra={"action": "purge_failed"})

    def purge(self) -> None:
        """Forget ended messages, old events and expired deduplication ids."""
        now = now_ms()
        messages_before = now - int(self.settings.message_retention_seconds * 1000)
        events_before = now - int(self.settings.event_retention_seconds * 1000)
        for key, (_, expires) in list(self.dedup.items()):
            if expires <= now:
                del self.dedup[key]

        def run(conn: Connection) -> None:
            conn.execute(
                delete(tables.messages).where(
                    tables.messages.c.state.in_(FINAL_STATES),
                    tables.messages.c.updated_at < messages_before,
                )
            )
            conn.execute(delete(tables.events).where(tables.events.c.time < events_before))
            conn.execute(
                delete(tables.deduplication).where(tables.deduplication.c.expires_at <= now)
            )

        self.store.submit(Statement(run))


@contextlib.contextmanager
def _left_aside(what: str, row: Any) -> Iterator[None]:
    """Log a stored row that cannot be loaded instead of failing start-up."""
    try:
        yield
    except Exception:
        key = getattr(row, "message_id", None) or getattr(row, "name", None) or "?"
        log.exception(
            "stored %s %s cannot be loaded; left aside",
            what,
            key,
            extra={"action": "row_left_aside"},
        )


def _dedup_op(user_id: str, key: str, message_id: str, expires: int) -> Replace:
    return Replace(
        tables.deduplication,
        ("user_id", "dedup_key"),
        {"user_id": user_id, "dedup_key": key, "message_id": message_id, "expires_at": expires},
    )


def queue_upsert_op(user_id: str, queue: QueueGate) -> Statement:
    def run(conn: Connection) -> None:
        table = tables.queues
        conn.execute(delete(table).where(table.c.user_id == user_id, table.c.name == queue.name))
        conn.execute(
            table.insert().values(
                user_id=user_id,
                name=queue.name,
                parallelism=queue.parallelism,
                paused=queue.paused,
                created_at=queue.created_at,
                updated_at=queue.updated_at,
            )
        )

    return Statement(run)
