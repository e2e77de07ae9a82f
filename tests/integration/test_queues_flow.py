"""Queues, URL-group administration, flow control, the global concurrency cap and signing keys
against a real local QStash server, through the official SDK (httpx where it has no call), on
SQLite and on PostgreSQL. Concurrency is measured where it shows: at the receiver."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from qstash import QStash
from qstash.errors import QStashError
from qstash.message import BatchRequest, FlowControl
from qstash.url_group import Endpoint

from jobsvc.localqstash import LocalQStashSettings, serve_in_thread
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ClientFactory, ServerFactory, raw_http
from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

SIGNING_KEY = re.compile(r"^sig_[1-9A-HJ-NP-Za-km-z]{28}$")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def _finished(receiver: Receiver, count: int, path: str, timeout: float = 10.0) -> list[Delivery]:
    """``count`` deliveries to ``path``, each answered by the receiver."""
    receiver.wait_for(count, path=path, timeout=timeout)
    _wait_until(
        lambda: all(d.responded_at is not None for d in receiver.deliveries(path)),
        timeout=timeout,
        what=f"the responses on {path}",
    )
    return receiver.deliveries(path)


def _max_overlap(deliveries: list[Delivery]) -> int:
    """The most requests the receiver was handling at the same moment."""
    edges: list[tuple[float, int]] = []
    for d in deliveries:
        assert d.responded_at is not None
        edges += [(d.received_at, 1), (d.responded_at, -1)]
    edges.sort()  # at equal times the end (-1) sorts first
    return max(itertools.accumulate(step for _, step in edges))


class Hold:
    """A receiver response that blocks until released (for deterministic in-flight states)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, delivery: Delivery) -> Response:
        self.released.wait(60)
        return Response(200, body="released")


@pytest.fixture
def hold() -> Iterator[Hold]:
    """Released at teardown too, so a failed test does not leave deliveries hanging.

    List it after the receiver fixtures: it is then torn down before them."""
    held = Hold()
    yield held
    held.released.set()


# -- queues ---------------------------------------------------------------------------------------


def test_queue_upsert_get_list_pause_delete(client: QStash, receiver: Receiver) -> None:
    before = _now_ms()
    client.queue.upsert("q-admin", parallelism=2)
    after = _now_ms()
    queue = client.queue.get("q-admin")
    assert queue.name == "q-admin"
    assert queue.parallelism == 2
    assert before <= queue.created_at <= after
    assert queue.created_at <= queue.updated_at <= after
    assert queue.lag == 0
    assert queue.paused is False

    time.sleep(0.005)
    client.queue.upsert("q-admin", parallelism=3)
    updated = client.queue.get("q-admin")
    assert updated.parallelism == 3
    assert updated.created_at == queue.created_at
    assert updated.updated_at > queue.updated_at

    client.queue.upsert("q-other")
    assert [(q.name, q.parallelism, q.paused) for q in client.queue.list()] == [
        ("q-admin", 3, False),
        ("q-other", 1, False),
    ]

    client.queue.pause("q-admin")
    assert client.queue.get("q-admin").paused is True
    assert {q.name: q.paused for q in client.queue.list()} == {"q-admin": True, "q-other": False}
    client.queue.resume("q-admin")
    assert client.queue.get("q-admin").paused is False
    client.queue.upsert("q-admin", parallelism=3, paused=True)
    assert client.queue.get("q-admin").paused is True

    with pytest.raises(QStashError, match="status: 400"):
        client.queue.upsert("no spaces/allowed")
    with pytest.raises(QStashError, match="status: 400"):
        client.queue.upsert("q-admin", parallelism=0)
    assert client.queue.get("q-admin").parallelism == 3

    client.queue.delete("q-admin")
    with pytest.raises(QStashError, match="status: 404"):
        client.queue.get("q-admin")
    assert [q.name for q in client.queue.list()] == ["q-other"]

    # Enqueueing to a queue nobody created makes it, with parallelism 1.
    client.message.enqueue(queue="made-by-enqueue", url=receiver.url_for("/auto"), body="x")
    made = client.queue.get("made-by-enqueue")
    assert (made.name, made.parallelism, made.paused) == ("made-by-enqueue", 1, False)
    [delivery] = receiver.wait_for(1, path="/auto")
    assert delivery.signature_ok, delivery.signature_error


