"""The local QStash server under faults it must survive: out-of-range retry delays, stored rows it
cannot load, clients that go away mid-request; and every attempt signed anew."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings, serve_in_thread, tables
from jobsvc.localqstash.store import create_store_engine
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ServerFactory, raw_http
from tests.polling import poll
from tests.receiver import Receiver, ReceiverFactory, Response


def _events(http: httpx.Client, message_id: str) -> list[str]:
    response = http.get("/v2/logs", params={"messageId": message_id, "order": "earliestFirst"})
    assert response.status_code == 200, response.text
    return [e["state"] for e in response.json()["logs"]]


# -- bounded retry delays, and a writer that survives ------------------------------------------


@pytest.mark.parametrize("expression", ["10**64", "1e308 * pow(10, retried)"])
def test_an_out_of_range_retry_delay_waits_a_day_at_most_and_every_user_is_still_served(
    make_server: ServerFactory, make_receiver: ReceiverFactory, expression: str
) -> None:
    # A day is 86 ms at this scale: the retries come, as QStash caps each delay at a day.
    server = make_server(time_scale=1e-6)
    rx = make_receiver()
    rx.respond("/fails", (500, {}, "no"))
    with raw_http(server) as http:
        response = http.post(
            f"/v2/publish/{rx.url_for('/fails')}",
            headers={"Upstash-Retries": "2", "Upstash-Retry-Delay": expression},
        )
        assert response.status_code == 200, response.text
        message_id = response.json()["messageId"]
        rx.wait_for(3, path="/fails")
        poll(
            lambda: "FAILED" in _events(http, message_id) or None,
            timeout=10,
            what="the message to reach the DLQ",
        )
    # The writer is alive: another user's publish is committed and delivered.
    with raw_http(server, DEV_USERS[1].token) as other:
        response = other.post(f"/v2/publish/{rx.url_for('/other')}", content=b"hi")
        assert response.status_code == 200, response.text
    rx.wait_for(1, path="/other")


# -- start-up leaves unreadable rows aside -----------------------------------------------------


def _settings(database_url: str) -> LocalQStashSettings:
    return LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001)


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Records of the local server's loggers, from every thread."""
    records: list[logging.LogRecord] = []
    lock = threading.Lock()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with lock:
                records.append(record)

    handler = Keep(level=logging.INFO)
    loggers = [logging.getLogger(name) for name in ("jobsvc.localqstash", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_start_up_leaves_a_schedule_that_never_fires_and_an_unreadable_message_aside(
    database_url: str, receiver: Receiver, log_records: list[logging.LogRecord]
) -> None:
    with serve_in_thread(_settings(database_url)) as server, raw_http(server) as http:
        for schedule_id in ("good", "bad"):
            response = http.post(
                f"/v2/schedules/{receiver.url_for('/s')}",
                headers={"Upstash-Cron": "0 9 * * *", "Upstash-Schedule-Id": schedule_id},
            )
            assert response.status_code == 200, response.text
        published = [
            http.post(
                f"/v2/publish/{receiver.url_for('/later')}", headers={"Upstash-Delay": "300d"}
            ).json()["messageId"]
            for _ in range(2)
        ]
    # Rows an older version could store: a cron that never fires, a message it cannot read.
    engine = create_store_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(tables.schedules)
                .where(tables.schedules.c.schedule_id == "bad")
                .values(cron="0 0 31 2 *")
            )
            conn.execute(
                update(tables.messages)
                .where(tables.messages.c.message_id == published[0])
                .values(data={})
            )
    finally:
        engine.dispose()
    with serve_in_thread(_settings(database_url)) as server, raw_http(server) as http:
        schedules = http.get("/v2/schedules").json()
        assert [s["scheduleId"] for s in schedules] == ["good"]
        assert http.get(f"/v2/messages/{published[1]}").status_code == 200
        response = http.post(f"/v2/publish/{receiver.url_for('/now')}", content=b"x")
        assert response.status_code == 200, response.text
        receiver.wait_for(1, path="/now")
    aside = [r for r in log_records if getattr(r, "action", None) in _ASIDE]
    assert sorted(r.getMessage() for r in aside) == [
        f"stored message {published[0]} cannot be loaded; left aside",
        "stored schedule bad cannot be armed; left aside",
    ]


_ASIDE = ("row_left_aside", "schedule_left_aside")


def test_a_cron_that_never_fires_is_refused_and_the_server_restarts(
    database_url: str, receiver: Receiver
) -> None:
    with serve_in_thread(_settings(database_url)) as server, raw_http(server) as http:
        response = http.post(
            f"/v2/schedules/{receiver.url_for('/s')}", headers={"Upstash-Cron": "0 0 31 2 *"}
        )
        assert response.status_code == 400, response.text
        assert "never fires" in response.json()["error"]
        assert http.get("/v2/schedules").json() == []
    with serve_in_thread(_settings(database_url)) as server, raw_http(server) as http:
        assert http.get("/v2/schedules").json() == []


# -- a client that goes away -------------------------------------------------------------------


def test_a_client_that_goes_away_mid_batch_is_no_error(
    server: LocalQStashServer, log_records: list[logging.LogRecord]
) -> None:
    host, port = server.settings.host, server.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v2/batch HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Authorization: Bearer {server.user.token}\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n"
                '[{"destination": "http://127.0.0.1:9/"'
            ).encode()
        )
    # Either the server noted the disconnect, or it logged an error: wait for one of them.
    poll(
        lambda: (
            [
                r
                for r in log_records
                if r.levelno >= logging.ERROR or getattr(r, "action", None) == "client_disconnected"
            ]
            or None
        ),
        timeout=10,
        what="the server to notice the client went away",
    )
    errors = [r.getMessage() for r in log_records if r.levelno >= logging.ERROR]
    assert errors == []
    [noted] = [r for r in log_records if getattr(r, "action", None) == "client_disconnected"]
    assert "/v2/batch" in noted.getMessage()


# -- every attempt is signed anew --------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_every_attempt_and_callback_carries_its_own_token(
    server: LocalQStashServer, raw: httpx.Client, receiver: Receiver
) -> None:
    receiver.respond("/twice", (500, {}, "once more"), Response(status=200))
    response = raw.post(
        f"/v2/publish/{receiver.url_for('/twice')}",
        headers={"Upstash-Retries": "1", "Upstash-Callback": receiver.url_for("/callback")},
        content=b"body",
    )
    assert response.status_code == 200, response.text
    attempts = receiver.wait_for(2, path="/twice")
    callbacks = receiver.wait_for(2, path="/callback")
    deliveries = attempts + callbacks
    assert all(d.signature_ok for d in deliveries), [d.signature_error for d in deliveries]
    assert [d.header("Upstash-Retried") for d in attempts] == ["0", "1"]
    claims = [_claims(d.headers["Upstash-Signature"]) for d in deliveries]
    assert len({c["jti"] for c in claims}) == 4
    # Each token is issued at its own attempt: the retry's is not older than the first's.
    assert claims[1]["iat"] >= claims[0]["iat"]
    assert all(c["exp"] - c["iat"] == 300 for c in claims)
