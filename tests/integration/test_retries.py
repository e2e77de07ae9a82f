"""Delivery outcomes against a real server: retries and their backoff, Retry-After, 489,
timeouts, delay / not-before, network errors, and the events (logs) every message leaves.

Each test starts its own server with the time_scale it needs: every wait the server computes is
multiplied by it (per-attempt HTTP timeouts are not), so QStash's 12 s first backoff is 24 ms
at time_scale 0.002.
"""

from __future__ import annotations

import base64
import math
import socket
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
from qstash import QStash
from qstash.log import LogState

from jobsvc.localqstash import LocalQStashServer
from tests.polling import poll
from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

ServerFactory = Callable[..., LocalQStashServer]

# How late an attempt may come after it was due (scheduling, HTTP, a loaded 2-core machine);
# still far below the backoff an attempt would wait if the delay asked for were ignored.
LATE = 0.4


class Setup:
    """A server with its own time_scale, the SDK pointed at it, a raw HTTP client for what the
    SDK lacks, and a receiver that checks signatures with the server's keys."""

    def __init__(self, server: LocalQStashServer, rx: Receiver, http: httpx.Client) -> None:
        self.server = server
        self.scale = server.settings.time_scale
        self.client = QStash(server.user.token, base_url=server.url)
        self.rx = rx
        self.http = http

    def logs(self, **params: Any) -> dict[str, Any]:
        response = self.http.get("/v2/logs", params=params)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def states(self, message_id: str, *, until: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The message's events, oldest first, once the ``until`` state has been recorded."""

        def ready() -> list[dict[str, Any]] | None:
            events = self.logs(messageId=message_id, order="earliestFirst")["logs"]
            return events if any(e["state"] == until for e in events) else None

        return poll(ready, timeout=timeout, what=f"{until} event of {message_id}")

    def dlq_entry(self, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            response = self.http.get("/v2/dlq", params={"messageId": message_id})
            assert response.status_code == 200, response.text
            messages: list[dict[str, Any]] = response.json()["messages"]
            return messages[0] if messages else None

        return poll(ready, timeout=timeout, what=f"DLQ entry of {message_id}")


@pytest.fixture
def setup(
    make_server: ServerFactory, make_receiver: ReceiverFactory
) -> Iterator[Callable[..., Setup]]:
    """``setup(time_scale=...)`` starts a server (and its receiver) for this test."""
    made: list[Setup] = []
    with httpx.Client(timeout=10.0) as http:

        def make(**settings: Any) -> Setup:
            server = make_server(**settings)
            rx = make_receiver(
                current_signing_key=server.user.current_signing_key,
                next_signing_key=server.user.next_signing_key,
            )
            http.base_url = httpx.URL(server.url)
            http.headers["Authorization"] = f"Bearer {server.user.token}"
            made.append(Setup(server, rx, http))
            return made[-1]

        yield make
        for each in made:
            each.client.http._client.close()  # the SDK has no close() of its own


def gaps(deliveries: list[Delivery]) -> list[float]:
    """Seconds from each response to the next attempt's arrival."""
    out = []
    for before, after in pairwise(deliveries):
        assert before.responded_at is not None
        out.append(after.received_at - before.responded_at)
    return out


def assert_gap(actual: float, expected: float) -> None:
    assert expected * 0.8 <= actual < expected + LATE, (
        f"gap {actual * 1000:.1f} ms, expected {expected * 1000:.1f} ms"
    )


def assert_signed_attempts(deliveries: list[Delivery], message_id: str, body: bytes) -> None:
    for number, delivery in enumerate(deliveries):
        assert delivery.signature_ok, delivery.signature_error
        assert delivery.header("Upstash-Message-Id") == message_id
        assert delivery.header("Upstash-Retried") == str(number)
        assert delivery.body == body


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- retries and backoff ------------------------------------------------------------------------


def test_500_twice_then_200_is_retried_with_default_backoff(setup: Callable[..., Setup]) -> None:
    s = setup(time_scale=0.002)
    s.rx.respond("/flaky", (500, {}, "boom 1"), (500, {}, "boom 2"), (200, {}, "fine"))
    message_id = s.client.message.publish(url=s.rx.url_for("/flaky"), body="payload").message_id

    events = s.states(message_id, until="DELIVERED")
    deliveries = s.rx.deliveries("/flaky")
    assert len(deliveries) == 3
    assert_signed_attempts(deliveries, message_id, b"payload")
    # min(86400, e^(2.5 n)) s with n = 1 before the first retry: 12.18 s, then 148.4 s.
    first, second = gaps(deliveries)
    assert_gap(first, math.exp(2.5) * s.scale)
    assert_gap(second, math.exp(5.0) * s.scale)

    assert [e["state"] for e in events] == [
        "CREATED",
        "ACTIVE",
        "ERROR",
        "RETRY",
        "ACTIVE",
        "ERROR",
        "RETRY",
        "ACTIVE",
        "DELIVERED",
    ]
    errors = [e for e in events if e["state"] == "ERROR"]
    assert [e["responseStatus"] for e in errors] == [500, 500]
    assert [base64.b64decode(e["responseBody"]) for e in errors] == [b"boom 1", b"boom 2"]
    retries = [e for e in events if e["state"] == "RETRY"]
    for retry, n in zip(retries, (1, 2), strict=True):
        # nextDeliveryTime is when the (scaled) retry is due; the event is written just after.
        expected_ms = math.exp(2.5 * n) * s.scale * 1000
        assert expected_ms - 10 <= retry["nextDeliveryTime"] - retry["time"] <= expected_ms + 1
    assert events[-1]["responseStatus"] == 200
    assert events[0]["maxRetries"] == 3
    # Nothing more comes once delivered.
    time.sleep(0.05)
    assert len(s.rx.deliveries("/flaky")) == 3


def test_retries_zero_means_a_single_attempt_then_dlq(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.rx.respond("/down", (500, {}, "down"))
    message_id = s.client.message.publish(url=s.rx.url_for("/down"), body="x", retries=0).message_id

    entry = s.dlq_entry(message_id)
    assert entry["maxRetries"] == 0
    assert entry["responseStatus"] == 500
    assert entry["responseBody"] == "down"
    events = s.states(message_id, until="FAILED")
    assert [e["state"] for e in events] == ["CREATED", "ACTIVE", "ERROR", "FAILED"]
    assert events[2]["responseStatus"] == 500
    assert events[2]["error"]
    time.sleep(0.05)  # a retry would be due at once (12 s x 0.001)
    deliveries = s.rx.deliveries("/down")
    assert len(deliveries) == 1
    assert_signed_attempts(deliveries, message_id, b"x")


def test_default_retries_is_three_so_four_attempts(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.rx.respond("/down", (503, {}, "unavailable"))
    # No `retries`: the default applies. A 10 ms retry delay keeps it quick.
    message_id = s.client.message.publish(
        url=s.rx.url_for("/down"), body="x", retry_delay="10"
    ).message_id

    entry = s.dlq_entry(message_id)
    assert entry["maxRetries"] == 3
    assert entry["responseStatus"] == 503
    time.sleep(0.05)
    deliveries = s.rx.deliveries("/down")
    assert len(deliveries) == 4
    assert_signed_attempts(deliveries, message_id, b"x")
    events = s.states(message_id, until="FAILED")
    assert [e["state"] for e in events].count("ACTIVE") == 4
    assert [e["state"] for e in events].count("RETRY") == 3
    assert [e["state"] for e in events][-2:] == ["ERROR", "FAILED"]


def test_retry_delay_expression_replaces_the_default_backoff(setup: Callable[..., Setup]) -> None:
    s = setup(time_scale=0.05)  # the default backoff would wait 609 ms
    s.rx.respond("/linear", (500, {}, "no"), (500, {}, "no"), (500, {}, "no"), (200, {}, "ok"))
    s.rx.respond("/fixed", (500, {}, "no"), (500, {}, "no"), (200, {}, "ok"))
    linear = s.client.message.publish(
        url=s.rx.url_for("/linear"), body="l", retries=3, retry_delay="1000 * retried"
    ).message_id
    fixed = s.client.message.publish(
        url=s.rx.url_for("/fixed"), body="f", retries=2, retry_delay="2000"
    ).message_id

    s.states(linear, until="DELIVERED")
    s.states(fixed, until="DELIVERED")
    linear_attempts = s.rx.deliveries("/linear")
    fixed_attempts = s.rx.deliveries("/fixed")
    assert len(linear_attempts) == 4
    assert len(fixed_attempts) == 3
    assert_signed_attempts(linear_attempts, linear, b"l")
    assert_signed_attempts(fixed_attempts, fixed, b"f")
    # `retried` is 0 before the first retry: 0 ms, 1000 ms, 2000 ms (scaled).
    first, second, third = gaps(linear_attempts)
    assert first < LATE
    assert_gap(second, 1.0 * s.scale)
    assert_gap(third, 2.0 * s.scale)
    for gap in gaps(fixed_attempts):
        assert_gap(gap, 2.0 * s.scale)

    created = s.client.log.list(filter={"message_id": linear, "state": LogState.CREATED}).logs
    assert [log.retry_delay_expression for log in created] == ["1000 * retried"]


def test_retry_after_is_honoured_up_to_one_day(setup: Callable[..., Setup]) -> None:
    s = setup(time_scale=0.05)
    s.rx.respond(
        "/limited",
        # Over a day: ignored, the default backoff (n = 1: 12.18 s) applies.
        (500, {"Retry-After": "100000"}, "later"),
        (503, {"Retry-After": "2"}, "later"),  # seconds
        (429, {"Retry-After": "3s"}, "later"),  # a Go duration
        (200, {}, "ok"),
    )
    message_id = s.client.message.publish(
        url=s.rx.url_for("/limited"), body="r", retries=3
    ).message_id

    events = s.states(message_id, until="DELIVERED")
    deliveries = s.rx.deliveries("/limited")
    assert len(deliveries) == 4
    assert_signed_attempts(deliveries, message_id, b"r")
    first, second, third = gaps(deliveries)
    assert_gap(first, math.exp(2.5) * s.scale)
    assert_gap(second, 2.0 * s.scale)
    assert_gap(third, 3.0 * s.scale)
    assert [e["responseStatus"] for e in events if e["state"] == "ERROR"] == [500, 503, 429]


def test_489_with_non_retryable_header_skips_the_retries(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.rx.respond("/stop", (489, {"Upstash-NonRetryable-Error": "true"}, "do not retry"))
    s.rx.respond("/plain489", (489, {}, "just an error"), (200, {}, "ok"))
    stop = s.client.message.publish(
        url=s.rx.url_for("/stop"), body="s", retries=3, retry_delay="0"
    ).message_id
    plain = s.client.message.publish(
        url=s.rx.url_for("/plain489"), body="p", retries=3, retry_delay="0"
    ).message_id

    entry = s.dlq_entry(stop)
    assert entry["responseStatus"] == 489
    assert entry["responseBody"] == "do not retry"
    assert [e["state"] for e in s.states(stop, until="FAILED")] == [
        "CREATED",
        "ACTIVE",
        "ERROR",
        "FAILED",
    ]
    # Without the header a 489 is an ordinary failure: retried, then delivered.
    plain_events = s.states(plain, until="DELIVERED")
    assert [e["state"] for e in plain_events].count("RETRY") == 1
    time.sleep(0.1)  # retries would be due at once
    assert len(s.rx.deliveries("/stop")) == 1
    assert len(s.rx.deliveries("/plain489")) == 2
    assert_signed_attempts(s.rx.deliveries("/plain489"), plain, b"p")
    assert s.client.dlq.list(filter={"message_id": plain}).messages == []


def test_timeout_fails_the_attempt_after_the_unscaled_timeout(setup: Callable[..., Setup]) -> None:
    s = setup()  # time_scale 0.001 does not shorten the 1 s timeout
    s.rx.respond("/slow", Response(status=200, body="too late", delay_seconds=60), (200, {}, "ok"))
    published = time.monotonic()
    message_id = s.client.message.publish(
        url=s.rx.url_for("/slow"), body="t", retries=1, retry_delay="0", timeout="1s"
    ).message_id

    first, second = s.rx.wait_for(2, path="/slow", timeout=30.0)
    # The first attempt started after the publish and was given a whole (unscaled) second; the
    # retry came long before the first answer would have (60 s). Load only delays arrivals.
    assert second.received_at - published >= 1.0
    assert second.received_at - first.received_at < 30
    assert_signed_attempts([first, second], message_id, b"t")
    events = s.states(message_id, until="DELIVERED")
    assert [e["state"] for e in events] == [
        "CREATED",
        "ACTIVE",
        "ERROR",
        "RETRY",
        "ACTIVE",
        "DELIVERED",
    ]
    assert events[0]["timeout"] == 1000
    error = events[2]
    assert "responseStatus" not in error
    assert "timed out" in error["error"]


def test_delay_and_not_before_hold_the_first_attempt(setup: Callable[..., Setup]) -> None:
    s = setup(time_scale=0.02)
    start = time.monotonic()
    delayed = s.client.message.publish(url=s.rx.url_for("/delayed"), body="d", delay="10s")
    published = time.monotonic()
    # 10 s x 0.02 = 200 ms
    assert s.rx.deliveries("/delayed") == []
    [delivery] = s.rx.wait_for(1, path="/delayed", timeout=5.0)
    assert delivery.received_at - start >= 0.2 * 0.9
    assert delivery.received_at - published < 0.2 + LATE
    assert_signed_attempts([delivery], delayed.message_id, b"d")

    not_before = int(time.time()) + 10
    start_unix = time.time()
    queued = s.client.message.publish(
        url=s.rx.url_for("/not-before"), body="n", not_before=not_before
    )
    published_unix = time.time()
    # GET shows the unscaled time the caller asked for.
    assert s.client.message.get(queued.message_id).not_before == not_before * 1000
    earliest = start_unix + (not_before - published_unix) * s.scale
    latest = published_unix + (not_before - start_unix) * s.scale
    [delivery] = s.rx.wait_for(1, path="/not-before", timeout=5.0)
    assert earliest - 0.01 <= delivery.received_unix < latest + LATE
    assert delivery.received_unix - start_unix > 0.1  # (9..10 s) x 0.02 at least 180 ms
    assert_signed_attempts([delivery], queued.message_id, b"n")


def test_unreachable_destination_is_retried_then_dead_lettered(
    setup: Callable[..., Setup],
) -> None:
    s = setup()
    url = f"http://127.0.0.1:{closed_port()}/nobody"
    message_id = s.client.message.publish(url=url, body="n", retries=1, retry_delay="0").message_id

    entry = s.dlq_entry(message_id)
    # No response at all: the DLQ records status 0, an empty body and the connection error.
    assert entry["responseStatus"] == 0
    assert entry["responseBody"] == ""
    assert entry["responseHeader"] == {}
    assert "connect" in entry["error"].lower()
    assert entry["url"] == url
    events = s.states(message_id, until="FAILED")
    assert [e["state"] for e in events] == [
        "CREATED",
        "ACTIVE",
        "ERROR",
        "RETRY",
        "ACTIVE",
        "ERROR",
        "FAILED",
    ]
    for error in (events[2], events[5]):
        assert "responseStatus" not in error
        assert "connect" in error["error"].lower()
    [sdk_entry] = s.client.dlq.list(filter={"message_id": message_id}).messages
    assert sdk_entry.response_status == 0


# -- events ---------------------------------------------------------------------------------------


def test_events_of_a_delivered_message(setup: Callable[..., Setup]) -> None:
    s = setup()
    message_id = s.client.message.publish(
        url=s.rx.url_for("/ok"), body="hello", method="PUT", headers={"X-Tag": "t"}
    ).message_id
    s.states(message_id, until="DELIVERED")

    # The SDK reads GET /v2/events, newest first by default.
    logs = s.client.log.list(filter={"message_id": message_id}).logs
    assert [log.state for log in logs] == [LogState.DELIVERED, LogState.ACTIVE, LogState.CREATED]
    assert all(log.message_id == message_id and log.url == s.rx.url_for("/ok") for log in logs)
    assert [log.time for log in logs] == sorted((log.time for log in logs), reverse=True)
    created = logs[-1]
    assert base64.b64decode(created.body_base64 or "") == b"hello"
    assert created.method == "PUT"
    assert created.headers == {"X-Tag": ["t"]}
    assert created.max_retries == 3
    assert logs[0].response_status == 200

    # /v2/logs is the documented spelling; it answers under the key "logs".
    response = s.http.get("/v2/logs", params={"messageId": message_id, "order": "earliestFirst"})
    assert response.status_code == 200
    body = response.json()
    assert "events" not in body
    assert "cursor" not in body
    assert [e["state"] for e in body["logs"]] == ["CREATED", "ACTIVE", "DELIVERED"]
    raw_events = s.http.get("/v2/events", params={"messageId": message_id}).json()
    assert [e["state"] for e in raw_events["events"]] == ["DELIVERED", "ACTIVE", "CREATED"]


def test_cancelled_message_events_are_spelled_canceled(setup: Callable[..., Setup]) -> None:
    s = setup()
    message_id = s.client.message.publish(
        url=s.rx.url_for("/never"),
        body="c",
        delay="1h",  # 3.6 s at time_scale 0.001
    ).message_id
    s.client.message.cancel(message_id)

    events = s.states(message_id, until="CANCELED")
    assert [e["state"] for e in events] == ["CREATED", "CANCEL_REQUESTED", "CANCELED"]
    logs = s.client.log.list(filter={"message_id": message_id, "state": LogState.CANCELED}).logs
    assert [log.state for log in logs] == [LogState.CANCELED]
    assert s.rx.deliveries("/never") == []


def test_event_filters_order_and_cursor_paging(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.rx.respond("/fail", (500, {}, "no"))
    delivered = [
        s.client.message.publish(url=s.rx.url_for("/ok"), body=str(i)).message_id for i in range(3)
    ]
    failed = s.client.message.publish(url=s.rx.url_for("/fail"), body="f", retries=0).message_id
    for message_id in delivered:
        s.states(message_id, until="DELIVERED")
    s.states(failed, until="FAILED")

    only_delivered = s.client.log.list(filter={"state": LogState.DELIVERED}).logs
    assert sorted(log.message_id for log in only_delivered) == sorted(delivered)
    assert {log.state for log in only_delivered} == {LogState.DELIVERED}
    only_failed = s.logs(state="FAILED")["logs"]
    assert [e["messageId"] for e in only_failed] == [failed]
    one = s.client.log.list(filter={"message_id": delivered[1]}).logs
    assert {log.message_id for log in one} == {delivered[1]}

    everything = s.logs(order="earliestFirst")["logs"]
    assert len(everything) == 3 * 3 + 4
    assert [e["time"] for e in everything] == sorted(e["time"] for e in everything)
    newest_first = s.logs()["logs"]
    assert newest_first == everything[::-1]

    # SDK paging (newest first): every event exactly once, no cursor on the last page.
    pages: list[list[tuple[str, str, int]]] = []
    cursor: str | None = None
    while True:
        page = s.client.log.list(cursor=cursor, count=5)
        pages.append([(log.message_id, log.state.value, log.time) for log in page.logs])
        cursor = page.cursor
        if cursor is None:
            break
        assert len(page.logs) == 5
    assert [len(p) for p in pages] == [5, 5, 3]
    flat = [item for p in pages for item in p]
    assert flat == [(e["messageId"], e["state"], e["time"]) for e in newest_first]

    # Raw paging in the other order.
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"order": "earliestFirst", "count": 4}
    while True:
        page_json = s.logs(**params)
        seen.extend(page_json["logs"])
        if "cursor" not in page_json:
            break
        params["cursor"] = page_json["cursor"]
    assert seen == everything
