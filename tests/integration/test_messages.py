"""The messages API through the official SDK (sync and async) and raw HTTP: reading a message
while it waits and after it was delivered, and every way of cancelling one."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from qstash import AsyncQStash, QStash
from qstash.errors import QStashError
from qstash.log import LogState
from qstash.message import FlowControlProperties, PublishResponse

from jobsvc.localqstash import LocalQStashServer
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ClientFactory
from tests.receiver import Receiver

TEN_DAYS_MS = 10 * 86400 * 1000


def _raw(server: LocalQStashServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.user.token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def _states(server: LocalQStashServer, message_id: str) -> list[str]:
    """States of one message from GET /v2/events, oldest first."""
    with _raw(server) as http:
        response = http.get("/v2/events", params={"messageId": message_id})
    assert response.status_code == 200, response.text
    return [e["state"] for e in reversed(response.json()["events"])]


def _wait_for_state(server: LocalQStashServer, message_id: str, state: str) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        states = _states(server, message_id)
        if state in states:
            return states
        assert time.monotonic() < deadline, f"{message_id} never reached {state}: {states}"
        time.sleep(0.02)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- reading messages ---------------------------------------------------------------------------


def test_get_pending_message_shows_every_field(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    url = receiver.url_for("/pending?k=1&j=2")
    before = _now_ms()
    res = client.message.publish(
        url=url,
        body="payload ✓",
        content_type="text/plain",
        method="PUT",
        headers={"X-Custom": "v", "Upstash-Forward-X-Two": "2"},
        retries=2,
        retry_delay="1000 * retried",
        delay="10d",
        callback=receiver.url_for("/cb"),
        failure_callback=receiver.url_for("/fcb"),
        flow_control={"key": "fk-1", "parallelism": 2, "rate": 5, "period": "1h30m3s"},
        label="lbl-1",
    )
    after = _now_ms()
    assert isinstance(res, PublishResponse)

    message = client.message.get(res.message_id)
    assert message.message_id == res.message_id
    assert message.url == url
    assert message.method == "PUT"
    assert message.body == "payload ✓"
    assert message.body_base64 is None
    # Forwarded headers as they will be sent: the Upstash-Forward- prefix is gone.
    assert message.headers == {"X-Custom": ["v"], "X-Two": ["2"], "Content-Type": ["text/plain"]}
    assert message.max_retries == 2
    assert message.retry_delay_expression == "1000 * retried"
    assert before <= message.created_at <= after
    assert message.not_before == message.created_at + TEN_DAYS_MS
    assert message.caller_ip == "127.0.0.1"
    assert message.callback == receiver.url_for("/cb")
    assert message.failure_callback == receiver.url_for("/fcb")
    assert message.flow_control == FlowControlProperties(
        key="fk-1", parallelism=2, rate=5, period=5403
    )
    assert message.label == "lbl-1"
    assert message.url_group is None
    assert message.queue is None
    assert message.schedule_id is None

    with _raw(server) as http:
        raw = http.get(f"/v2/messages/{res.message_id}").json()
    assert raw["header"] == message.headers
    assert not [k for k in raw["header"] if k.lower().startswith("upstash-")]
    assert raw["period"] == 5403
    assert raw["notBefore"] - raw["createdAt"] == TEN_DAYS_MS
    time.sleep(0.05)
    assert receiver.deliveries() == []  # still waiting


async def test_get_flow_control_defaults(async_client: AsyncQStash, receiver: Receiver) -> None:
    rate_only = await async_client.message.publish(
        url=receiver.url_for("/fc"), body="a", delay="10d", flow_control={"key": "fk-2", "rate": 3}
    )
    with_period = await async_client.message.publish(
        url=receiver.url_for("/fc"),
        body="b",
        delay="10d",
        flow_control={"key": "fk-3", "parallelism": 4, "period": 60},
    )
    without = await async_client.message.publish(url=receiver.url_for("/fc"), body="c", delay="10d")
    assert isinstance(rate_only, PublishResponse)
    assert isinstance(with_period, PublishResponse)
    assert isinstance(without, PublishResponse)

    got = await async_client.message.get(rate_only.message_id)
    assert got.flow_control == FlowControlProperties(key="fk-2", parallelism=None, rate=3, period=1)
    got = await async_client.message.get(with_period.message_id)
    assert got.flow_control == FlowControlProperties(
        key="fk-3", parallelism=4, rate=None, period=60
    )
    got = await async_client.message.get(without.message_id)
    assert got.flow_control is None
    assert got.max_retries == 3  # the default
    assert got.method == "POST"
    assert got.headers == {}


def test_get_after_delivery_still_works(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    url = receiver.url_for("/done?x=y")
    res = client.message.publish(
        url=url, body="done", headers={"X-Keep": "k"}, retries=1, label="after"
    )
    assert isinstance(res, PublishResponse)
    [d] = receiver.wait_for(1)
    assert d.headers["Upstash-Message-Id"] == res.message_id
    _wait_for_state(server, res.message_id, "DELIVERED")

    message = client.message.get(res.message_id)
    assert message.message_id == res.message_id
    assert message.url == url
    assert message.body == "done"
    assert message.headers == {"X-Keep": ["k"]}
    assert message.max_retries == 1
    assert message.label == "after"
    assert message.caller_ip == "127.0.0.1"


async def test_async_get_after_delivery_and_unknown(
    server: LocalQStashServer, async_client: AsyncQStash, receiver: Receiver
) -> None:
    res = await async_client.message.publish_json(url=receiver.url_for("/aj"), body={"a": 1})
    assert isinstance(res, PublishResponse)
    await receiver.wait_for_async(1)
    _wait_for_state(server, res.message_id, "DELIVERED")
    message = await async_client.message.get(res.message_id)
    assert message.body == '{"a": 1}'
    assert message.headers == {"Content-Type": ["application/json"]}
    with pytest.raises(QStashError, match="404"):
        await async_client.message.get("msg_doesNotExist")


# -- cancelling ---------------------------------------------------------------------------------


def test_every_cancel_variant_and_cancelled_messages_are_never_delivered(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    # 6000 s at time_scale 0.001: due in 6 s unless cancelled (room for a loaded machine).
    def publish(n: int) -> str:
        res = client.message.publish(url=receiver.url_for(f"/c{n}"), body=str(n), delay="6000s")
        assert isinstance(res, PublishResponse)
        return res.message_id

    started = time.monotonic()
    ids = [publish(n) for n in range(8)]

    assert client.message.cancel(ids[0]) is None
    with _raw(server) as http:
        single = http.delete(f"/v2/messages/{ids[1]}")
        assert single.status_code == 202
        assert single.json() == {"cancelled": 1}
        assert client.message.cancel_many([ids[2], ids[3], "msg_unknown"]) == 2
        bulk = http.delete("/v2/messages", params=[("messageIds", ids[4]), ("messageIds", ids[5])])
        assert bulk.status_code == 200
        assert bulk.json() == {"cancelled": 2}
        assert client.message.cancel_all() == 2  # ids 6 and 7
        assert client.message.cancel_all() == 0
        # Cancelling again, or something that never existed, finds nothing.
        again = http.delete(f"/v2/messages/{ids[1]}")
        assert again.status_code == 404
        assert "error" in again.json()
        unknown = http.delete("/v2/messages/msg_neverExisted")
        assert unknown.status_code == 404
        assert "msg_neverExisted" in unknown.json()["error"]
    with pytest.raises(QStashError, match="404"):
        client.message.cancel(ids[0])
    assert time.monotonic() - started < 6, "cancelled too late to prove anything"

    # A message published after the cancels, with the same delay, comes due after all of
    # them; once it has arrived, none of the cancelled ones can still be on its way.
    control = client.message.publish(url=receiver.url_for("/control"), body="c", delay="6000s")
    assert isinstance(control, PublishResponse)
    receiver.wait_for(1, path="/control", timeout=30)
    time.sleep(0.1)
    assert [d.bare_path for d in receiver.deliveries()] == ["/control"]

    for message_id in ids:
        states = _states(server, message_id)
        assert states == ["CREATED", "CANCEL_REQUESTED", "CANCELED"], (message_id, states)
    logs = client.log.list(filter={"message_id": ids[0]}).logs
    assert {log.state for log in logs} == {
        LogState.CREATED,
        LogState.CANCEL_REQUESTED,
        LogState.CANCELED,
    }
    with _raw(server) as http:
        canceled = http.get("/v2/events", params={"state": "CANCELED"}).json()["events"]
    assert sorted(e["messageId"] for e in canceled) == sorted(ids)


async def test_async_cancel_and_cancel_many(
    server: LocalQStashServer, async_client: AsyncQStash, receiver: Receiver
) -> None:
    ids = []
    for n in range(3):
        res = await async_client.message.publish(
            url=receiver.url_for(f"/ac{n}"), body="x", delay="10d"
        )
        assert isinstance(res, PublishResponse)
        ids.append(res.message_id)
    await async_client.message.cancel(ids[0])
    assert await async_client.message.cancel_many(ids) == 2
    assert await async_client.message.cancel_many(ids) == 0
    assert await async_client.message.cancel_all() == 0
    with pytest.raises(QStashError, match="404"):
        await async_client.message.cancel("msg_unknownId")
    for message_id in ids:
        assert _states(server, message_id)[-1] == "CANCELED"


def test_bulk_cancel_by_query_ignores_unknown_and_foreign_ids(
    server: LocalQStashServer, client: QStash, make_client: ClientFactory, receiver: Receiver
) -> None:
    mine = client.message.publish(url=receiver.url_for("/m"), body="m", delay="10d")
    other = make_client(server, DEV_USERS[2].token).message.publish(
        url=receiver.url_for("/o"), body="o", delay="10d"
    )
    assert isinstance(mine, PublishResponse)
    assert isinstance(other, PublishResponse)
    with _raw(server) as http:
        response = http.delete(
            "/v2/messages",
            params=[
                ("messageIds", mine.message_id),
                ("messageIds", other.message_id),
                ("messageIds", "msg_nothing"),
            ],
        )
    assert response.status_code == 200
    assert response.json() == {"cancelled": 1}
    assert _states(server, mine.message_id)[-1] == "CANCELED"
    other_client = make_client(server, DEV_USERS[2].token)
    assert other_client.message.get(other.message_id).message_id == other.message_id
    assert other_client.message.cancel_all() == 1


def test_redacted_fields_are_delivered_but_hidden_in_messages_and_logs(
    client: QStash, receiver: Receiver, server: LocalQStashServer
) -> None:
    published = client.message.publish(
        url=receiver.url_for("/secret"),
        body="card=4111",
        headers={"Authorization": "Bearer s3cret", "X-Trace": "t1"},
        delay="1h",
        redact={"body": True, "header": ["Authorization"]},
    )
    assert isinstance(published, PublishResponse)
    message = client.message.get(published.message_id)
    assert message.body == "REDACTED"
    assert message.headers is not None
    assert message.headers["Authorization"] == ["REDACTED"]
    assert message.headers["X-Trace"] == ["t1"]
    [created] = client.log.list(filter={"message_id": published.message_id}).logs
    assert created.body_base64 is not None
    assert base64.b64decode(created.body_base64) == b"REDACTED"
    assert created.headers is not None
    assert created.headers["Authorization"] == ["REDACTED"]

    visible = client.message.publish(
        url=receiver.url_for("/secret"),
        body="card=4111",
        headers={"Authorization": "Bearer s3cret"},
        redact={"body": True, "header": ["Authorization"]},
    )
    assert isinstance(visible, PublishResponse)
    [delivery] = receiver.wait_for(1, path="/secret")
    # Redaction hides data from the API, never from the destination.
    assert delivery.body == b"card=4111"
    assert delivery.headers["Authorization"] == "Bearer s3cret"
    assert delivery.signature_ok, delivery.signature_error
