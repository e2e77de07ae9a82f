"""Cron schedules: stored, fired on time, each firing published as a new message."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select

from jobsvc.localqstash import tables
from jobsvc.localqstash.cron import next_fire_time, parse_cron
from jobsvc.localqstash.durations import FlowControl
from jobsvc.localqstash.engine import Engine
from jobsvc.localqstash.errors import BadRequest, NotFound
from jobsvc.localqstash.messages import (
    DELIVERED,
    Message,
    body_fields,
    flow_control_fields,
    new_id,
    now_ms,
)
from jobsvc.localqstash.options import Options
from jobsvc.localqstash.store import Statement
from jobsvc.localqstash.users import User

log = logging.getLogger("jobsvc.localqstash.schedules")
MAX_LAST_STATES = 10


@dataclass(kw_only=True)
class Schedule:
    schedule_id: str
    user_id: str
    cron: str
    destination: str
    body: bytes
    options: dict[str, Any]
    created_at: int
    paused: bool = False
    last_schedule_time: int | None = None
    last_states: dict[str, str] = field(default_factory=dict)
    next_fire: float = 0.0  # event-loop time of the next firing
    cron_time: float = 0.0  # unix seconds the next firing stands for

    def to_row(self) -> dict[str, Any]:
        return {
            "schedule_id": self.schedule_id,
            "user_id": self.user_id,
            "cron": self.cron,
            "destination": self.destination,
            "paused": self.paused,
            "created_at": self.created_at,
            "last_schedule_time": self.last_schedule_time,
            "last_states": self.last_states,
            "body": self.body,
            "data": self.options,
        }

    def rebuild_options(self) -> Options:
        o = self.options
        fc = o.get("flowControl")
        return Options(
            method=o["method"],
            forward=o["forward"],
            delay_seconds=o.get("delay"),
            retries=o.get("retries"),
            retry_delay_expression=o.get("retryDelayExpression"),
            callback=o.get("callback"),
            failure_callback=o.get("failureCallback"),
            callback_headers=o.get("callbackHeaders") or {},
            failure_callback_headers=o.get("failureCallbackHeaders") or {},
            timeout_seconds=o.get("timeout"),
            flow_control=FlowControl(fc[0], fc[1], fc[2], fc[3]) if fc else None,
            labels=o.get("labels") or [],
            redact=o.get("redact") or [],
            queue_name=o.get("queueName"),
        )

    def to_json(self, *, next_schedule_time: int | None) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {
            "scheduleId": self.schedule_id,
            "cron": self.cron,
            "destination": self.destination,
            "createdAt": self.created_at,
            "method": o["method"],
            "header": o["forward"],
            "retries": 3 if o.get("retries") is None else o["retries"],
            "isPaused": self.paused,
            "callerIP": o.get("callerIp") or "",
            "callerIp": o.get("callerIp") or "",
            "lastScheduleStates": self.last_states,
        }
        out.update(body_fields(self.body))
        optional = {
            "callback": o.get("callback"),
            "failureCallback": o.get("failureCallback"),
            "callbackHeader": o.get("callbackHeaders") or None,
            "failureCallbackHeader": o.get("failureCallbackHeaders") or None,
            "delay": int(o["delay"]) if o.get("delay") else None,
            "timeout": int(o["timeout"]) if o.get("timeout") else None,
            "queueName": o.get("queueName"),
            "retryDelayExpression": o.get("retryDelayExpression"),
            "label": o["labels"][0] if o.get("labels") else None,
            "labels": o.get("labels") or None,
            "lastScheduleTime": self.last_schedule_time,
            "nextScheduleTime": next_schedule_time,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if o.get("flowControl"):
            fc = o["flowControl"]
            out.update(flow_control_fields(FlowControl(fc[0], fc[1], fc[2], fc[3])))
        return out


class Scheduler:
    """Keeps every schedule in memory and fires the due ones."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.schedules: dict[str, Schedule] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        engine.on_final = self._record

    async def start(self) -> None:
        rows = await self.engine.store.read(
            lambda conn: conn.execute(select(tables.schedules)).fetchall()
        )
        for row in rows:
            # One unreadable row (a cron that never fires, stored by an older version) is left
            # aside: the others are served.
            try:
                schedule = Schedule(
                    schedule_id=row.schedule_id,
                    user_id=row.user_id,
                    cron=row.cron,
                    destination=row.destination,
                    body=bytes(row.body),
                    options=row.data,
                    created_at=row.created_at,
                    paused=row.paused,
                    last_schedule_time=row.last_schedule_time,
                    last_states=row.last_states or {},
                )
                schedule.rebuild_options()
                self._arm(schedule)
            except Exception:
                self.schedules.pop(row.schedule_id, None)
                log.exception(
                    "stored schedule %s cannot be armed; left aside",
                    row.schedule_id,
                    extra={"action": "schedule_left_aside"},
                )
        self._task = asyncio.create_task(self._loop(), name="qstash-schedules")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _arm(self, schedule: Schedule, *, fired: bool = False) -> None:
        """Aim at the next cron time. On a scaled clock the schedule keeps its own cron time, so
        a ``* * * * *`` schedule fires every scaled minute rather than racing the wall clock."""
        wall = time.time()
        base = schedule.cron_time if fired and self.engine.scale != 1 else wall
        schedule.cron_time = next_fire_time(schedule.cron, base)
        gap = schedule.cron_time - base
        schedule.next_fire = asyncio.get_running_loop().time() + gap * self.engine.scale
        self.schedules[schedule.schedule_id] = schedule
        heapq.heappush(self._heap, (schedule.next_fire, schedule.schedule_id))
        self._wake.set()

    def next_schedule_time_ms(self, schedule: Schedule) -> int:
        return int(schedule.cron_time * 1000)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, schedule_id = heapq.heappop(self._heap)
                schedule = self.schedules.get(schedule_id)
                if schedule is None or schedule.next_fire != when:
                    continue
                if not schedule.paused:
                    try:
                        await self._fire(schedule)
                    except Exception:
                        log.exception(
                            "schedule %s failed to fire",
                            schedule_id,
                            extra={"action": "schedule_fire_failed"},
                        )
                if self.schedules.get(schedule_id) is schedule:
                    try:
                        self._arm(schedule, fired=True)
                    except BadRequest:  # fires no more: nothing to wait for
                        self.schedules.pop(schedule_id, None)
                        log.warning(
                            "schedule %s fires no more",
                            schedule_id,
                            extra={"action": "schedule_exhausted"},
                        )
            self._wake.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fire(self, schedule: Schedule) -> None:
        user = self._user(schedule.user_id)
        prepared = self.engine.prepare(
            user,
            schedule.destination,
            schedule.rebuild_options(),
            schedule.body,
            caller_ip=schedule.options.get("callerIp"),
            schedule_id=schedule.schedule_id,
        )
        schedule.last_schedule_time = now_ms()
        for result in prepared.results:
            schedule.last_states[result.message_id] = "IN_PROGRESS"
        while len(schedule.last_states) > MAX_LAST_STATES:
            schedule.last_states.pop(next(iter(schedule.last_states)))
        prepared.ops.append(self._save_op(schedule))
        await self.engine.commit(prepared)

    def _user(self, user_id: str) -> User:
        for user in self.engine.users.values():
            if user.user_id == user_id:
                return user
        raise NotFound(f"user {user_id} not found")

    def _save_op(self, schedule: Schedule) -> Statement:
        row = schedule.to_row()

        def run(conn: Connection) -> None:
            table = tables.schedules
            conn.execute(delete(table).where(table.c.schedule_id == schedule.schedule_id))
            conn.execute(table.insert().values(**row))

        return Statement(run)

    # -- the API --------------------------------------------------------------------------------

    async def create(
        self, user: User, destination: str, options: Options, body: bytes, *, caller_ip: str | None
    ) -> Schedule:
        """Create a schedule, or replace the one with ``options.schedule_id``."""
        assert options.cron is not None
        parse_cron(options.cron)
        self.engine.check_plan(options)  # refused now, not at every firing
        self.engine.url_groups.targets(user, destination)  # the destination must exist now
        schedule_id = options.schedule_id or new_id("scd_")
        existing = self.schedules.get(schedule_id)
        if existing is not None and existing.user_id != user.user_id:
            raise BadRequest(f"schedule id {schedule_id} is taken")
        fc = options.flow_control
        schedule = Schedule(
            schedule_id=schedule_id,
            user_id=user.user_id,
            cron=options.cron,
            destination=destination,
            body=body,
            created_at=existing.created_at if existing else now_ms(),
            paused=existing.paused if existing else False,
            last_schedule_time=existing.last_schedule_time if existing else None,
            last_states=existing.last_states if existing else {},
            options={
                "method": options.method,
                "forward": options.forward,
                "delay": options.delay_seconds,
                "retries": options.retries,
                "retryDelayExpression": options.retry_delay_expression,
                "callback": options.callback,
                "failureCallback": options.failure_callback,
                "callbackHeaders": options.callback_headers,
                "failureCallbackHeaders": options.failure_callback_headers,
                "timeout": options.timeout_seconds,
                "flowControl": [fc.key, fc.parallelism, fc.rate, fc.period_seconds] if fc else None,
                "labels": options.labels,
                "redact": options.redact,
                "queueName": options.queue_name,
                "callerIp": caller_ip,
            },
        )
        # Replace it in memory first: a firing of the old version while this is being written
        # would otherwise store the old settings over the new ones.
        self.schedules[schedule_id] = schedule
        try:
            await self.engine.store.write(self._save_op(schedule))
        except BaseException:
            if existing is not None:
                self._arm(existing)
            else:
                self.schedules.pop(schedule_id, None)
            raise
        self._arm(schedule)
        return schedule

    def get(self, user: User, schedule_id: str) -> Schedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None or schedule.user_id != user.user_id:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule

    def list(self, user: User) -> list[Schedule]:
        return sorted(
            (s for s in self.schedules.values() if s.user_id == user.user_id),
            key=lambda s: (s.created_at, s.schedule_id),
        )

    async def delete(self, user: User, schedule_id: str) -> None:
        schedule = self.get(user, schedule_id)

        def run(conn: Connection) -> None:
            conn.execute(
                delete(tables.schedules).where(tables.schedules.c.schedule_id == schedule_id)
            )

        # Forget it first: a firing while the delete is being written would store it again.
        self.schedules.pop(schedule_id, None)
        try:
            await self.engine.store.write(Statement(run))
        except BaseException:
            self._arm(schedule)  # still stored, so still scheduled
            raise

    async def set_paused(self, user: User, schedule_id: str, paused: bool) -> None:
        schedule = self.get(user, schedule_id)
        schedule.paused = paused
        await self.engine.store.write(self._save_op(schedule))
        if not paused:
            self._arm(schedule)

    def _record(self, message: Message) -> None:
        """Note how a firing ended, for ``lastScheduleStates``."""
        schedule = self.schedules.get(message.schedule_id) if message.schedule_id else None
        if schedule is not None and message.message_id in schedule.last_states:
            ok = message.state == DELIVERED
            schedule.last_states[message.message_id] = "SUCCESS" if ok else "FAIL"
            self.engine.store.submit(self._save_op(schedule))  # so a restart keeps it