def test_queue_parallelism_1_is_fifo_without_overlap(client: QStash, receiver: Receiver) -> None:
    client.queue.upsert("fifo", parallelism=1)
    receiver.respond("/slow", Response(delay_seconds=0.1))
    for i in range(5):
        client.message.enqueue(queue="fifo", url=receiver.url_for("/slow"), body=f"m{i}")
    deliveries = _finished(receiver, 5, "/slow")
    assert [d.text for d in deliveries] == [f"m{i}" for i in range(5)]
    for earlier, later in itertools.pairwise(deliveries):
        assert earlier.responded_at is not None
        assert later.received_at >= earlier.responded_at  # the next starts after the previous
    assert all(d.signature_ok for d in deliveries)
    _wait_until(lambda: client.queue.get("fifo").lag == 0, what="lag 0")


def test_queue_parallelism_2_runs_two_at_a_time(client: QStash, receiver: Receiver) -> None:
    client.queue.upsert("pair", parallelism=2)
    receiver.respond("/slow", Response(delay_seconds=0.15))
    for i in range(6):
        client.message.enqueue(queue="pair", url=receiver.url_for("/slow"), body=f"m{i}")
    deliveries = _finished(receiver, 6, "/slow")
    assert _max_overlap(deliveries) == 2
    assert sorted(d.text for d in deliveries) == [f"m{i}" for i in range(6)]
    # Starts follow the queue's order.
    assert [d.text for d in deliveries[:2]] in (["m0", "m1"], ["m1", "m0"])


def test_raising_queue_parallelism_starts_waiting_messages(
    client: QStash, receiver: Receiver, hold: Hold
) -> None:
    receiver.respond("/h", hold)
    client.queue.upsert("grow", parallelism=1)
    for i in range(4):
        client.message.enqueue(queue="grow", url=receiver.url_for("/h"), body=f"m{i}")
    receiver.wait_for(1, path="/h")
    time.sleep(0.1)
    assert len(receiver.deliveries("/h")) == 1
    assert client.queue.get("grow").lag == 4

    client.queue.upsert("grow", parallelism=3)
    started = receiver.wait_for(3, path="/h")
    time.sleep(0.1)
    assert [d.text for d in receiver.deliveries("/h")] == ["m0", "m1", "m2"]
    assert all(d.responded_at is None for d in started)  # all three in flight together
    hold.released.set()
    assert [d.text for d in _finished(receiver, 4, "/h")] == ["m0", "m1", "m2", "m3"]


def test_paused_queue_holds_messages_until_resumed(client: QStash, receiver: Receiver) -> None:
    client.queue.upsert("held", parallelism=1, paused=True)
    for i in range(3):
        client.message.enqueue(queue="held", url=receiver.url_for("/held"), body=f"m{i}")
    time.sleep(0.3)
    assert receiver.deliveries("/held") == []
    assert client.queue.get("held").lag == 3

    client.queue.resume("held")
    deliveries = _finished(receiver, 3, "/held")
    assert [d.text for d in deliveries] == ["m0", "m1", "m2"]
    _wait_until(lambda: client.queue.get("held").lag == 0, what="lag 0")

    # Pausing again holds the next one.
    client.queue.pause("held")
    client.message.enqueue(queue="held", url=receiver.url_for("/held"), body="m3")
    time.sleep(0.2)
    assert len(receiver.deliveries("/held")) == 3
    assert client.queue.get("held").lag == 1
    client.queue.resume("held")
    assert receiver.wait_for(4, path="/held")[3].text == "m3"


# -- URL groups -----------------------------------------------------------------------------------


