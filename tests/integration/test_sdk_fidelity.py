"""What the official SDKs expect of QStash, checked against the local server: several labels kept
as a list and matched by any of them, bulk actions that honour every filter (and refuse unknown
ones) and ``count``, no ``body`` field for a message without one, and a banner that keeps
configured secrets to itself."""

from __future__ import annotations

import time
from typing import Any

import httpx
from qstash import QStash

from jobsvc.localqstash import LocalQStashServer, banner
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ServerFactory
from tests.polling import poll
from tests.receiver import Receiver, ReceiverFactory

LATER = {"Upstash-Delay": "300d"}  # still waiting when the test ends, even at time_scale 0.001


def _publish(http: httpx.Client, url: str, **headers: str) -> str:
    response = http.post(f"/v2/publish/{url}", headers=headers, content=b"x")
    assert response.status_code == 200, response.text
    message_id: str = response.json()["messageId"]
    return message_id


def _dead(http: httpx.Client, receiver: Receiver, n: int, **headers: str) -> list[str]:
    """``n`` messages in the DLQ (their endpoint fails, no retries)."""
    receiver.respond("/dead", (500, {}, "no"))
    ids = [
        _publish(http, receiver.url_for("/dead"), **{"Upstash-Retries": "0", **headers})
        for _ in range(n)
    ]

    def all_dead() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = http.get("/v2/dlq").json()["messages"]
        return entries if {e["messageId"] for e in entries} >= set(ids) else None

    poll(all_dead, timeout=10, what=f"{n} DLQ entries")
    return ids


def _states(http: httpx.Client, message_id: str) -> list[str]:
    return [
        e["state"] for e in http.get("/v2/logs", params={"messageId": message_id}).json()["logs"]
    ]


# -- labels ------------------------------------------------------------------------------------


def test_several_labels_are_a_list_everywhere_and_a_filter_matches_any(
    server: LocalQStashServer, raw: httpx.Client, client: QStash, receiver: Receiver
) -> None:
    waiting = _publish(raw, receiver.url_for("/w"), **LATER, **{"Upstash-Label": "a,b"})
    message = raw.get(f"/v2/messages/{waiting}").json()
    assert (message["label"], message["labels"]) == ("a", ["a", "b"])
    assert client.message.get(waiting).label == "a"
    [created] = raw.get("/v2/logs", params={"label": "b"}).json()["logs"]
    assert (created["messageId"], created["labels"]) == (waiting, ["a", "b"])
    [dead] = _dead(raw, receiver, 1, **{"Upstash-Label": "c,d"})
    [entry] = raw.get("/v2/dlq", params=[("label", "zzz"), ("label", "d")]).json()["messages"]
    assert (entry["messageId"], entry["label"], entry["labels"]) == (dead, "c", ["c", "d"])
    assert raw.get("/v2/dlq", params={"label": "zzz"}).json()["messages"] == []
    # Labels match whole: neither a part of one nor two joined.
    for label in ("c,d", "d,c"):
        assert len(raw.get("/v2/logs", params={"label": label}).json()["logs"]) > 0
    for label in ("cd", "c%", "_"):
        assert raw.get("/v2/logs", params={"label": label}).json()["logs"] == []


# -- bulk cancel -------------------------------------------------------------------------------


def test_bulk_cancel_honours_host_path_dates_and_several_values(
    server: LocalQStashServer, raw: httpx.Client, make_receiver: ReceiverFactory
) -> None:
    one, two = make_receiver(), make_receiver()
    ids = {
        name: _publish(raw, rx.url_for(f"/{name}"), **LATER)
        for name, rx in (("a", one), ("b", one), ("c", two), ("d", one))
    }

    def cancel(**params: Any) -> int:
        response = raw.delete("/v2/messages", params=params)
        assert response.status_code == 200, response.text
        cancelled: int = response.json()["cancelled"]
        return cancelled

    def live() -> set[str]:
        return {
            name for name, message_id in ids.items() if "CANCELED" not in _states(raw, message_id)
        }

    future = int(time.time() * 1000) + 3_600_000
    assert cancel(fromDate=future) == 0
    assert cancel(host=two.url.removeprefix("http://")) == 1
    assert live() == {"a", "b", "d"}
    assert cancel(path=["/a", "/b"]) == 2
    assert live() == {"d"}
    assert cancel(toDate=future, callerIp="127.0.0.1") == 1
    assert live() == set()


def test_a_misspelt_filter_is_refused_and_cancels_or_deletes_nothing(
    server: LocalQStashServer, raw: httpx.Client, receiver: Receiver
) -> None:
    waiting = _publish(raw, receiver.url_for("/w"), **LATER)
    dead = _dead(raw, receiver, 2)
    for method, path in (("DELETE", "/v2/messages"), ("DELETE", "/v2/dlq")):
        response = raw.request(method, path, params={"labeel": "x"})
        assert response.status_code == 400, response.text
        assert "labeel" in response.json()["error"]
    assert raw.post("/v2/dlq/retry", params={"urll": "x"}).status_code == 400
    assert sorted(e["messageId"] for e in raw.get("/v2/dlq").json()["messages"]) == sorted(dead)
    assert _states(raw, waiting) == ["CREATED"]


def test_bulk_dlq_delete_honours_count_and_continues_from_its_cursor(
    server: LocalQStashServer, raw: httpx.Client, receiver: Receiver
) -> None:
    _dead(raw, receiver, 3)
    first = raw.delete("/v2/dlq", params={"count": 2}).json()
    assert first["deleted"] == 2
    assert first["cursor"]
    assert len(raw.get("/v2/dlq").json()["messages"]) == 1
    rest = raw.delete("/v2/dlq", params={"count": 2, "cursor": first["cursor"]}).json()
    assert rest == {"deleted": 1}
    assert raw.get("/v2/dlq").json()["messages"] == []


# -- no body -----------------------------------------------------------------------------------


def test_a_message_or_schedule_without_a_body_has_no_body_field(
    server: LocalQStashServer, raw: httpx.Client, client: QStash, receiver: Receiver
) -> None:
    response = raw.post(f"/v2/publish/{receiver.url_for('/empty')}", headers=LATER)
    message_id = response.json()["messageId"]
    message = raw.get(f"/v2/messages/{message_id}").json()
    assert "body" not in message
    assert "bodyBase64" not in message
    [created] = raw.get("/v2/logs", params={"messageId": message_id}).json()["logs"]
    assert "body" not in created
    schedule_id = client.schedule.create(destination=receiver.url_for("/s"), cron="0 9 * * *")
    schedule = raw.get(f"/v2/schedules/{schedule_id}").json()
    assert "body" not in schedule
    assert client.schedule.get(schedule_id).body is None


# -- the banner --------------------------------------------------------------------------------


def test_the_banner_prints_only_the_published_development_credentials(
    make_server: ServerFactory,
) -> None:
    dev = banner(make_server())
    user = DEV_USERS[0]
    for value in (user.token, user.current_signing_key, user.next_signing_key):
        assert f"={value}\n" in dev + "\n"
    secrets = {
        "token": "a-configured-token",
        "current_signing_key": "sig_configuredCurrentKey0000000",
        "next_signing_key": "sig_configuredNextKey00000000000",
    }
    configured = make_server(**secrets)
    text = banner(configured)
    assert f"QSTASH_URL={configured.url}" in text
    for value in secrets.values():
        assert value not in text
    assert "QSTASH_TOKEN=<the configured token>" in text
