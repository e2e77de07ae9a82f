"""The bound on handlers running at once, and the HTTP pool sized from it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from jobsvc.adapters.configured import CALLS_PER_HANDLER, http_limits
from jobsvc.errors import Overloaded
from jobsvc.payloads import Platform
from jobsvc.service.handler_slots import HandlerSlots


async def test_a_full_bound_refuses_at_once_with_its_retry_after() -> None:
    slots = HandlerSlots(2, retry_after=timedelta(seconds=3))
    async with slots.taken(), slots.taken():
        assert slots.running == 2
        with pytest.raises(Overloaded) as refused:
            async with slots.taken():
                pytest.fail("a third handler ran")
        assert refused.value.retry_after == timedelta(seconds=3)
        assert refused.value.reason == "OVERLOADED"
    assert slots.running == 0
    async with slots.taken():
        assert slots.running == 1


async def test_a_waiting_caller_runs_when_a_slot_is_freed() -> None:
    slots = HandlerSlots(1)
    order: list[str] = []
    first_holds = asyncio.Event()
    let_go = asyncio.Event()

    async def first() -> None:
        async with slots.taken():
            first_holds.set()
            await let_go.wait()
            order.append("first")

    async def second() -> None:
        async with slots.waited_for():
            order.append("second")

    holder = asyncio.create_task(first())
    await first_holds.wait()
    waiter = asyncio.create_task(second())
    # While one waits, a caller that does not wait is refused: the waiter comes first.
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        async with slots.taken():
            pass
    let_go.set()
    await asyncio.gather(holder, waiter)
    assert order == ["first", "second"]


def test_the_http_pool_has_room_for_every_call_of_every_running_handler() -> None:
    assert len(Platform) == CALLS_PER_HANDLER  # syndication publishes to all platforms at once
    limits = http_limits(64)
    assert limits.max_connections == 64 * CALLS_PER_HANDLER
    assert limits.max_keepalive_connections == 64


def test_at_least_one_handler_must_be_allowed() -> None:
    with pytest.raises(ValueError, match="at least one"):
        HandlerSlots(0)