def test_url_group_administration(client: QStash, receiver: Receiver) -> None:
    a, b, c = (receiver.url_for(p) for p in ("/a", "/b", "/c"))
    before = _now_ms()
    client.url_group.upsert_endpoints("grp", [{"url": a, "name": "first"}, {"url": b}])
    group = client.url_group.get("grp")
    assert group.name == "grp"
    assert before <= group.created_at <= group.updated_at <= _now_ms()
    assert group.endpoints == [Endpoint(url=a, name="first"), Endpoint(url=b, name=None)]

    time.sleep(0.005)
    client.url_group.upsert_endpoints("grp", [{"url": c, "name": "third"}])
    client.url_group.upsert_endpoints("other", [{"url": a}])
    grown = client.url_group.get("grp")
    assert [e.url for e in grown.endpoints] == [a, b, c]
    assert grown.created_at == group.created_at
    assert grown.updated_at > group.updated_at
    assert [(g.name, len(g.endpoints)) for g in client.url_group.list()] == [
        ("grp", 3),
        ("other", 1),
    ]

    # Publishing to the group reaches every endpoint.
    client.message.publish(url_group="grp", body="fan-out")
    for path in ("/a", "/b", "/c"):
        [delivery] = receiver.wait_for(1, path=path)
        assert delivery.header("Upstash-Topic-Name") == "grp"
        assert delivery.signature_ok, delivery.signature_error

    client.url_group.remove_endpoints("grp", [{"name": "first"}])
    assert [e.url for e in client.url_group.get("grp").endpoints] == [b, c]
    client.url_group.remove_endpoints("grp", [{"url": b}, {"url": c}])
    # Removing the last endpoint deletes the group.
    with pytest.raises(QStashError, match="status: 404"):
        client.url_group.get("grp")
    assert [g.name for g in client.url_group.list()] == ["other"]

    client.url_group.delete("other")
    assert client.url_group.list() == []
    client.url_group.delete("never-existed")  # 2xx: the SDK's own tests rely on it


# -- flow control ---------------------------------------------------------------------------------


def test_flow_control_parallelism_limits_concurrency(client: QStash, receiver: Receiver) -> None:
    receiver.respond("/fc", Response(delay_seconds=0.2))
    fc = FlowControl(key="k", parallelism=2)
    messages: list[BatchRequest] = [
        {"url": receiver.url_for("/fc"), "body": f"m{i}", "flow_control": fc} for i in range(10)
    ]
    published = time.monotonic()
    client.message.batch(messages)
    deliveries = _finished(receiver, 10, "/fc")
    assert sorted(d.text for d in deliveries) == sorted(f"m{i}" for i in range(10))
    assert _max_overlap(deliveries) == 2
    assert all(d.signature_ok for d in deliveries)
    # Five rounds of at least 200 ms: the last round cannot start sooner. Measured from before
    # the publish, so a late first delivery cannot shrink it (load only adds time).
    assert max(d.received_at for d in deliveries) - published >= 4 * 0.2

    info = client.flow_control.get("k")
    assert info.key == "k"
    assert info.parallelism_max == 2
    _wait_until(lambda: client.flow_control.get("k").parallelism_count == 0, what="count 0")
    assert client.flow_control.get("k").wait_list_size == 0


