"""Schedules against a real local QStash server: the CRUD API through the official SDK, cron
validation, next-run times at real speed, and firing on a scaled clock (0.001: a
``* * * * *`` schedule fires every ~60 ms), on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from croniter import croniter
from qstash import QStash
from qstash.errors import QStashError
from qstash.schedule import ScheduleState

from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings, serve_in_thread
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import ClientFactory, ServerFactory
from tests.receiver import Delivery, Receiver, ReceiverFactory, Response

EVERY_MINUTE = "* * * * *"
# At time_scale 0.001 one cron minute lasts 60 ms.
SCALED_MINUTE = 0.060


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def real_time_server(make_server: ServerFactory) -> LocalQStashServer:
    """A server on the real clock, where nothing with a cron time in the future fires."""
    return make_server(time_scale=1.0)


@pytest.fixture
def real_time_client(real_time_server: LocalQStashServer, make_client: ClientFactory) -> QStash:
    return make_client(real_time_server)


def _wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def _quiet_count(receiver: Receiver, path: str, settle: float = 0.1) -> int:
    """Deliveries to ``path`` once an in-flight firing (if any) has had time to arrive."""
    time.sleep(settle)
    return len(receiver.deliveries(path))


def _assert_scheduled(delivery: Delivery, schedule_id: str, body: str) -> None:
    assert delivery.signature_ok, delivery.signature_error
    assert delivery.header("Upstash-Schedule-Id") == schedule_id
    assert delivery.text == body
    message_id = delivery.header("Upstash-Message-Id")
    assert message_id is not None
    assert message_id.startswith("msg_")


# -- the API --------------------------------------------------------------------------------------


def test_create_get_list_every_field(
    real_time_server: LocalQStashServer, real_time_client: QStash, make_receiver: ReceiverFactory
) -> None:
    client = real_time_client
    rx = make_receiver()
    url = rx.url_for("/scheduled")
    before = _now_ms()
    full_id = client.schedule.create(
        destination=url,
        cron="0 0 1 1 *",
        body="hello",
        content_type="text/plain",
        method="PUT",
        headers={"X-Custom": "v1"},
        retries=2,
        retry_delay="1000 * (1 + retried)",
        callback=rx.url_for("/cb"),
        failure_callback=rx.url_for("/fcb"),
        delay="30s",
        timeout="20s",
        queue="schedule-queue",
        flow_control={"key": "sched-fc", "parallelism": 2},
        label="nightly",
    )
    json_id = client.schedule.create_json(destination=url, cron="*/5 * * * *", body={"a": [1, 2]})
    after = _now_ms()
    assert full_id.startswith("scd_")
    assert json_id.startswith("scd_")
    assert full_id != json_id

    full = client.schedule.get(full_id)
    assert full.schedule_id == full_id
    assert full.destination == url
    assert full.cron == "0 0 1 1 *"
    assert before <= full.created_at <= after
    assert full.body == "hello"
    assert full.body_base64 is None
    assert full.method == "PUT"
    assert full.headers == {"X-Custom": ["v1"], "Content-Type": ["text/plain"]}
    assert full.retries == 2
    assert full.retry_delay_expression == "1000 * (1 + retried)"
    assert full.callback == rx.url_for("/cb")
    assert full.failure_callback == rx.url_for("/fcb")
    assert full.delay == 30
    assert full.timeout == 20
    assert full.queue == "schedule-queue"
    assert full.label == "nightly"
    assert full.caller_ip == "127.0.0.1"
    assert full.paused is False
    assert full.flow_control is not None
    assert full.flow_control.key == "sched-fc"
    assert full.flow_control.parallelism == 2
    assert full.flow_control.rate is None  # not given
    assert full.flow_control.period == 1  # QStash's default when not given
    assert full.last_schedule_time is None
    assert full.last_schedule_states == {}
    assert full.error is None
    year = datetime.fromtimestamp(time.time(), ZoneInfo("UTC")).year
    assert full.next_schedule_time == int(
        datetime(year + 1, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp() * 1000
    )

    as_json = client.schedule.get(json_id)
    assert as_json.body is not None
    assert json.loads(as_json.body) == {"a": [1, 2]}
    assert as_json.headers == {"Content-Type": ["application/json"]}
    assert as_json.method == "POST"
    assert as_json.retries == 3  # the default
    assert as_json.flow_control is None
    assert as_json.queue is None
    assert as_json.delay is None
    assert as_json.timeout is None

    listed = client.schedule.list()
    assert sorted(s.schedule_id for s in listed) == sorted([full_id, json_id])
    assert {s.schedule_id: s for s in listed}[full_id] == full

    # The wire shape: both spellings of the caller IP, epoch milliseconds.
    with httpx.Client(
        base_url=real_time_server.url,
        headers={"Authorization": f"Bearer {real_time_server.user.token}"},
    ) as http:
        wire = http.get(f"/v2/schedules/{full_id}").json()
    assert wire["callerIP"] == wire["callerIp"] == "127.0.0.1"
    assert wire["isPaused"] is False
    assert wire["queueName"] == "schedule-queue"

    client.schedule.delete(json_id)
    assert [s.schedule_id for s in client.schedule.list()] == [full_id]
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.get(json_id)


def test_pause_and_resume_via_patch_and_post(client: QStash, raw: httpx.Client) -> None:
    schedule_id = client.schedule.create(destination="http://127.0.0.1:9/never", cron="0 0 1 1 *")

    client.schedule.pause(schedule_id)  # PATCH, as both SDKs send it
    assert client.schedule.get(schedule_id).paused is True
    assert raw.get(f"/v2/schedules/{schedule_id}").json()["isPaused"] is True
    client.schedule.resume(schedule_id)
    assert client.schedule.get(schedule_id).paused is False

    # POST, as the OpenAPI document has it.
    response = raw.post(f"/v2/schedules/{schedule_id}/pause")
    assert response.status_code == 200, response.text
    assert client.schedule.get(schedule_id).paused is True
    response = raw.post(f"/v2/schedules/{schedule_id}/resume")
    assert response.status_code == 200, response.text
    assert client.schedule.get(schedule_id).paused is False
    # Neither created a schedule to a destination named ".../pause".
    assert [s.schedule_id for s in client.schedule.list()] == [schedule_id]


def test_next_schedule_time_is_the_cron_time(
    real_time_client: QStash, make_receiver: ReceiverFactory
) -> None:
    """At time_scale 1 nothing fires within a test, so check the computed next run instead."""
    client = real_time_client
    url = make_receiver().url_for("/t")
    new_york = ZoneInfo("America/New_York")
    crons = [EVERY_MINUTE, "*/5 * * * *", "30 14 * * 1-5", "CRON_TZ=America/New_York 0 9 * * *"]
    before = time.time()
    ids = [client.schedule.create(destination=url, cron=cron) for cron in crons]
    got = {sid: client.schedule.get(sid) for sid in ids}
    after = time.time()

    def expected(cron: str, at: float) -> int:
        zone = ZoneInfo("UTC")
        if cron.startswith("CRON_TZ="):
            name, _, cron = cron[len("CRON_TZ=") :].partition(" ")
            zone = ZoneInfo(name)
        return int(croniter(cron, datetime.fromtimestamp(at, zone)).get_next(float) * 1000)

    for sid, cron in zip(ids, crons, strict=True):
        schedule = got[sid]
        assert schedule.cron == cron
        assert schedule.next_schedule_time in {expected(cron, before), expected(cron, after)}

    # Every minute: the next minute boundary, by plain arithmetic too.
    every_minute = got[ids[0]].next_schedule_time
    assert every_minute in {(math.floor(t / 60) + 1) * 60_000 for t in (before, after)}

    # CRON_TZ: 09:00 wall-clock time in New York (EST or EDT), the first one after now.
    nine = got[ids[3]].next_schedule_time
    assert nine is not None
    local = datetime.fromtimestamp(nine / 1000, new_york)
    assert (local.hour, local.minute, local.second) == (9, 0, 0)
    assert before * 1000 < nine
    previous = datetime(local.year, local.month, local.day, 9, tzinfo=new_york) - timedelta(days=1)
    assert previous.timestamp() < after
    if local.utcoffset() == timedelta(hours=-5):
        assert local.astimezone(ZoneInfo("UTC")).hour == 14
    else:
        assert local.astimezone(ZoneInfo("UTC")).hour == 13


def test_schedule_id_creates_then_updates(client: QStash, receiver: Receiver) -> None:
    first = client.schedule.create(
        destination=receiver.url_for("/one"),
        cron="0 0 1 1 *",
        body="one",
        retries=1,
        schedule_id="nightly-report",
    )
    assert first == "nightly-report"
    created_at = client.schedule.get("nightly-report").created_at
    second = client.schedule.create(
        destination=receiver.url_for("/two"),
        cron=EVERY_MINUTE,
        body="two",
        method="PUT",
        retries=5,
        schedule_id="nightly-report",
    )
    assert second == "nightly-report"

    [schedule] = client.schedule.list()
    assert schedule.schedule_id == "nightly-report"
    assert schedule.destination == receiver.url_for("/two")
    assert schedule.cron == EVERY_MINUTE
    assert schedule.body == "two"
    assert schedule.method == "PUT"
    assert schedule.retries == 5
    assert schedule.created_at == created_at

    # Only the second version fires: to /two, with its body and method.
    for delivery in receiver.wait_for(2, path="/two", timeout=5):
        _assert_scheduled(delivery, "nightly-report", "two")
        assert delivery.method == "PUT"
    assert receiver.deliveries("/one") == []
    client.schedule.delete("nightly-report")


INVALID_CRONS = [
    "61 * * * *",
    "* * * * * *",
    "* * * *",
    "0 25 * * *",
    "CRON_TZ=Mars/Olympus_Mons 0 9 * * *",
    "every day",
]


def test_invalid_cron_is_rejected_and_nothing_stored(client: QStash, raw: httpx.Client) -> None:
    client.schedule.create(destination="http://127.0.0.1:9/x", cron="0 0 1 1 *", schedule_id="keep")
    for cron in INVALID_CRONS:
        with pytest.raises(QStashError, match="status: 400"):
            client.schedule.create(destination="http://127.0.0.1:9/x", cron=cron)
        response = raw.post(
            "/v2/schedules/http://127.0.0.1:9/x", headers={"Upstash-Cron": cron}, content=b"x"
        )
        assert response.status_code == 400, cron
        assert isinstance(response.json()["error"], str)
        assert response.json()["error"]
        # Overwriting an existing schedule with a bad cron leaves the old one as it was.
        with pytest.raises(QStashError, match="status: 400"):
            client.schedule.create(
                destination="http://127.0.0.1:9/y", cron=cron, schedule_id="keep"
            )
    with pytest.raises(QStashError, match="status: 400"):
        client.schedule.create(
            destination="http://127.0.0.1:9/x", cron="0 0 1 1 *", schedule_id="a b"
        )
    [kept] = client.schedule.list()
    assert (kept.schedule_id, kept.cron, kept.destination) == (
        "keep",
        "0 0 1 1 *",
        "http://127.0.0.1:9/x",
    )


def test_missing_cron_and_unknown_ids(client: QStash, raw: httpx.Client) -> None:
    response = raw.post("/v2/schedules/http://127.0.0.1:9/x", content=b"body")
    assert response.status_code == 400
    assert "error" in response.json()
    response = raw.post("/v2/schedules/http://127.0.0.1:9/x", headers={"Upstash-Cron": ""})
    assert response.status_code == 400
    assert client.schedule.list() == []

    for method, path in [
        ("GET", "/v2/schedules/scd_doesNotExist"),
        ("DELETE", "/v2/schedules/scd_doesNotExist"),
        ("PATCH", "/v2/schedules/scd_doesNotExist/pause"),
        ("PATCH", "/v2/schedules/scd_doesNotExist/resume"),
        ("POST", "/v2/schedules/scd_doesNotExist/pause"),
    ]:
        response = raw.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert "error" in response.json()
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.get("scd_doesNotExist")
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.delete("scd_doesNotExist")

    # Deleting twice: the second time it is unknown.
    schedule_id = client.schedule.create(destination="http://127.0.0.1:9/x", cron="0 0 1 1 *")
    client.schedule.delete(schedule_id)
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.delete(schedule_id)

    # A schedule to a URL group needs the group to exist.
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.create(destination="no-such-group", cron=EVERY_MINUTE)
    assert client.schedule.list() == []


# -- firing on a scaled clock -------------------------------------------------------------------


def test_fires_repeatedly_as_new_signed_messages(client: QStash, receiver: Receiver) -> None:
    receiver.respond("/fail", Response(status=500, body="nope"))
    start = time.monotonic()
    schedule_id = client.schedule.create(
        destination=receiver.url_for("/tick"),
        cron=EVERY_MINUTE,
        body="tick",
        headers={"X-From": "schedule"},
    )
    failing_id = client.schedule.create(
        destination=receiver.url_for("/fail"), cron=EVERY_MINUTE, body="f", retries=0
    )
    deliveries = receiver.wait_for(5, path="/tick", timeout=5)[:5]
    elapsed = deliveries[-1].received_at - start
    for delivery in deliveries:
        _assert_scheduled(delivery, schedule_id, "tick")
        assert delivery.header("X-From") == "schedule"
        assert delivery.header("Upstash-Retried") == "0"
    ids = [d.header("Upstash-Message-Id") for d in deliveries]
    assert len(set(ids)) == 5
    # One firing per scaled minute, never a burst: the k-th firing is at the k-th minute after
    # the first at the soonest (a bound load cannot break, it only delays arrivals) ...
    for k, delivery in enumerate(deliveries):
        assert delivery.received_at - start >= k * SCALED_MINUTE, (k, elapsed)
    # ... and not a crawl (a generous bound: five firings in 240 ms, given 10 s).
    assert elapsed < 4 * SCALED_MINUTE + 10.0, elapsed

    receiver.wait_for(2, path="/fail", timeout=5)
    client.schedule.pause(schedule_id)
    client.schedule.pause(failing_id)
    time.sleep(0.15)  # a firing that was being stored when we paused lands now

    def settled() -> bool:
        states = client.schedule.get(schedule_id).last_schedule_states or {}
        return bool(states) and all(s == ScheduleState.SUCCESS for s in states.values())

    _wait_until(settled, what="every recorded firing to be SUCCESS")
    schedule = client.schedule.get(schedule_id)
    delivered = receiver.deliveries("/tick")
    delivered_ids = [d.header("Upstash-Message-Id") for d in delivered]
    states = schedule.last_schedule_states or {}
    assert set(states) <= set(delivered_ids)
    assert delivered_ids[-1] in states  # the latest firing is among the recorded ones
    assert schedule.last_schedule_time is not None
    assert abs(schedule.last_schedule_time - delivered[-1].received_unix * 1000) < 1000

    def failed_recorded() -> bool:
        failing = client.schedule.get(failing_id).last_schedule_states or {}
        return bool(failing) and set(failing.values()) == {ScheduleState.FAIL}

    _wait_until(failed_recorded, what="the failing firings to be FAIL")
    failing_states = client.schedule.get(failing_id).last_schedule_states or {}
    fail_ids = {d.header("Upstash-Message-Id") for d in receiver.deliveries("/fail")}
    assert set(failing_states) <= fail_ids


def test_schedule_to_a_url_group_fires_to_every_endpoint(
    client: QStash, receiver: Receiver
) -> None:
    client.url_group.upsert_endpoints(
        "sched-grp", [{"url": receiver.url_for("/ga")}, {"url": receiver.url_for("/gb")}]
    )
    schedule_id = client.schedule.create(destination="sched-grp", cron=EVERY_MINUTE, body="g")
    assert client.schedule.get(schedule_id).destination == "sched-grp"
    ids: set[str | None] = set()
    for path in ("/ga", "/gb"):
        for delivery in receiver.wait_for(2, path=path, timeout=5):
            _assert_scheduled(delivery, schedule_id, "g")
            assert delivery.header("Upstash-Topic-Name") == "sched-grp"
            ids.add(delivery.header("Upstash-Message-Id"))
    assert len(ids) == len(receiver.deliveries("/ga")) + len(receiver.deliveries("/gb"))
    client.schedule.delete(schedule_id)


def test_paused_resumed_and_deleted_schedule(
    client: QStash, receiver: Receiver, raw: httpx.Client
) -> None:
    schedule_id = client.schedule.create(
        destination=receiver.url_for("/p"), cron=EVERY_MINUTE, body="p"
    )
    receiver.wait_for(2, path="/p", timeout=5)

    client.schedule.pause(schedule_id)
    held = _quiet_count(receiver, "/p")
    time.sleep(5 * SCALED_MINUTE)  # five firings' worth
    assert len(receiver.deliveries("/p")) == held

    client.schedule.resume(schedule_id)
    receiver.wait_for(held + 2, path="/p", timeout=5)

    # The same through POST.
    assert raw.post(f"/v2/schedules/{schedule_id}/pause").status_code == 200
    held = _quiet_count(receiver, "/p")
    time.sleep(5 * SCALED_MINUTE)
    assert len(receiver.deliveries("/p")) == held
    assert raw.post(f"/v2/schedules/{schedule_id}/resume").status_code == 200
    receiver.wait_for(held + 2, path="/p", timeout=5)

    client.schedule.delete(schedule_id)
    gone = _quiet_count(receiver, "/p")
    time.sleep(5 * SCALED_MINUTE)
    assert len(receiver.deliveries("/p")) == gone
    for delivery in receiver.deliveries("/p"):
        _assert_scheduled(delivery, schedule_id, "p")
    with pytest.raises(QStashError, match="status: 404"):
        client.schedule.get(schedule_id)


def test_schedule_enqueues_into_its_queue(client: QStash, receiver: Receiver) -> None:
    client.queue.upsert("sched-q", parallelism=1, paused=True)
    schedule_id = client.schedule.create(
        destination=receiver.url_for("/q"), cron=EVERY_MINUTE, body="queued", queue="sched-q"
    )
    assert client.schedule.get(schedule_id).queue == "sched-q"
    _wait_until(lambda: client.queue.get("sched-q").lag >= 3, what="lag >= 3 in the paused queue")
    assert receiver.deliveries("/q") == []  # held by the paused queue

    client.schedule.delete(schedule_id)
    time.sleep(0.1)
    lag = client.queue.get("sched-q").lag
    assert lag >= 3
    client.queue.resume("sched-q")
    deliveries = receiver.wait_for(lag, path="/q", timeout=5)
    assert len(deliveries) == lag
    for delivery in deliveries:
        _assert_scheduled(delivery, schedule_id, "queued")
    # One at a time: parallelism 1.
    for a, b in itertools.pairwise(deliveries):
        assert a.responded_at is not None
        assert b.received_at >= a.responded_at
    message = client.message.get(deliveries[0].header("Upstash-Message-Id") or "")
    assert message.queue == "sched-q"
    assert message.schedule_id == schedule_id
    _wait_until(lambda: client.queue.get("sched-q").lag == 0, what="the queue to drain")


def _all_succeeded(client: QStash, schedule_id: str) -> bool:
    states = client.schedule.get(schedule_id).last_schedule_states or {}
    return bool(states) and set(states.values()) == {ScheduleState.SUCCESS}


def test_schedules_survive_a_restart(
    database_url: str, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    user = DEV_USERS[0]
    rx = make_receiver(user.current_signing_key, user.next_signing_key)
    settings = LocalQStashSettings(port=0, database_url=database_url, time_scale=0.001)

    with serve_in_thread(settings) as first:
        client = make_client(first)
        active_id = client.schedule.create(
            destination=rx.url_for("/after"),
            cron=EVERY_MINUTE,
            body="still here",
            method="PUT",
            headers={"X-Kept": "yes"},
            retries=4,
        )
        paused_id = client.schedule.create(
            destination=rx.url_for("/paused"), cron=EVERY_MINUTE, body="zzz"
        )
        rx.wait_for(2, path="/paused", timeout=5)
        client.schedule.pause(paused_id)
        _wait_until(lambda: _all_succeeded(client, paused_id), what="SUCCESS states")
        paused_before = client.schedule.get(paused_id)
        rx.wait_for(1, path="/after", timeout=5)
        before = client.schedule.get(active_id)
    time.sleep(0.1)
    rx.clear()
    time.sleep(5 * SCALED_MINUTE)
    assert rx.deliveries() == []  # the server is down

    with serve_in_thread(settings) as second:
        client = make_client(second)
        after = client.schedule.get(active_id)
        for name in ("destination", "cron", "created_at", "body", "method", "headers", "retries"):
            assert getattr(after, name) == getattr(before, name), name
        assert after.paused is False
        paused_after = client.schedule.get(paused_id)
        assert paused_after.paused is True
        # How the firings ended was stored, not only kept in memory.
        assert paused_after.last_schedule_states == paused_before.last_schedule_states
        assert paused_after.last_schedule_time == paused_before.last_schedule_time
        assert sorted(s.schedule_id for s in client.schedule.list()) == sorted(
            [active_id, paused_id]
        )
        for delivery in rx.wait_for(2, path="/after", timeout=5):
            _assert_scheduled(delivery, active_id, "still here")
            assert delivery.method == "PUT"
            assert delivery.header("X-Kept") == "yes"
        assert rx.deliveries("/paused") == []
        assert client.schedule.get(active_id).last_schedule_time is not None


def test_deletes_and_updates_of_firing_schedules_are_durable(
    database_url: str, make_receiver: ReceiverFactory, make_client: ClientFactory
) -> None:
    """Deleting or overwriting a schedule while it fires (every 6 ms here) must not let the
    firing store the old version again behind the API's back."""
    rx = make_receiver()
    settings = LocalQStashSettings(port=0, database_url=database_url, time_scale=0.0001)
    with serve_in_thread(settings) as first:
        client = make_client(first)
        for i in range(6):
            client.schedule.create(
                destination=rx.url_for("/old"), cron=EVERY_MINUTE, schedule_id=f"upd-{i}"
            )
            client.schedule.create(
                destination=rx.url_for("/old"), cron=EVERY_MINUTE, schedule_id=f"del-{i}"
            )
        rx.wait_for(24, path="/old", timeout=5)
        for i in range(6):
            client.schedule.create(
                destination=rx.url_for("/new"), cron="0 0 1 1 *", schedule_id=f"upd-{i}"
            )
            client.schedule.delete(f"del-{i}")
        live = sorted((s.schedule_id, s.destination, s.cron) for s in client.schedule.list())
    expected = [(f"upd-{i}", rx.url_for("/new"), "0 0 1 1 *") for i in range(6)]
    assert live == expected

    with serve_in_thread(settings) as second:
        client = make_client(second)
        stored = sorted((s.schedule_id, s.destination, s.cron) for s in client.schedule.list())
        assert stored == expected
