"""Plan limits (412) and the burst rate limit (429), answered as QStash answers them."""

from __future__ import annotations

import httpx
import pytest
from qstash.errors import QStashError, RateLimitExceededError

from jobsvc.localqstash import LocalQStashServer
from tests.integration.conftest import ClientFactory, ServerFactory
from tests.receiver import Receiver


def _events(server: LocalQStashServer) -> list[dict[str, object]]:
    response = httpx.get(
        f"{server.url}/v2/events",
        headers={"Authorization": f"Bearer {server.user.token}"},
    )
    assert response.status_code == 200
    events: list[dict[str, object]] = response.json()["events"]
    return events


def test_retries_above_the_plan_maximum_are_412_and_store_nothing(
    make_server: ServerFactory, make_client: ClientFactory, receiver: Receiver
) -> None:
    server = make_server(max_retries=5)
    client = make_client(server)
    with pytest.raises(QStashError, match="412"):
        client.message.publish(url=receiver.url_for("/r"), body="x", retries=6)
    assert client.message.publish(url=receiver.url_for("/r"), body="x", retries=5).message_id
    receiver.wait_for(1, path="/r")
    assert [e["state"] for e in _events(server)].count("CREATED") == 1


def test_delay_beyond_the_plan_maximum_is_412(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = make_server(max_delay_seconds=3600, time_scale=1)
    response = httpx.post(
        f"{server.url}/v2/publish/{receiver.url_for('/d')}",
        content=b"x",
        headers={"Authorization": f"Bearer {server.user.token}", "Upstash-Delay": "2h"},
    )
    assert response.status_code == 412
    assert "delay" in response.json()["error"]
    assert _events(server) == []


def test_burst_limit_answers_429_with_the_headers_the_sdk_reads(
    make_server: ServerFactory, make_client: ClientFactory, receiver: Receiver
) -> None:
    server = make_server(burst_rate_limit=3)
    client = make_client(server)
    accepted = 0
    refused: RateLimitExceededError | None = None
    for _ in range(50):  # far more than 3 per second, even on a slow machine
        try:
            client.message.publish(url=receiver.url_for("/b"), body="x")
        except RateLimitExceededError as exc:
            refused = exc
            break
        accepted += 1
    assert refused is not None
    assert 3 <= accepted < 50
    assert refused.limit == "3"
    assert refused.remaining == "0"
    assert refused.reset is not None
    receiver.wait_for(accepted, path="/b")
