"""Tests of the integration-test HTTP receiver (tests/receiver.py) itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest

from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

CURRENT = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


def sign(url: str, body: bytes, key: str = CURRENT) -> str:
    """An Upstash-Signature JWT exactly as QSTASH.md §8.4 describes."""
    now = int(time.time())
    claims = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "jwt_" + secrets.token_urlsafe(16),
        "body": base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode(),
    }
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "JWT"})


@pytest.fixture
def signed_rx(make_receiver: ReceiverFactory) -> Receiver:
    return make_receiver(current_signing_key=CURRENT, next_signing_key=NEXT)


# --------------------------------------------------------------------------- signatures


def test_valid_signature_verifies(signed_rx: Receiver) -> None:
    url = signed_rx.url_for("/hook?a=1&b=two")
    body = b'{"hello": "world"}'
    r = httpx.post(url, content=body, headers={"Upstash-Signature": sign(url, body)})
    assert r.status_code == 200
    assert r.text == "ok"

    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is True, d.signature_error
    assert d.signature_error is None
    assert d.url == url
    assert d.path == "/hook?a=1&b=two"
    assert d.bare_path == "/hook"
    assert d.query_string == "a=1&b=two"
    assert d.body == body
    assert d.json() == {"hello": "world"}


def test_signature_with_next_key_verifies(signed_rx: Receiver) -> None:
    url = signed_rx.url_for("/hook")
    httpx.post(url, content=b"x", headers={"Upstash-Signature": sign(url, b"x", key=NEXT)})
    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is True, d.signature_error


def test_tampered_body_fails(signed_rx: Receiver) -> None:
    url = signed_rx.url_for("/hook")
    token = sign(url, b'{"amount": 1}')
    httpx.post(url, content=b'{"amount": 1000}', headers={"Upstash-Signature": token})
    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is False
    assert d.signature_error is not None
    assert "Invalid body hash" in d.signature_error


def test_wrong_sub_fails(signed_rx: Receiver) -> None:
    url = signed_rx.url_for("/hook")
    token = sign(signed_rx.url_for("/other"), b"x")
    httpx.post(url, content=b"x", headers={"Upstash-Signature": token})
    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is False
    assert d.signature_error is not None
    assert "Invalid subject" in d.signature_error


def test_wrong_key_fails(signed_rx: Receiver) -> None:
    url = signed_rx.url_for("/hook")
    token = sign(url, b"x", key="sig_" + "A" * 28)
    httpx.post(url, content=b"x", headers={"Upstash-Signature": token})
    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is False
    assert d.signature_error


def test_missing_signature_fails(signed_rx: Receiver) -> None:
    httpx.post(signed_rx.url_for("/hook"), content=b"x")
    [d] = signed_rx.wait_for(1)
    assert d.signature_ok is False
    assert d.signature_error == "missing Upstash-Signature header"


def test_without_keys_verification_is_skipped(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    httpx.post(rx.url_for("/hook"), content=b"x", headers={"Upstash-Signature": "garbage"})
    [d] = rx.wait_for(1)
    assert d.signature_ok is None
    assert d.signature_error is None


# --------------------------------------------------------------------------- recording


def test_records_any_method_path_and_headers(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    with httpx.Client() as client:
        for method in ("GET", "PUT", "PATCH", "DELETE", "HEAD", "PROPFIND"):
            r = client.request(method, rx.url_for(f"/m/{method.lower()}"), content=b"")
            assert r.status_code == 200
        client.post(
            rx.url_for("/h"),
            content="héllo".encode(),
            headers=[("Upstash-Message-Id", "msg_1"), ("X-Multi", "a"), ("X-Multi", "b")],
        )

    ds = rx.wait_for(7)
    assert [d.method for d in ds] == ["GET", "PUT", "PATCH", "DELETE", "HEAD", "PROPFIND", "POST"]
    assert [d.path for d in rx.deliveries("/m/put")] == ["/m/put"]
    d = rx.deliveries("/h")[0]
    assert d.text == "héllo"
    assert d.headers["upstash-message-id"] == "msg_1"
    assert d.headers["UPSTASH-MESSAGE-ID"] == "msg_1"
    assert d.header("Upstash-Message-Id") == "msg_1"
    assert "Upstash-Message-Id" in d.headers
    assert "upstash-message-id" in dict(d.headers)  # stored lower-cased
    assert d.headers.get("X-Missing") is None
    assert d.headers["x-multi"] == "a, b"
    assert ("x-multi", "b") in d.raw_headers
    assert d.received_at <= time.monotonic()


def test_deliveries_filter_ignores_query_and_clear(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    httpx.get(rx.url_for("/a?x=1"))
    httpx.get(rx.url_for("/a?x=2"))
    httpx.get(rx.url_for("/b"))
    assert [d.path for d in rx.wait_for(2, path="/a")] == ["/a?x=1", "/a?x=2"]
    assert len(rx.deliveries()) == 3
    assert len(rx.deliveries("/a?ignored")) == 2
    copy = rx.deliveries()
    rx.clear()
    assert rx.deliveries() == []
    assert len(copy) == 3


def test_wait_for_timeout_raises_clear_assertion(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    httpx.get(rx.url_for("/other"))
    with pytest.raises(AssertionError, match=r"expected at least 1 deliveries to path '/hook'"):
        rx.wait_for(1, path="/hook", timeout=0.2)


def test_wait_for_wakes_up_on_arrival(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    timer = threading.Timer(0.2, lambda: httpx.get(rx.url_for("/late")))
    timer.start()
    try:
        t0 = time.monotonic()
        [d] = rx.wait_for(1, path="/late", timeout=60)
        assert time.monotonic() - t0 < 30  # woke on arrival, not at the timeout
        assert d.path == "/late"
    finally:
        timer.join()


async def test_wait_for_async_does_not_block_the_loop(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    async with httpx.AsyncClient() as client:
        waiter = asyncio.create_task(rx.wait_for_async(2, path="/x", timeout=5))
        await client.post(rx.url_for("/x"), content=b"1")
        await client.post(rx.url_for("/x"), content=b"2")
        ds = await waiter
    assert [d.body for d in ds] == [b"1", b"2"]


def test_concurrent_requests_are_all_recorded(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    # Each response waits until all 30 requests are in: only concurrent serving gets there.
    all_in = asyncio.Barrier(30)

    async def together(delivery: Delivery) -> Response:
        await asyncio.wait_for(all_in.wait(), 10)
        return Response()

    rx.respond("/c", together)

    def call(i: int) -> int:
        return httpx.post(rx.url_for(f"/c?i={i}"), content=str(i).encode()).status_code

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(call, range(30)))
    assert statuses == [200] * 30
    assert sorted(int(d.body) for d in rx.deliveries("/c")) == list(range(30))


def test_keep_alive_connection_is_reused(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    with httpx.Client() as client:
        for _ in range(3):
            client.post(rx.url_for("/k"), content=b"x")
    clients = {d.client for d in rx.wait_for(3)}
    assert len(clients) == 1


# --------------------------------------------------------------------------- responses


def test_default_response_is_200_ok(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    r = httpx.post(rx.url_for("/anything"), content=b"x")
    assert (r.status_code, r.text) == (200, "ok")
    [d] = rx.wait_for(1)
    assert d.response == Response()
    assert d.responded_at is not None


def test_responses_are_consumed_in_order_and_last_repeats(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    rx.respond(
        "/hook",
        (500, {"X-Attempt": "1"}, "boom"),
        Response(status=489, headers={"Upstash-NonRetryable-Error": "true"}, body=b"stop"),
        (201, {}, b"created"),
    )
    got = []
    with httpx.Client() as client:
        for _ in range(5):
            r = client.post(rx.url_for("/hook?attempt"), content=b"x")
            got.append((r.status_code, r.text))
        first = client.post(rx.url_for("/hook"), content=b"x")
        other = client.post(rx.url_for("/other"), content=b"x")
    assert got == [
        (500, "boom"),
        (489, "stop"),
        (201, "created"),
        (201, "created"),
        (201, "created"),
    ]
    assert first.status_code == 201
    assert (other.status_code, other.text) == (200, "ok")

    # Re-programming replaces the queue; no responses restores the default.
    rx.respond("/hook", (202, {}, ""))
    assert httpx.post(rx.url_for("/hook")).status_code == 202
    rx.respond("/hook")
    assert httpx.post(rx.url_for("/hook")).status_code == 200


def test_response_headers_are_sent(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    rx.respond("/h", Response(status=429, headers={"Retry-After": "7"}, body="slow down"))
    r = httpx.get(rx.url_for("/h"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.text == "slow down"


def test_callable_responses_see_the_delivery(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()

    def echo(d: Delivery) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/octet-stream"}, d.body[::-1]

    async def async_echo(d: Delivery) -> Response:
        await asyncio.sleep(0)
        return Response(status=203, body=d.method)

    rx.respond("/echo", echo, async_echo)
    with httpx.Client() as client:
        r1 = client.post(rx.url_for("/echo"), content=b"abc")
        r2 = client.put(rx.url_for("/echo"), content=b"abc")
    assert (r1.status_code, r1.content) == (200, b"cba")
    assert r1.headers["content-type"] == "application/octet-stream"
    assert (r2.status_code, r2.text) == (203, "PUT")


def test_failing_callable_gives_500(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()

    def broken(d: Delivery) -> Response:
        raise ValueError("nope")

    rx.respond("/x", broken)
    r = httpx.get(rx.url_for("/x"))
    assert r.status_code == 500
    assert "nope" in r.text


async def test_delayed_response_does_not_block_a_concurrent_fast_one(
    make_receiver: ReceiverFactory,
) -> None:
    rx = make_receiver()
    release = threading.Event()

    def slow(delivery: Delivery) -> Response:
        release.wait(10)  # answers only once the fast one has been answered
        return Response(status=200, body=b"slow")

    rx.respond("/slow", slow)
    rx.respond("/fast", (200, {}, b"fast"))
    finished: list[str] = []

    async def call(client: httpx.AsyncClient, path: str) -> None:
        r = await client.get(rx.url_for(path))
        finished.append(r.text)

    async with httpx.AsyncClient() as client:
        slow_call = asyncio.create_task(call(client, "/slow"))
        await rx.wait_for_async(1, path="/slow")  # the slow one is being served
        await call(client, "/fast")
        assert not slow_call.done()
        release.set()
        await slow_call

    assert finished == ["fast", "slow"]
    [d] = rx.deliveries("/slow")
    [f] = rx.deliveries("/fast")
    assert d.responded_at is not None
    assert f.responded_at is not None
    assert f.responded_at < d.responded_at


def test_delay_seconds_delays_the_response(make_receiver: ReceiverFactory) -> None:
    rx = make_receiver()
    rx.respond("/slow", Response(delay_seconds=0.3))
    assert httpx.get(rx.url_for("/slow")).text == "ok"
    [d] = rx.deliveries("/slow")
    assert d.responded_at is not None
    assert d.responded_at - d.received_at >= 0.3  # a lower bound: load only adds to it


def test_stop_cuts_pending_delays_short() -> None:
    rx = Receiver().start()
    rx.respond("/slow", Response(delay_seconds=60))
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(httpx.get(rx.url_for("/slow"), timeout=30).status_code)
    )
    thread.start()
    rx.wait_for(1)
    t0 = time.monotonic()
    rx.stop()
    assert time.monotonic() - t0 < 30  # cut short, not after the 60 s delay
    thread.join(5)
    assert result == [503]
    with pytest.raises(httpx.ConnectError):
        httpx.get(rx.url_for("/after"))
