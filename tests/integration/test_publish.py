"""Publishing through the official SDK (sync and async) and raw HTTP: what arrives where, how it
is signed, batches, queues, URL groups, deduplication, and requests that must change nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from qstash import AsyncQStash, QStash
from qstash import Receiver as QStashReceiver
from qstash.errors import QStashError, SignatureError
from qstash.message import (
    BatchResponse,
    BatchUrlGroupResponse,
    EnqueueResponse,
    PublishResponse,
    PublishUrlGroupResponse,
)

from jobsvc.localqstash import LocalQStashServer
from jobsvc.localqstash.api import MAX_BODY
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ClientFactory, ServerFactory
from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

# -- helpers ----------------------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _raw(server: LocalQStashServer, token: str | None = None) -> httpx.Client:
    """A plain HTTP client for requests the SDK cannot make (authenticated as user 1)."""
    headers = _auth(server.user.token if token is None else token)
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def _events(server: LocalQStashServer, message_id: str | None = None) -> list[dict[str, Any]]:
    params = {"messageId": message_id} if message_id else {}
    with _raw(server) as http:
        response = http.get("/v2/events", params=params)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def _states(server: LocalQStashServer, message_id: str) -> list[str]:
    """States of one message, oldest first."""
    return [e["state"] for e in reversed(_events(server, message_id))]


def _claims(delivery: Delivery) -> dict[str, Any]:
    signature = delivery.header("Upstash-Signature")
    assert signature is not None
    claims: dict[str, Any] = jwt.decode(signature, options={"verify_signature": False})
    return claims


def _verifies(delivery: Delivery, current: str, nxt: str) -> bool:
    signature = delivery.header("Upstash-Signature")
    assert signature is not None
    try:
        QStashReceiver(current_signing_key=current, next_signing_key=nxt).verify(
            signature=signature, body=delivery.text, url=delivery.url
        )
    except SignatureError:
        return False
    return True


def _assert_signed(delivery: Delivery) -> None:
    assert delivery.signature_ok, delivery.signature_error
    assert _claims(delivery)["sub"] == delivery.url


def _assert_nothing_stored(server: LocalQStashServer, rx: Receiver | None = None) -> None:
    """No message was accepted: no events at all, and (after a control message went through
    the same server) nothing reached the receiver but the control message."""
    assert _events(server) == []
    if rx is not None:
        with _raw(server) as http:
            control = http.post(f"/v2/publish/{rx.url_for('/control')}", content=b"control")
        assert control.status_code == 200, control.text
        rx.wait_for(1, path="/control")
        assert [d.bare_path for d in rx.deliveries()] == ["/control"]


# -- publishing to a URL ----------------------------------------------------------------------


def test_publish_delivers_exact_path_query_body_and_headers(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    body = 'héllo ✓ a&b=c\n{"k": [1, 2]}\r\n'.encode()
    url = receiver.url_for("/a/b?x=1&y=2")
    res = client.message.publish(
        url=url,
        body=body,
        content_type="text/plain; charset=utf-8",
        headers={"X-Custom": "v"},
    )
    assert isinstance(res, PublishResponse)
    assert res.message_id.startswith("msg_")
    assert res.deduplicated is False

    [d] = receiver.wait_for(1)
    assert d.path == "/a/b?x=1&y=2"
    assert d.url == url
    assert d.method == "POST"
    assert d.body == body
    assert d.headers["User-Agent"] == "Upstash-QStash"
    assert d.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert d.headers["Upstash-Message-Id"] == res.message_id
    assert d.headers["Upstash-Retried"] == "0"
    assert d.headers["Upstash-Caller-Ip"] == "127.0.0.1"
    assert d.headers["X-Custom"] == "v"
    # Configuration and credentials of the publish request are not passed on.
    assert "Upstash-Topic-Name" not in d.headers
    assert "Upstash-Schedule-Id" not in d.headers
    assert "Authorization" not in d.headers
    assert not [n for n in d.headers if n.startswith("upstash-forward-")]
    _assert_signed(d)
    claims = _claims(d)
    assert claims["sub"] == url  # the full URL, query included
    assert claims["iss"] == "Upstash"

    time.sleep(0.1)
    assert len(receiver.deliveries()) == 1  # delivered once


def test_publish_with_method_put_via_upstash_method(client: QStash, receiver: Receiver) -> None:
    res = client.message.publish(url=receiver.url_for("/put?z=9"), body="p", method="PUT")
    assert isinstance(res, PublishResponse)
    [d] = receiver.wait_for(1)
    assert d.method == "PUT"
    assert d.path == "/put?z=9"
    assert d.body == b"p"
    assert d.headers["Upstash-Message-Id"] == res.message_id
    _assert_signed(d)


async def test_async_publish_and_publish_json(
    async_client: AsyncQStash, receiver: Receiver
) -> None:
    plain = await async_client.message.publish(
        url=receiver.url_for("/async?q=a%20b"), body="async body", method="PUT"
    )
    assert isinstance(plain, PublishResponse)
    doc = {"n": 1, "s": "ü", "list": [True, None]}
    as_json = await async_client.message.publish_json(
        url=receiver.url_for("/json"), body=doc, headers={"X-From": "json"}
    )
    assert isinstance(as_json, PublishResponse)
    assert as_json.message_id != plain.message_id

    [a] = await receiver.wait_for_async(1, path="/async")
    assert a.method == "PUT"
    assert a.path == "/async?q=a%20b"
    assert a.body == b"async body"
    assert a.headers["Upstash-Message-Id"] == plain.message_id
    _assert_signed(a)

    [j] = await receiver.wait_for_async(1, path="/json")
    assert j.method == "POST"
    assert j.json() == doc
    assert j.headers["Content-Type"] == "application/json"
    assert j.headers["X-From"] == "json"
    assert j.headers["Upstash-Message-Id"] == as_json.message_id
    _assert_signed(j)


def test_percent_encoded_destination_is_decoded(
    server: LocalQStashServer, receiver: Receiver
) -> None:
    encoded = quote(receiver.url_for("/enc?a=1"), safe="")
    assert encoded.startswith("http%3A%2F%2F127.0.0.1%3A")
    with _raw(server) as http:
        response = http.post(f"/v2/publish/{encoded}", content=b"encoded")
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]

    [d] = receiver.wait_for(1)
    assert d.path == "/enc?a=1"
    assert d.body == b"encoded"
    assert d.headers["Upstash-Message-Id"] == message_id
    _assert_signed(d)
    assert _claims(d)["sub"] == receiver.url_for("/enc?a=1")


def test_qstash_token_query_auth_and_query_params_stripped_or_kept(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    token = quote(server.user.token, safe="")
    target = receiver.url_for("/q?keep=1")
    query = (
        f"qstash_token={token}&other=two&upstash-delay=300s&Upstash-Retries=0"
        "&upstash-forward-x-from-query=yes"
    )
    published_at = time.monotonic()
    # No Authorization header at all: the token in the query authenticates.
    response = httpx.post(f"{server.url}/v2/publish/{target}&{query}", content=b"via query")
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]

    message = client.message.get(message_id)
    assert message.url == receiver.url_for("/q?keep=1&other=two")
    assert message.max_retries == 0
    assert message.not_before - message.created_at == 300_000  # 300 s, before scaling

    [d] = receiver.wait_for(1, timeout=10)
    assert d.path == "/q?keep=1&other=two"
    assert "qstash_token" not in d.path
    assert "upstash" not in d.path.lower()
    assert d.headers["X-From-Query"] == "yes"
    assert d.body == b"via query"
    # 300 s at time_scale 0.001 is 0.3 s.
    assert d.received_at - published_at >= 0.25
    _assert_signed(d)

    wrong = httpx.post(f"{server.url}/v2/publish/{target}&qstash_token=nope", content=b"x")
    assert wrong.status_code == 401
    assert "error" in wrong.json()


# -- batch and enqueue ------------------------------------------------------------------------


def test_batch_mixed_url_queue_and_url_group(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    client.url_group.upsert_endpoints(
        "grp",
        [{"url": receiver.url_for("/g1"), "name": "first"}, {"url": receiver.url_for("/g2")}],
    )
    results = client.message.batch(
        [
            {"url": receiver.url_for("/b1?i=1"), "body": "one", "headers": {"X-N": "1"}},
            {"url": receiver.url_for("/b2"), "body": "two", "queue": "bq", "method": "PUT"},
            {"url_group": "grp", "body": "three"},
            {"url": receiver.url_for("/b4"), "content_type": "text/csv", "body": "a,b"},
        ]
    )
    assert len(results) == 4
    first, second, group, fourth = results
    assert isinstance(first, BatchResponse)
    assert isinstance(second, BatchResponse)
    assert isinstance(fourth, BatchResponse)
    assert isinstance(group, list)
    assert all(isinstance(r, BatchUrlGroupResponse) for r in group)
    assert sorted(r.url for r in group) == [receiver.url_for("/g1"), receiver.url_for("/g2")]
    ids = [first.message_id, second.message_id, *(r.message_id for r in group)]
    ids.append(fourth.message_id)
    assert len(set(ids)) == 5

    deliveries = receiver.wait_for(5)
    by_path = {d.bare_path: d for d in deliveries}
    assert set(by_path) == {"/b1", "/b2", "/g1", "/g2", "/b4"}
    assert by_path["/b1"].path == "/b1?i=1"
    assert by_path["/b1"].body == b"one"
    assert by_path["/b1"].headers["X-N"] == "1"
    assert by_path["/b1"].headers["Upstash-Message-Id"] == first.message_id
    assert by_path["/b2"].method == "PUT"
    assert by_path["/b2"].body == b"two"
    assert by_path["/b4"].headers["Content-Type"] == "text/csv"
    for r in group:
        d = by_path[r.url.removeprefix(receiver.url)]
        assert d.body == b"three"
        assert d.headers["Upstash-Topic-Name"] == "grp"
        assert d.headers["Upstash-Message-Id"] == r.message_id
    for d in deliveries:
        _assert_signed(d)

    queue = client.queue.get("bq")
    assert queue.parallelism == 1
    assert client.message.get(second.message_id).queue == "bq"
    group_message = client.message.get(group[0].message_id)
    assert group_message.url_group == "grp"

    time.sleep(0.1)
    assert len(receiver.deliveries()) == 5


def test_batch_raw_response_shape(server: LocalQStashServer, receiver: Receiver) -> None:
    with _raw(server) as http:
        assert http.post(
            "/v2/topics/team/endpoints",
            json={
                "endpoints": [{"url": receiver.url_for("/t1")}, {"url": receiver.url_for("/t2")}]
            },
        ).is_success
        response = http.post(
            "/v2/batch",
            json=[
                {"destination": receiver.url_for("/r1"), "headers": {}, "body": "x", "queue": None},
                {"destination": "team", "headers": {}, "body": None, "queue": None},
            ],
        )
    assert response.status_code == 200, response.text
    data = response.json()
    assert isinstance(data, list)
    assert len(data) == 2
    assert set(data[0]) == {"messageId"}
    assert isinstance(data[1], list)
    assert len(data[1]) == 2
    assert all(set(e) == {"messageId", "url"} for e in data[1])
    assert {e["url"] for e in data[1]} == {receiver.url_for("/t1"), receiver.url_for("/t2")}
    deliveries = receiver.wait_for(3)
    assert sorted(d.bare_path for d in deliveries) == ["/r1", "/t1", "/t2"]
    assert [d.body for d in deliveries if d.bare_path == "/t1"] == [b""]


async def test_async_batch_json(async_client: AsyncQStash, receiver: Receiver) -> None:
    results = await async_client.message.batch_json(
        [
            {"url": receiver.url_for("/j1"), "body": {"n": 1}},
            {"url": receiver.url_for("/j2"), "body": [1, "two"], "queue": "jq"},
        ]
    )
    assert len(results) == 2
    assert all(isinstance(r, BatchResponse) for r in results)
    deliveries = await receiver.wait_for_async(2)
    by_path = {d.bare_path: d for d in deliveries}
    assert by_path["/j1"].json() == {"n": 1}
    assert by_path["/j2"].json() == [1, "two"]
    for d in deliveries:
        assert d.headers["Content-Type"] == "application/json"
        _assert_signed(d)
    queue = await async_client.queue.get("jq")
    assert queue.parallelism == 1


def test_js_style_batch_with_lower_case_headers(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    entries = [
        {
            "destination": receiver.url_for("/js?a=1"),
            "headers": {
                "upstash-method": "PUT",
                "content-type": "text/plain",
                "upstash-forward-x-js": "1",
                "upstash-retries": "0",
                "upstash-telemetry-sdk": "upstash-qstash-js@2.12.0",
            },
            "body": "from js",
        },
        {"destination": receiver.url_for("/js2"), "headers": {"upstash-method": "POST"}},
    ]
    with _raw(server) as http:
        response = http.post("/v2/batch", content=json.dumps(entries))
    assert response.status_code == 200, response.text
    data = response.json()
    assert [set(e) for e in data] == [{"messageId"}, {"messageId"}]

    deliveries = receiver.wait_for(2)
    d = next(d for d in deliveries if d.bare_path == "/js")
    assert d.path == "/js?a=1"
    assert d.method == "PUT"
    assert d.body == b"from js"
    assert d.headers["Content-Type"] == "text/plain"
    assert d.headers["X-Js"] == "1"
    assert "Upstash-Telemetry-Sdk" not in d.headers
    assert d.headers["Upstash-Message-Id"] == data[0]["messageId"]
    _assert_signed(d)
    assert client.message.get(data[0]["messageId"]).max_retries == 0


def test_enqueue_creates_queue_with_parallelism_one(client: QStash, receiver: Receiver) -> None:
    receiver.respond("/eq", Response(status=200, delay_seconds=0.15))
    responses = [
        client.message.enqueue(queue="fresh-q", url=receiver.url_for(f"/eq?n={n}"), body=str(n))
        for n in range(3)
    ]
    assert all(isinstance(r, EnqueueResponse) for r in responses)
    queue = client.queue.get("fresh-q")
    assert queue.name == "fresh-q"
    assert queue.parallelism == 1
    assert queue.paused is False

    deliveries = receiver.wait_for(3, timeout=10)
    assert [d.body for d in deliveries] == [b"0", b"1", b"2"]
    assert [d.headers["Upstash-Message-Id"] for d in deliveries] == [
        r.message_id for r in responses
    ]
    # One at a time: each starts only after the previous one was answered.
    for before, after in itertools.pairwise(deliveries):
        assert before.responded_at is not None
        assert after.received_at >= before.responded_at
    assert client.message.get(responses[0].message_id).queue == "fresh-q"


# -- URL groups -------------------------------------------------------------------------------


def test_publish_to_url_group_delivers_once_per_endpoint(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    endpoints = [receiver.url_for("/e1?x=1"), receiver.url_for("/e2"), receiver.url_for("/e3")]
    client.url_group.upsert_endpoints(
        "fan", [{"url": endpoints[0], "name": "one"}, {"url": endpoints[1]}, {"url": endpoints[2]}]
    )
    results = client.message.publish(url_group="fan", body="fan-out", headers={"X-G": "g"})
    assert isinstance(results, list)
    assert all(isinstance(r, PublishUrlGroupResponse) for r in results)
    assert sorted(r.url for r in results) == sorted(endpoints)
    assert len({r.message_id for r in results}) == 3

    deliveries = receiver.wait_for(3)
    by_url = {d.url: d for d in deliveries}
    assert set(by_url) == set(endpoints)
    for r in results:
        d = by_url[r.url]
        assert d.headers["Upstash-Topic-Name"] == "fan"
        assert d.headers["Upstash-Message-Id"] == r.message_id
        assert d.headers["X-G"] == "g"
        assert d.body == b"fan-out"
        _assert_signed(d)
    named = client.message.get(next(r.message_id for r in results if r.url == endpoints[0]))
    assert named.url_group == "fan"
    assert named.endpoint == "one"

    # The raw answer is a top-level array with a url per endpoint.
    with _raw(server) as http:
        raw = http.post("/v2/publish/fan", content=b"raw")
    assert raw.status_code == 200
    data = raw.json()
    assert isinstance(data, list)
    assert sorted(e["url"] for e in data) == sorted(endpoints)
    assert all(e["messageId"].startswith("msg_") for e in data)

    receiver.wait_for(6)
    time.sleep(0.1)
    assert len(receiver.deliveries()) == 6


def test_publish_to_missing_url_group_is_404(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    with _raw(server) as http:
        response = http.post("/v2/publish/no-such-group", content=b"x")
    assert response.status_code == 404
    assert "no-such-group" in response.json()["error"]
    with pytest.raises(QStashError, match="404"):
        client.message.publish(url_group="no-such-group", body="x")
    _assert_nothing_stored(server, receiver)


# -- deduplication ----------------------------------------------------------------------------


def test_deduplication_id(server: LocalQStashServer, client: QStash, receiver: Receiver) -> None:
    url = receiver.url_for("/dedup")
    headers = {"Upstash-Deduplication-Id": "order-42"}
    with _raw(server) as http:
        first = http.post(f"/v2/publish/{url}", content=b"first", headers=headers)
        assert first.status_code == 200
        assert set(first.json()) == {"messageId"}
        message_id = first.json()["messageId"]

        again = client.message.publish(url=url, body="second", deduplication_id="order-42")
        assert isinstance(again, PublishResponse)
        assert again.deduplicated is True
        assert again.message_id == message_id

        third = http.post(f"/v2/publish/{url}", content=b"third", headers=headers)
        assert third.status_code == 202
        assert third.json() == {"messageId": message_id, "deduplicated": True}

    other = client.message.publish(url=url, body="other id", deduplication_id="order-43")
    assert isinstance(other, PublishResponse)
    assert other.deduplicated is False
    assert other.message_id != message_id

    deliveries = receiver.wait_for(2)
    time.sleep(0.15)
    deliveries = receiver.deliveries()
    assert sorted(d.body for d in deliveries) == [b"first", b"other id"]
    assert _states(server, message_id).count("CREATED") == 1
    assert len({e["messageId"] for e in _events(server) if e["state"] == "CREATED"}) == 2


async def test_content_based_deduplication(
    server: LocalQStashServer, async_client: AsyncQStash, receiver: Receiver
) -> None:
    async def publish(body: str, path: str = "/cbd", **kwargs: Any) -> PublishResponse:
        res = await async_client.message.publish(
            url=receiver.url_for(path), body=body, content_based_deduplication=True, **kwargs
        )
        assert isinstance(res, PublishResponse)
        return res

    a = await publish("same", headers={"X-H": "1"})
    assert a.deduplicated is False
    dup = await publish("same", headers={"X-H": "1"})
    assert dup.deduplicated is True
    assert dup.message_id == a.message_id
    other_body = await publish("different", headers={"X-H": "1"})
    other_header = await publish("same", headers={"X-H": "2"})
    other_dest = await publish("same", path="/cbd-other", headers={"X-H": "1"})
    other_type = await publish("same", headers={"X-H": "1"}, content_type="text/csv")
    fresh = [other_body, other_header, other_dest, other_type]
    assert not any(r.deduplicated for r in fresh)
    assert len({a.message_id, *(r.message_id for r in fresh)}) == 5

    with _raw(server) as http:
        raw_dup = http.post(
            f"/v2/publish/{receiver.url_for('/cbd')}",
            content=b"different",
            headers={"Upstash-Content-Based-Deduplication": "true", "Upstash-Forward-X-H": "1"},
        )
    assert raw_dup.status_code == 202
    assert raw_dup.json() == {"messageId": other_body.message_id, "deduplicated": True}

    await receiver.wait_for_async(5)
    await asyncio.sleep(0.15)
    assert len(receiver.deliveries()) == 5


def test_deduplication_window_expires(
    make_server: ServerFactory, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    # 3000 s window at time_scale 0.001: three seconds (room for a loaded machine).
    server = make_server(dedup_window_seconds=3000)
    rx = make_receiver(server.user.current_signing_key, server.user.next_signing_key)
    client = make_client(server)
    url = rx.url_for("/window")
    started = time.monotonic()
    first = client.message.publish(url=url, body="1", deduplication_id="w")
    dup = client.message.publish(url=url, body="2", deduplication_id="w")
    cbd_first = client.message.publish(url=url, body="c", content_based_deduplication=True)
    both_stored = time.monotonic()  # both windows opened before this
    cbd_dup = client.message.publish(url=url, body="c", content_based_deduplication=True)
    assert time.monotonic() - started < 3.0, "too slow to observe the window"
    assert isinstance(first, PublishResponse)
    assert isinstance(dup, PublishResponse)
    assert isinstance(cbd_first, PublishResponse)
    assert isinstance(cbd_dup, PublishResponse)
    assert dup.deduplicated
    assert dup.message_id == first.message_id
    assert cbd_dup.deduplicated
    assert cbd_dup.message_id == cbd_first.message_id

    time.sleep(max(0.0, both_stored + 3.1 - time.monotonic()))  # both windows closed
    after = client.message.publish(url=url, body="3", deduplication_id="w")
    cbd_after = client.message.publish(url=url, body="c", content_based_deduplication=True)
    assert isinstance(after, PublishResponse)
    assert isinstance(cbd_after, PublishResponse)
    assert after.deduplicated is False
    assert after.message_id != first.message_id
    assert cbd_after.deduplicated is False
    assert cbd_after.message_id != cbd_first.message_id

    rx.wait_for(4)
    time.sleep(0.1)
    assert sorted(d.body for d in rx.deliveries()) == [b"1", b"3", b"c", b"c"]


# -- requests that must change nothing --------------------------------------------------------


def test_bad_or_missing_token_is_401(
    server: LocalQStashServer, receiver: Receiver, make_client: ClientFactory
) -> None:
    url = receiver.url_for("/auth")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.post(f"{server.url}/v2/publish/{url}", content=b"x", headers=headers)
        assert response.status_code == 401, headers
        assert isinstance(response.json()["error"], str)
        assert response.json()["error"]
    with pytest.raises(QStashError, match="401"):
        make_client(server, "wrong-token").message.publish(url=url, body="x")
    _assert_nothing_stored(server, receiver)


@pytest.mark.parametrize(
    ("destination", "headers", "names"),
    [
        ("ftp://x", {}, "destination"),
        ("", {}, "destination"),
        ("{url}", {"Upstash-Delay": "soon"}, "Upstash-Delay"),
        ("{url}", {"Upstash-Delay": "-5s"}, "Upstash-Delay"),
        ("{url}", {"Upstash-Retries": "-1"}, "Upstash-Retries"),
        ("{url}", {"Upstash-Method": "FETCH"}, "Upstash-Method"),
    ],
    ids=["ftp", "empty", "delay-word", "delay-negative", "retries-negative", "method-fetch"],
)
def test_invalid_publish_is_400_and_stores_nothing(
    server: LocalQStashServer,
    receiver: Receiver,
    destination: str,
    headers: dict[str, str],
    names: str,
) -> None:
    target = destination.format(url=receiver.url_for("/bad"))
    with _raw(server) as http:
        response = http.post(f"/v2/publish/{target}", content=b"x", headers=headers)
    assert response.status_code == 400, response.text
    assert names in response.json()["error"]
    _assert_nothing_stored(server, receiver)


def test_invalid_batches_are_400_and_store_nothing(
    server: LocalQStashServer, client: QStash, receiver: Receiver
) -> None:
    good = {"destination": receiver.url_for("/ok"), "headers": {}, "body": "ok"}
    cases: list[tuple[bytes, str]] = [
        (b"[{not json", "JSON"),
        (json.dumps({"destination": receiver.url_for("/ok")}).encode(), "array"),
        (b"[]", "array"),
        (
            json.dumps(
                [
                    {**good, "headers": {"Upstash-Deduplication-Id": "batch-dedup"}},
                    {**good, "queue": "leaky-queue"},
                    {"destination": "ftp://x", "headers": {}, "body": "bad"},
                    good,
                ]
            ).encode(),
            "batch entry 2",
        ),
        (
            json.dumps([good, {**good, "headers": {"Upstash-Retries": "-1"}}]).encode(),
            "Upstash-Retries",
        ),
        (json.dumps([good, "not an object"]).encode(), "batch entry 1"),
    ]
    with _raw(server) as http:
        for body, names in cases:
            response = http.post(
                "/v2/batch", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (body, response.text)
            assert names in response.json()["error"], body
        # The failed batch neither created its queue nor kept its deduplication id.
        assert http.get("/v2/queues/leaky-queue").status_code == 404
        assert http.get("/v2/queues").json() == []
    _assert_nothing_stored(server, receiver)
    res = client.message.publish(url=good["destination"], body="x", deduplication_id="batch-dedup")
    assert isinstance(res, PublishResponse)
    assert res.deduplicated is False


def test_oversized_body_is_413(server: LocalQStashServer, receiver: Receiver) -> None:
    with _raw(server) as http:
        response = http.post(
            f"/v2/publish/{receiver.url_for('/big')}", content=b"x" * (MAX_BODY + 1)
        )
        assert response.status_code == 413, response.text
        assert "error" in response.json()
        at_limit = http.post(f"/v2/publish/{receiver.url_for('/limit')}", content=b"y" * MAX_BODY)
        assert at_limit.status_code == 200, at_limit.text
    [d] = receiver.wait_for(1, path="/limit", timeout=20)
    assert len(d.body) == MAX_BODY
    assert [d.bare_path for d in receiver.deliveries()] == ["/limit"]


# -- users --------------------------------------------------------------------------------------


def test_dev_users_are_isolated(
    server: LocalQStashServer,
    client: QStash,
    make_client: ClientFactory,
    make_receiver: ReceiverFactory,
) -> None:
    user2 = DEV_USERS[1]
    assert server.user.token != user2.token
    rx2 = make_receiver(user2.current_signing_key, user2.next_signing_key)
    client2 = make_client(server, user2.token)

    pending = client2.message.publish(url=rx2.url_for("/later"), body="later", delay="10d")
    assert isinstance(pending, PublishResponse)
    now = client2.message.publish(url=rx2.url_for("/now"), body="now")
    assert isinstance(now, PublishResponse)

    with _raw(server) as http:
        assert http.get(f"/v2/messages/{pending.message_id}").status_code == 404
        assert http.delete(f"/v2/messages/{pending.message_id}").status_code == 404
    with pytest.raises(QStashError, match="404"):
        client.message.get(now.message_id)
    assert client.message.cancel_many([pending.message_id]) == 0
    assert client.message.cancel_all() == 0
    assert _events(server) == []

    # Still there for its owner, not cancelled, and signed with user 2's keys.
    assert client2.message.get(pending.message_id).url == rx2.url_for("/later")
    [d] = rx2.wait_for(1, path="/now")
    _assert_signed(d)
    assert not _verifies(d, server.user.current_signing_key, server.user.next_signing_key)
    with _raw(server, user2.token) as http:
        states = [e["state"] for e in http.get("/v2/events").json()["events"]]
    assert "CANCEL_REQUESTED" not in states
    assert "CANCELED" not in states


def test_configured_token_replaces_dev_users(
    make_server: ServerFactory, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    current, nxt = "sig_ConfiguredCurrentKey0000000000", "sig_ConfiguredNextKey00000000000000"
    server = make_server(token="my-own-token", current_signing_key=current, next_signing_key=nxt)
    rx = make_receiver(current, nxt)
    for dev in DEV_USERS:
        with pytest.raises(QStashError, match="401"):
            make_client(server, dev.token).message.publish(url=rx.url_for("/x"), body="x")
    client = make_client(server, "my-own-token")
    assert client.signing_key.get().current == current
    res = client.message.publish(url=rx.url_for("/own?t=1"), body="own")
    assert isinstance(res, PublishResponse)
    [d] = rx.wait_for(1)
    assert d.path == "/own?t=1"
    _assert_signed(d)
    dev = DEV_USERS[0]
    assert not _verifies(d, dev.current_signing_key, dev.next_signing_key)
    assert [x.bare_path for x in rx.deliveries()] == ["/own"]
