"""The dead-letter queue (list, get, delete, retry) and callbacks (after every attempt, after
the last failure) against a real server, through the official SDK where it has the call and raw
HTTP where it does not (DLQ retry, DLQ bulk delete by query)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from qstash import QStash
from qstash.errors import QStashError

from jobsvc.localqstash import LocalQStashServer
from tests.polling import poll
from tests.receiver import Delivery, Receiver, ReceiverFactory

ServerFactory = Callable[..., LocalQStashServer]


class Setup:
    """A server, the SDK and a raw HTTP client pointed at it, and a signature-checking receiver."""

    def __init__(self, server: LocalQStashServer, rx: Receiver, http: httpx.Client) -> None:
        self.server = server
        self.client = QStash(server.user.token, base_url=server.url)
        self.rx = rx
        self.http = http

    def dlq_raw(self, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get("/v2/dlq", params=params)
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    def dlq_entry(self, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The DLQ entry of a message, once its last attempt has been recorded."""

        def ready() -> dict[str, Any] | None:
            messages = self.dlq_raw(messageId=message_id)
            return messages[0] if messages else None

        return poll(ready, timeout=timeout, what=f"DLQ entry of {message_id}")

    def wait_state(self, message_id: str, state: str, timeout: float = 10.0) -> None:
        def ready() -> bool | None:
            response = self.http.get("/v2/logs", params={"messageId": message_id, "state": state})
            assert response.status_code == 200, response.text
            return True if response.json()["logs"] else None

        poll(ready, timeout=timeout, what=f"{state} event of {message_id}")

    def fail(self, path: str, *, status: int = 500, body: str = "boom", **publish: Any) -> str:
        """Publish a message whose destination answers ``status`` once, with no retries."""
        self.rx.respond(path, (status, {}, body))
        publish.setdefault("retries", 0)
        message_id: str = self.client.message.publish(
            url=self.rx.url_for(path), body=f"body of {path}", **publish
        ).message_id
        return message_id