def test_flow_control_rate_per_scaled_period(
    make_server: ServerFactory, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    server = make_server(time_scale=0.2)  # a 1 s period lasts 200 ms
    period = 0.2
    rx = make_receiver(server.user.current_signing_key, server.user.next_signing_key)
    client = make_client(server)
    fc = FlowControl(key="rated", rate=3, period="1s")
    published = time.monotonic()
    client.message.batch(
        [{"url": rx.url_for("/r"), "body": f"m{i}", "flow_control": fc} for i in range(9)]
    )
    deliveries = rx.wait_for(9, path="/r", timeout=30)
    starts = sorted(d.received_at for d in deliveries)
    # The first window opens after the publish and holds three starts; a delivery arrives after
    # its start. So the 4th arrival is a period after the publish at the soonest, the 7th two:
    # bounds that load (which only delays arrivals) cannot break.
    assert starts[3] - published >= period, starts
    assert starts[6] - published >= 2 * period, starts
    # And not much slower than the rate allows (three windows; one start a period would take
    # eight): a generous bound, load only adds to it.
    assert starts[-1] - published < 8 * period, starts

    info = client.flow_control.get("rated")
    assert (info.rate_max, info.rate_period) == (3, 1)
    assert info.parallelism_max == 0  # no parallelism limit given
    assert 1 <= info.rate_count <= 3
    assert abs(info.rate_period_start - time.time()) < 5  # unix seconds


def test_flow_control_get_list_pause_resume(
    client: QStash, receiver: Receiver, raw: httpx.Client, hold: Hold
) -> None:
    receiver.respond("/hold", hold)
    fc = FlowControl(key="fc-hold", parallelism=1, rate=10, period="1m")
    for i in range(5):
        client.message.publish(url=receiver.url_for("/hold"), body=f"m{i}", flow_control=fc)
    receiver.wait_for(1, path="/hold")
    before = time.time()
    info = client.flow_control.get("fc-hold")
    assert info.key == "fc-hold"
    assert info.wait_list_size == 4
    assert info.parallelism_max == 1
    assert info.parallelism_count == 1
    assert info.rate_max == 10
    assert info.rate_count == 1
    assert info.rate_period == 60
    assert before - 5 <= info.rate_period_start <= before + 1  # unix seconds
    assert info.is_paused is False
    assert info.is_pinned_parallelism is False
    assert info.is_pinned_rate is False

    listed = raw.get("/v2/flowControl").json()
    assert [entry["flowControlKey"] for entry in listed] == ["fc-hold"]
    assert listed[0]["waitListSize"] == 4
    assert listed[0]["parallelismCount"] == 1
    assert [e["flowControlKey"] for e in raw.get("/v2/flowControl?search=hold").json()] == [
        "fc-hold"
    ]
    assert raw.get("/v2/flowControl?search=nothing").json() == []

    client.flow_control.pause("fc-hold")
    assert client.flow_control.get("fc-hold").is_paused is True
    hold.released.set()
    _wait_until(lambda: client.flow_control.get("fc-hold").parallelism_count == 0, what="idle")
    time.sleep(0.2)
    assert len(receiver.deliveries("/hold")) == 1  # paused: nothing else starts
    assert client.flow_control.get("fc-hold").wait_list_size == 4

    client.flow_control.resume("fc-hold")
    deliveries = _finished(receiver, 5, "/hold")
    assert [d.text for d in deliveries] == [f"m{i}" for i in range(5)]
    after = client.flow_control.get("fc-hold")
    assert (after.is_paused, after.wait_list_size) == (False, 0)

    with pytest.raises(QStashError, match="status: 404"):
        client.flow_control.get("no-such-key")


def test_flow_control_pin_overrides_message_parallelism(client: QStash, receiver: Receiver) -> None:
    fc = FlowControl(key="pinned", parallelism=1)
    client.message.publish(url=receiver.url_for("/warm"), body="w", flow_control=fc)
    receiver.wait_for(1, path="/warm")

    client.flow_control.pin("pinned", {"parallelism": 3})
    info = client.flow_control.get("pinned")
    assert (info.parallelism_max, info.is_pinned_parallelism) == (3, True)
    receiver.respond("/p", Response(delay_seconds=0.15))
    client.message.batch(
        [{"url": receiver.url_for("/p"), "body": f"m{i}", "flow_control": fc} for i in range(6)]
    )
    assert _max_overlap(_finished(receiver, 6, "/p")) == 3
    assert client.flow_control.get("pinned").parallelism_max == 3  # messages did not undo it

    client.flow_control.pin("pinned", {"rate": 50, "period": 60})
    info = client.flow_control.get("pinned")
    assert (info.rate_max, info.rate_period, info.is_pinned_rate) == (50, 60, True)
    client.flow_control.unpin("pinned", {"parallelism": True, "rate": True})
    info = client.flow_control.get("pinned")
    assert (info.is_pinned_parallelism, info.is_pinned_rate) == (False, False)

    # Unpinned, the messages' own parallelism of 1 applies again.
    receiver.respond("/u", Response(delay_seconds=0.1))
    client.message.batch(
        [{"url": receiver.url_for("/u"), "body": f"m{i}", "flow_control": fc} for i in range(3)]
    )
    assert _max_overlap(_finished(receiver, 3, "/u")) == 1
    assert client.flow_control.get("pinned").parallelism_max == 1


def test_global_parallelism_caps_all_deliveries(
    make_server: ServerFactory,
    make_receiver: ReceiverFactory,
    make_client: ClientFactory,
    hold: Hold,
) -> None:
    server = make_server(max_concurrent_deliveries=3)
    rx = make_receiver(server.user.current_signing_key, server.user.next_signing_key)
    rx.respond("/g", hold)
    client = make_client(server)
    with raw_http(server) as http:
        idle = http.get("/v2/globalParallelism")
        assert idle.status_code == 200
        assert idle.json() == {"parallelismMax": 3, "parallelismCount": 0}

        client.message.batch([{"url": rx.url_for("/g"), "body": f"m{i}"} for i in range(5)])
        rx.wait_for(3, path="/g")
        time.sleep(0.1)
        assert len(rx.deliveries("/g")) == 3
        busy = client.flow_control.get_global_parallelism()
        assert (busy.parallelism_max, busy.parallelism_count) == (3, 3)

        hold.released.set()
        deliveries = _finished(rx, 5, "/g")
        assert sorted(d.text for d in deliveries) == [f"m{i}" for i in range(5)]
        _wait_until(
            lambda: client.flow_control.get_global_parallelism().parallelism_count == 0,
            what="global count 0",
        )


def test_slow_delivery_does_not_block_the_others(
    client: QStash, receiver: Receiver, hold: Hold
) -> None:
    receiver.respond("/slow", hold)  # answers only once the fast ones are done
    client.message.publish(url=receiver.url_for("/slow"), body="slow", retries=0)
    [slow] = receiver.wait_for(1, path="/slow")
    client.message.batch([{"url": receiver.url_for("/fast"), "body": f"f{i}"} for i in range(20)])
    fast = _finished(receiver, 20, "/fast", timeout=30)
    assert slow.responded_at is None  # still in flight
    assert sorted(d.text for d in fast) == sorted(f"f{i}" for i in range(20))
    hold.released.set()
    _finished(receiver, 1, "/slow")


# -- signing keys ---------------------------------------------------------------------------------


def test_signing_keys_rotate_and_persist(
    database_url: str, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    user, other = DEV_USERS[0], DEV_USERS[1]
    settings = LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001)
    with serve_in_thread(settings) as server:
        client = make_client(server)
        keys = client.signing_key.get()
        assert (keys.current, keys.next) == (user.current_signing_key, user.next_signing_key)

        rotated = client.signing_key.rotate()
        assert rotated.current == user.next_signing_key
        assert SIGNING_KEY.match(rotated.next), rotated.next
        assert rotated.next not in (user.current_signing_key, user.next_signing_key)
        got = client.signing_key.get()
        assert (got.current, got.next) == (rotated.current, rotated.next)
        # Other users keep their keys.
        with httpx.Client(base_url=server.url) as http:
            theirs = http.get("/v2/keys", headers={"Authorization": f"Bearer {other.token}"}).json()
        assert theirs == {"current": other.current_signing_key, "next": other.next_signing_key}

        new_pair = make_receiver(rotated.current, rotated.next)
        old_current_only = make_receiver(user.current_signing_key, user.current_signing_key)
        client.message.publish(url=new_pair.url_for("/after"), body="signed anew")
        client.message.publish(url=old_current_only.url_for("/after"), body="signed anew")
        [ok] = new_pair.wait_for(1, path="/after")
        assert ok.signature_ok, ok.signature_error
        [stale] = old_current_only.wait_for(1, path="/after")
        assert stale.signature_ok is False  # signed with the new current key, not the old one

    with serve_in_thread(settings) as server:
        client = make_client(server)
        got = client.signing_key.get()
        assert (got.current, got.next) == (rotated.current, rotated.next)
        assert server.env()["QSTASH_CURRENT_SIGNING_KEY"] == rotated.current
        client.message.publish(url=new_pair.url_for("/restarted"), body="x")
        [ok] = new_pair.wait_for(1, path="/restarted")
        assert ok.signature_ok, ok.signature_error

        again = client.signing_key.rotate()
        assert again.current == rotated.next
        assert SIGNING_KEY.match(again.next)
        assert again.next != rotated.next


def test_deleting_a_queue_cancels_its_waiting_messages(client: QStash, receiver: Receiver) -> None:
    receiver.respond("/held", Response(status=200, delay_seconds=0.5))
    client.queue.upsert("doomed", parallelism=1)
    ids = [
        client.message.enqueue(
            queue="doomed", url=receiver.url_for("/held"), body=str(i)
        ).message_id
        for i in range(4)
    ]
    receiver.wait_for(1, path="/held")  # the first is in flight, three wait
    client.queue.delete("doomed")
    with pytest.raises(QStashError, match="404"):
        client.queue.get("doomed")
    time.sleep(1.0)
    assert [d.header("Upstash-Message-Id") for d in receiver.deliveries("/held")] == [ids[0]]
    assert client.queue.list() == []
    for message_id in ids[1:]:
        logs = client.log.list(filter={"message_id": message_id}).logs
        assert logs[0].state.value == "CANCELED"  # newest first
