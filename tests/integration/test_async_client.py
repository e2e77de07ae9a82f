"""The official SDK's asynchronous client against the server: every API family it has."""

from __future__ import annotations

import pytest
from qstash import AsyncQStash
from qstash.errors import QStashError
from qstash.message import FlowControl

from jobsvc.localqstash import LocalQStashServer
from tests.receiver import Receiver, Response


async def test_messages_and_events(async_client: AsyncQStash, receiver: Receiver) -> None:
    delivered = await async_client.message.publish_json(
        url=receiver.url_for("/now"), body={"n": 1}, headers={"X-Kind": "async"}
    )
    pending = await async_client.message.enqueue_json(
        queue="async-q", url=receiver.url_for("/later"), body={"n": 2}
    )
    held = await async_client.message.publish(url=receiver.url_for("/held"), body="h", delay="1h")
    [delivery] = await receiver.wait_for_async(1, path="/now")
    assert delivery.signature_ok, delivery.signature_error
    assert delivery.headers["X-Kind"] == "async"
    assert delivery.header("Upstash-Message-Id") == delivered.message_id
    await receiver.wait_for_async(1, path="/later")
    assert pending.message_id

    message = await async_client.message.get(held.message_id)
    assert message.url == receiver.url_for("/held")
    assert message.not_before - message.created_at == 3_600_000
    await async_client.message.cancel(held.message_id)
    with pytest.raises(QStashError, match="404"):
        await async_client.message.cancel(held.message_id)
    assert await async_client.message.cancel_all() == 0

    logs = await async_client.log.list(filter={"message_id": held.message_id})
    assert [log.state.value for log in logs.logs] == ["CANCELED", "CANCEL_REQUESTED", "CREATED"]


async def test_schedules(async_client: AsyncQStash, receiver: Receiver) -> None:
    schedule_id = await async_client.schedule.create_json(
        destination=receiver.url_for("/cron"), cron="* * * * *", body={"tick": True}
    )
    await receiver.wait_for_async(2, path="/cron")  # every ~60 ms at time_scale 0.001
    schedule = await async_client.schedule.get(schedule_id)
    assert schedule.cron == "* * * * *"
    assert schedule.destination == receiver.url_for("/cron")
    assert [s.schedule_id for s in await async_client.schedule.list()] == [schedule_id]
    await async_client.schedule.pause(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is True
    await async_client.schedule.resume(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is False
    await async_client.schedule.delete(schedule_id)
    assert await async_client.schedule.list() == []
    with pytest.raises(QStashError, match="404"):
        await async_client.schedule.get(schedule_id)


async def test_dead_letter_queue(async_client: AsyncQStash, receiver: Receiver) -> None:
    receiver.respond("/fails", Response(status=500, body="down"))
    ids = [
        (
            await async_client.message.publish(
                url=receiver.url_for("/fails"), body=str(i), retries=0
            )
        ).message_id
        for i in range(3)
    ]
    await receiver.wait_for_async(3, path="/fails")
    for _ in range(200):
        page = await async_client.dlq.list()
        if len(page.messages) == 3:
            break
        await receiver.wait_for_async(3, path="/fails", timeout=0.05)
    assert sorted(m.message_id for m in page.messages) == sorted(ids)
    entry = await async_client.dlq.get(page.messages[0].dlq_id)
    assert entry.response_status == 500
    assert entry.response_body == "down"
    await async_client.dlq.delete(entry.dlq_id)
    rest = [m.dlq_id for m in page.messages[1:]]
    assert await async_client.dlq.delete_many(rest) == 2
    assert (await async_client.dlq.list()).messages == []


async def test_queues_url_groups_keys_and_flow_control(
    async_client: AsyncQStash, server: LocalQStashServer, receiver: Receiver
) -> None:
    await async_client.queue.upsert("jobs", parallelism=2)
    queue = await async_client.queue.get("jobs")
    assert (queue.name, queue.parallelism, queue.paused) == ("jobs", 2, False)
    await async_client.queue.pause("jobs")
    assert (await async_client.queue.get("jobs")).paused is True
    await async_client.queue.resume("jobs")
    assert [q.name for q in await async_client.queue.list()] == ["jobs"]
    await async_client.queue.delete("jobs")
    assert await async_client.queue.list() == []

    await async_client.url_group.upsert_endpoints(
        url_group="team",
        endpoints=[
            {"url": receiver.url_for("/a")},
            {"url": receiver.url_for("/b"), "name": "b"},
        ],
    )
    assert [e.url for e in (await async_client.url_group.get("team")).endpoints] == [
        receiver.url_for("/a"),
        receiver.url_for("/b"),
    ]
    await async_client.url_group.remove_endpoints(
        url_group="team", endpoints=[{"url": receiver.url_for("/a")}]
    )
    assert [g.name for g in await async_client.url_group.list()] == ["team"]
    await async_client.url_group.delete("team")
    assert await async_client.url_group.list() == []

    keys = await async_client.signing_key.get()
    assert (keys.current, keys.next) == (
        server.user.current_signing_key,
        server.user.next_signing_key,
    )
    rotated = await async_client.signing_key.rotate()
    assert rotated.current == keys.next
    assert rotated.next.startswith("sig_")
    assert rotated.next != keys.next

    await async_client.message.publish(
        url=receiver.url_for("/fc"), body="x", flow_control=FlowControl(key="k1", parallelism=1)
    )
    await receiver.wait_for_async(1, path="/fc")
    info = await async_client.flow_control.get("k1")
    assert info.key == "k1"
    assert info.parallelism_max == 1
    await async_client.flow_control.pause("k1")
    assert (await async_client.flow_control.get("k1")).is_paused is True
    await async_client.flow_control.resume("k1")
    assert (await async_client.flow_control.get("k1")).is_paused is False
    overall = await async_client.flow_control.get_global_parallelism()
    assert overall.parallelism_max == server.settings.max_concurrent_deliveries