@pytest.fixture
def s(server: LocalQStashServer, make_receiver: ReceiverFactory) -> Iterator[Setup]:
    rx = make_receiver(
        current_signing_key=server.user.current_signing_key,
        next_signing_key=server.user.next_signing_key,
    )
    headers = {"Authorization": f"Bearer {server.user.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10.0) as http:
        setup = Setup(server, rx, http)
        yield setup
        setup.client.http._client.close()  # the SDK has no close() of its own


def header(headers: dict[str, list[str]], name: str) -> list[str] | None:
    """A header of a recorded response, looked up case-insensitively."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def by_retried(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = [d.json() for d in deliveries]
    return sorted(bodies, key=lambda b: int(b["retried"]))


# -- DLQ: list, get, delete -------------------------------------------------------------------


def test_dlq_list_pages_with_a_cursor_and_filters(s: Setup) -> None:
    a1 = s.fail("/a", status=404, body="404 Not Found")
    a2 = s.fail("/a", status=404, body="404 Not Found")
    b = s.fail("/b", status=500, body="boom")
    for message_id in (a1, a2, b):
        s.dlq_entry(message_id)

    everything = s.client.dlq.list()
    assert everything.cursor is None
    assert sorted(m.message_id for m in everything.messages) == sorted([a1, a2, b])
    assert len({m.dlq_id for m in everything.messages}) == 3

    first = s.client.dlq.list(count=2)
    assert len(first.messages) == 2
    assert first.cursor
    second = s.client.dlq.list(count=2, cursor=first.cursor)
    assert len(second.messages) == 1
    assert second.cursor is None  # omitted on the last page
    paged = [m.dlq_id for m in first.messages + second.messages]
    assert paged == [m.dlq_id for m in everything.messages]
    # The raw answer has no "cursor" key at all on the last page.
    raw = s.http.get("/v2/dlq", params={"count": 2, "cursor": first.cursor}).json()
    assert "cursor" not in raw

    by_url = s.client.dlq.list(filter={"url": s.rx.url_for("/a")}).messages
    assert sorted(m.message_id for m in by_url) == sorted([a1, a2])
    by_status = s.client.dlq.list(filter={"response_status": 500}).messages
    assert [m.message_id for m in by_status] == [b]
    by_id = s.client.dlq.list(filter={"message_id": a2}).messages
    assert [m.message_id for m in by_id] == [a2]
    assert s.client.dlq.list(filter={"response_status": 418}).messages == []


def test_dlq_get_returns_the_last_response_and_the_message(s: Setup) -> None:
    s.rx.respond("/gone", (404, {"X-Reason": "gone"}, "404 Not Found"))
    message_id = s.client.message.publish(
        url=s.rx.url_for("/gone"),
        body="the body",
        method="PUT",
        headers={"X-Custom": "c"},
        retries=0,
        retry_delay="7000 * retried",
    ).message_id
    dlq_id = s.dlq_entry(message_id)["dlqId"]

    entry = s.client.dlq.get(dlq_id)
    assert entry.dlq_id == dlq_id
    assert entry.message_id == message_id
    assert entry.url == s.rx.url_for("/gone")
    assert entry.method == "PUT"
    assert entry.body == "the body"
    assert entry.headers == {"X-Custom": ["c"]}
    assert entry.max_retries == 0
    assert entry.response_status == 404
    assert entry.response_body == "404 Not Found"
    assert entry.response_body_base64 is None
    assert entry.response_headers is not None
    assert header(entry.response_headers, "X-Reason") == ["gone"]
    assert entry.retry_delay_expression == "7000 * retried"
    assert entry.caller_ip == "127.0.0.1"

    raw = s.http.get(f"/v2/dlq/{dlq_id}")
    assert raw.status_code == 200
    assert raw.json()["dlqId"] == dlq_id
    assert raw.json()["responseBody"] == "404 Not Found"
    missing = s.http.get("/v2/dlq/0-0")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_dlq_keeps_a_binary_response_body_as_base64(s: Setup) -> None:
    s.rx.respond("/binary", (500, {}, b"\xff\xfe\x00bin"))
    message_id = s.client.message.publish(
        url=s.rx.url_for("/binary"), body="x", retries=0
    ).message_id
    entry = s.client.dlq.get(s.dlq_entry(message_id)["dlqId"])
    assert entry.response_body is None
    assert entry.response_body_base64 is not None
    assert base64.b64decode(entry.response_body_base64) == b"\xff\xfe\x00bin"


def test_dlq_delete_one_many_and_by_query(s: Setup) -> None:
    ids = [s.dlq_entry(s.fail(f"/d{i}"))["dlqId"] for i in range(5)]

    s.client.dlq.delete(ids[0])
    with pytest.raises(QStashError, match="404"):
        s.client.dlq.get(ids[0])
    with pytest.raises(QStashError, match="404"):
        s.client.dlq.delete(ids[0])

    # The Python SDK sends a JSON body {"dlqIds": [...]}.
    assert s.client.dlq.delete_many([ids[1], ids[2], "0-0"]) == 2

    # The JS SDK and the openapi use repeated query keys.
    response = s.http.delete("/v2/dlq", params=[("dlqIds", ids[3]), ("dlqIds", ids[4])])
    assert response.status_code == 200
    assert response.json() == {"deleted": 2}
    assert s.client.dlq.list().messages == []


# -- DLQ: retry ---------------------------------------------------------------------------------


def test_dlq_retry_one_delivers_again_and_removes_the_entry(s: Setup) -> None:
    s.rx.respond("/later", (500, {}, "not yet"), (200, {}, "ok now"))
    first_id = s.client.message.publish(
        url=s.rx.url_for("/later"), body="again", headers={"X-Keep": "k"}, retries=0
    ).message_id
    dlq_id = s.dlq_entry(first_id)["dlqId"]

    response = s.http.post(f"/v2/dlq/retry/{dlq_id}")
    assert response.status_code == 201
    body = response.json()
    assert list(body) == ["messageId"]
    new_id = body["messageId"]

    first, second = s.rx.wait_for(2, path="/later")
    assert second.signature_ok, second.signature_error
    assert second.header("Upstash-Message-Id") == new_id
    assert second.header("Upstash-Retried") == "0"
    assert second.body == first.body == b"again"
    assert second.header("X-Keep") == "k"
    s.wait_state(new_id, "DELIVERED")
    assert s.http.get(f"/v2/dlq/{dlq_id}").status_code == 404
    assert s.client.dlq.list().messages == []
    assert s.http.post(f"/v2/dlq/retry/{dlq_id}").status_code == 404


def test_dlq_bulk_retry_by_query_ids(s: Setup) -> None:
    s.rx.respond("/one", (500, {}, "no"), (200, {}, "ok"))
    s.rx.respond("/two", (500, {}, "no"), (200, {}, "ok"))
    s.rx.respond("/three", (500, {}, "no"))
    one = s.dlq_entry(s.client.message.publish(url=s.rx.url_for("/one"), retries=0).message_id)
    two = s.dlq_entry(s.client.message.publish(url=s.rx.url_for("/two"), retries=0).message_id)
    three = s.dlq_entry(s.fail("/three"))

    response = s.http.post(
        "/v2/dlq/retry", params=[("dlqIds", one["dlqId"]), ("dlqIds", two["dlqId"])]
    )
    assert response.status_code == 201
    body = response.json()
    assert body["cursor"] == ""
    assert len(body["responses"]) == 2
    new_ids = {r["messageId"] for r in body["responses"]}
    assert len(new_ids) == 2
    assert not new_ids & {one["messageId"], two["messageId"]}

    [_, one_again] = s.rx.wait_for(2, path="/one")
    [_, two_again] = s.rx.wait_for(2, path="/two")
    assert {one_again.header("Upstash-Message-Id"), two_again.header("Upstash-Message-Id")} == (
        new_ids
    )
    assert one_again.signature_ok, one_again.signature_error
    assert two_again.signature_ok, two_again.signature_error
    for new_id in new_ids:
        s.wait_state(new_id, "DELIVERED")
    # Only the entry that was not named is left.
    assert [m.dlq_id for m in s.client.dlq.list().messages] == [three["dlqId"]]
    assert len(s.rx.deliveries("/three")) == 1


def test_dlq_retry_config_headers_override_the_original(s: Setup) -> None:
    s.rx.respond("/broken", (500, {}, "still broken"))
    original = s.client.message.publish(
        url=s.rx.url_for("/broken"), body="b", retries=2, retry_delay="0"
    ).message_id
    entry = s.dlq_entry(original)
    assert entry["maxRetries"] == 2
    assert len(s.rx.deliveries("/broken")) == 3

    response = s.http.post(f"/v2/dlq/retry/{entry['dlqId']}", headers={"Upstash-Retries": "0"})
    assert response.status_code == 201
    retried = response.json()["messageId"]

    again = s.dlq_entry(retried)
    assert again["maxRetries"] == 0
    assert again["retryDelayExpression"] == "0"  # not overridden: kept from the original
    assert again["responseBody"] == "still broken"
    time.sleep(0.05)  # a retry would be due at once
    attempts = s.rx.deliveries("/broken")
    assert len(attempts) == 4
    assert attempts[3].header("Upstash-Message-Id") == retried
    assert [m.message_id for m in s.client.dlq.list().messages] == [retried]


# -- callbacks ----------------------------------------------------------------------------------


def test_callback_is_called_after_every_attempt(s: Setup) -> None:
    s.rx.respond(
        "/src", (500, {"X-Resp": "first"}, "first failure"), (200, {"X-Resp": "second"}, "done")
    )
    before = int(time.time() * 1000)
    message_id = s.client.message.publish(
        url=s.rx.url_for("/src"),
        body="source body",
        headers={"X-Src": "s"},
        retries=1,
        retry_delay="0",
        callback=s.rx.url_for("/cb"),
    ).message_id
    after = int(time.time() * 1000)

    deliveries = s.rx.wait_for(2, path="/cb")
    s.wait_state(message_id, "DELIVERED")
    time.sleep(0.05)
    assert len(s.rx.deliveries("/cb")) == 2
    for delivery in deliveries:
        assert delivery.method == "POST"
        assert delivery.signature_ok, delivery.signature_error
        assert delivery.header("Content-Type") == "application/json"
        assert delivery.header("Upstash-Message-Id") not in (None, message_id)
    failed, succeeded = by_retried(deliveries)
    assert [failed["status"], succeeded["status"]] == [500, 200]
    assert base64.b64decode(failed["body"]) == b"first failure"
    assert base64.b64decode(succeeded["body"]) == b"done"
    assert header(failed["header"], "X-Resp") == ["first"]
    assert header(succeeded["header"], "X-Resp") == ["second"]
    assert [failed["retried"], succeeded["retried"]] == [0, 1]
    for body in (failed, succeeded):
        assert body["maxRetries"] == 1
        assert body["sourceMessageId"] == message_id
        assert body["url"] == s.rx.url_for("/src")
        assert body["method"] == "POST"
        assert body["sourceHeader"] == {"X-Src": ["s"]}
        assert base64.b64decode(body["sourceBody"]) == b"source body"
        # Quoted millisecond timestamps, as the callbacks page shows them.
        assert isinstance(body["createdAt"], str)
        assert isinstance(body["notBefore"], str)
        assert before <= int(body["createdAt"]) <= after
        assert int(body["notBefore"]) == int(body["createdAt"])
        assert body["callerIP"] == "127.0.0.1"
        assert "dlqId" not in body


def test_failure_callback_is_called_once_with_the_dlq_id(s: Setup) -> None:
    s.rx.respond("/fails", (503, {}, "unavailable"))
    message_id = s.client.message.publish(
        url=s.rx.url_for("/fails"),
        body="f",
        retries=2,
        retry_delay="0",
        failure_callback=s.rx.url_for("/on-failure"),
        failure_callback_headers={"Forward-X-Fcb": "f"},
    ).message_id
    ok_id = s.client.message.publish(
        url=s.rx.url_for("/fine"), body="ok", failure_callback=s.rx.url_for("/never")
    ).message_id

    entry = s.dlq_entry(message_id)
    [delivery] = s.rx.wait_for(1, path="/on-failure")
    s.wait_state(ok_id, "DELIVERED")
    time.sleep(0.1)
    assert len(s.rx.deliveries("/on-failure")) == 1
    assert len(s.rx.deliveries("/fails")) == 3
    assert s.rx.deliveries("/never") == []
    assert delivery.signature_ok, delivery.signature_error
    assert delivery.header("X-Fcb") == "f"
    body = delivery.json()
    assert body["dlqId"] == entry["dlqId"]
    assert body["sourceMessageId"] == message_id
    assert body["status"] == 503
    assert base64.b64decode(body["body"]) == b"unavailable"
    assert body["retried"] == body["maxRetries"] == 2
    assert body["url"] == s.rx.url_for("/fails")
    assert base64.b64decode(body["sourceBody"]) == b"f"


def test_callback_config_headers_are_applied(s: Setup) -> None:
    s.rx.respond("/cb-down", (500, {}, "callback endpoint down"))
    message_id = s.client.message.publish(
        url=s.rx.url_for("/target"),
        body="t",
        retries=2,
        retry_delay="0",  # the callback would inherit both without its own settings
        callback=s.rx.url_for("/cb-down"),
        callback_headers={"Retries": "0", "Method": "PUT", "Forward-X-Cb": "yes"},
    ).message_id

    s.wait_state(message_id, "DELIVERED")
    [delivery] = s.rx.wait_for(1, path="/cb-down")
    [callback_entry] = poll(
        lambda: s.dlq_raw(url=s.rx.url_for("/cb-down")) or None,
        timeout=10.0,
        what="the failed callback in the DLQ",
    )
    time.sleep(0.05)  # a retry would be due at once
    assert len(s.rx.deliveries("/cb-down")) == 1
    assert callback_entry["maxRetries"] == 0
    assert callback_entry["method"] == "PUT"
    assert delivery.method == "PUT"
    assert delivery.header("X-Cb") == "yes"
    assert delivery.signature_ok, delivery.signature_error
    assert json.loads(delivery.body)["sourceMessageId"] == message_id


def test_delayed_callbacks_are_rejected(s: Setup) -> None:
    url = s.rx.url_for("/x")
    with pytest.raises(QStashError, match="400"):
        s.client.message.publish(
            url=url, body="x", callback=s.rx.url_for("/cb"), callback_headers={"Delay": "10s"}
        )
    with pytest.raises(QStashError, match="400"):
        s.client.message.publish(
            url=url,
            body="x",
            failure_callback=s.rx.url_for("/fcb"),
            failure_callback_headers={"Delay": "1s"},
        )
    response = s.http.post(
        f"/v2/publish/{url}",
        content=b"x",
        headers={"Upstash-Callback": s.rx.url_for("/cb"), "Upstash-Callback-Delay": "5s"},
    )
    assert response.status_code == 400
    assert "error" in response.json()
    # A callback's retry delay is not a delay of the callback itself.
    accepted = s.client.message.publish(
        url=url, body="x", callback=s.rx.url_for("/cb"), callback_headers={"Retry-Delay": "0"}
    )
    s.rx.wait_for(1, path="/cb")
    assert [d.header("Upstash-Message-Id") for d in s.rx.deliveries("/x")] == [accepted.message_id]
