"""The official TypeScript SDK (``@upstash/qstash``, pinned in tests/js/package.json) against
the local server: a smoke run over the SDK's client API, its ``Receiver`` verifying our
signatures, and its dev mode adopting the server.

Needs ``node`` and ``tests/js/node_modules`` (``npm ci`` in tests/js; .ci/run does it). Their
absence fails these tests: skipping would hide that the JS SDK is no longer checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from qstash import QStash
from qstash.message import PublishResponse

from jobsvc.localqstash import LocalQStashServer
from tests.receiver import Delivery, Receiver, Response

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE_TIMEOUT_SECONDS = 60.0
DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
DEV_CURRENT_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEV_NEXT_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "`node` is not on PATH: the TypeScript SDK tests need Node.js 18 or newer",
            pytrace=False,
        )
    sdk = JS_DIR / "node_modules" / "@upstash" / "qstash" / "package.json"
    if not sdk.is_file():
        pytest.fail(
            f"{sdk.parent} is missing: run `npm ci` in {JS_DIR} (.ci/run does)", pytrace=False
        )
    return node


def run_node(
    script: str, env: dict[str, str], home: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/js/<script>`` with only ``env`` (plus PATH and a private HOME)."""
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),  # no cached qstash-cli binary from the developer's home
        "UPSTASH_DISABLE_TELEMETRY": "1",
        **env,
    }
    try:
        return subprocess.run(
            [_node(), script],
            cwd=JS_DIR,
            env=full_env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"node {script} ran over {NODE_TIMEOUT_SECONDS}s: {exc.stdout!r} {exc.stderr!r}"
        )


def last_json_line(done: subprocess.CompletedProcess[str], script: str) -> dict[str, Any]:
    assert done.returncode == 0, (
        f"node {script} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"node {script} printed nothing; stderr:\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def verify_with_js(
    delivery: Delivery, env: dict[str, str], home: Path, *, body: str | None = None, url: Any = ...
) -> tuple[int, dict[str, Any]]:
    """The JS ``Receiver``'s verdict on ``delivery`` (optionally with a replaced body or url)."""
    request = {
        "signature": delivery.headers["upstash-signature"],
        "body": delivery.text if body is None else body,
        "url": delivery.url if url is ... else url,
    }
    done = run_node("verify.mjs", env, home, stdin=json.dumps(request))
    assert done.returncode in (0, 1), f"verify.mjs failed: {done.stdout} {done.stderr}"
    verdict: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, verdict


def _by_id(deliveries: list[Delivery]) -> dict[str, Delivery]:
    return {d.headers["upstash-message-id"]: d for d in deliveries}


def test_typescript_sdk_client_calls(
    server: LocalQStashServer, receiver: Receiver, client: QStash, tmp_path: Path
) -> None:
    _node()  # fail first, and clearly, without node or the SDK
    # A DLQ entry for the SDK to list: one attempt, answered 500.
    receiver.respond("/py-fail", Response(status=500, body="broken"))
    published = client.message.publish_json(url=receiver.url_for("/py-fail"), body={}, retries=0)
    assert isinstance(published, PublishResponse)
    failed_id = published.message_id
    deadline = time.monotonic() + 10
    while not (py_dlq := [m for m in client.dlq.list().messages if m.message_id == failed_id]):
        assert time.monotonic() < deadline, "the failed message never reached the DLQ"
        time.sleep(0.02)

    env = {**server.env(), "RECEIVER_URL": receiver.url}
    out = last_json_line(run_node("smoke.mjs", env, tmp_path), "smoke.mjs")
    rx = receiver.url

    # publishJSON: delivered once, as sent, signed.
    message_id = out["publish"]["messageId"]
    assert message_id.startswith("msg_")
    [first] = receiver.wait_for(1, path="/js")
    assert first.headers["upstash-message-id"] == message_id
    assert first.method == "POST"
    assert first.json() == {"hello": "from js", "n": 1}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-smoke"] == "js"
    assert first.headers["upstash-retried"] == "0"
    assert not any(name.startswith("upstash-telemetry") for name in first.headers)

    # batchJSON: two messages, two deliveries with their own bodies.
    batch_ids = [entry["messageId"] for entry in out["batch"]]
    assert len(set(batch_ids)) == 2
    batch = _by_id(receiver.wait_for(2, path="/js-batch"))
    assert {mid: d.json() for mid, d in batch.items()} == {
        batch_ids[0]: {"i": 0},
        batch_ids[1]: {"i": 1},
    }

    # messages.get on a pending message, then cancel, then its log.
    delayed = out["delayed"]
    got = delayed["get"]
    assert got["messageId"] == delayed["messageId"]
    assert got["url"] == f"{rx}/js-delayed"
    assert got["method"] == "POST"
    assert got["body"] == '{"late":true}'
    assert got["notBefore"] == got["createdAt"] + 86_400_000  # "1d", as the caller sees it
    assert delayed["cancel"] == {"cancelled": 1}
    assert "CANCELED" in delayed["logStates"]
    assert "CREATED" in delayed["logStates"]

    # Schedules: create, get, list, pause, resume, delete, list again.
    schedule = out["schedule"]
    assert schedule["scheduleId"].startswith("scd_")
    assert schedule["get"] == {
        "scheduleId": schedule["scheduleId"],
        "cron": "0 0 1 1 *",
        "destination": f"{rx}/js-schedule",
        "retries": 2,
        "isPaused": False,
    }
    assert schedule["scheduleId"] in schedule["listedBefore"]
    assert schedule["pausedIsPaused"] is True
    assert schedule["resumedIsPaused"] is False
    assert schedule["scheduleId"] not in schedule["listedAfter"]
    assert schedule["scheduleId"] not in [s.schedule_id for s in client.schedule.list()]

    # Queues: the Python SDK sees what the JS SDK made, and the enqueued message arrives.
    assert out["queue"]["get"] == {"name": "js-queue", "parallelism": 2, "paused": False}
    assert "js-queue" in out["queue"]["listed"]
    assert client.queue.get("js-queue").parallelism == 2
    [queued] = receiver.wait_for(1, path="/js-queue")
    assert queued.headers["upstash-message-id"] == out["queue"]["enqueued"]["messageId"]
    assert queued.json() == {"queued": True}

    # URL groups: one message per endpoint, each told which group sent it.
    group = out["urlGroup"]
    assert group["get"] == {
        "name": "js-group",
        "endpoints": [
            {"name": "a", "url": f"{rx}/js-group-a"},
            {"name": "b", "url": f"{rx}/js-group-b"},
        ],
    }
    assert "js-group" in group["listed"]
    fanout = {entry["url"]: entry["messageId"] for entry in group["published"]}
    assert set(fanout) == {f"{rx}/js-group-a", f"{rx}/js-group-b"}
    for path in ("/js-group-a", "/js-group-b"):
        [member] = receiver.wait_for(1, path=path)
        assert member.headers["upstash-message-id"] == fanout[rx + path]
        assert member.headers["upstash-topic-name"] == "js-group"
        assert member.json() == {"fanout": True}

    # The DLQ as the JS SDK lists it is the one the Python SDK sees.
    js_dlq = [m for m in out["dlq"]["messages"] if m["messageId"] == failed_id]
    assert js_dlq == [
        {
            "dlqId": py_dlq[0].dlq_id,
            "messageId": failed_id,
            "url": f"{rx}/py-fail",
            "responseStatus": 500,
            "responseBody": "broken",
        }
    ]
    assert out["dlq"]["cursor"] is None

    # Every delivery verified with the Python SDK; nothing reached the cancelled message.
    everything = receiver.deliveries()
    assert all(d.signature_ok for d in everything), [d.signature_error for d in everything]
    assert receiver.deliveries("/js-delayed") == []
    assert receiver.deliveries("/js-schedule") == []

    # The JS SDK's Receiver accepts our signatures, and only for the exact body and URL.
    keys = {
        "QSTASH_CURRENT_SIGNING_KEY": server.env()["QSTASH_CURRENT_SIGNING_KEY"],
        "QSTASH_NEXT_SIGNING_KEY": server.env()["QSTASH_NEXT_SIGNING_KEY"],
    }
    assert verify_with_js(first, keys, tmp_path) == (0, {"ok": True})
    assert verify_with_js(first, keys, tmp_path, url=None) == (0, {"ok": True})
    member = receiver.deliveries("/js-group-b")[0]
    assert verify_with_js(member, keys, tmp_path) == (0, {"ok": True})
    code, verdict = verify_with_js(first, keys, tmp_path, body=first.text.replace("1", "2"))
    assert (code, verdict["ok"]) == (1, False)
    assert "body hash" in verdict["error"].lower()
    code, verdict = verify_with_js(first, keys, tmp_path, url=f"{rx}/elsewhere")
    assert (code, verdict["ok"]) == (1, False)
    assert "url" in verdict["error"].lower() or "sub" in verdict["error"].lower()
    wrong_keys = {
        "QSTASH_CURRENT_SIGNING_KEY": "sig_" + "x" * 28,
        "QSTASH_NEXT_SIGNING_KEY": "sig_" + "y" * 28,
    }
    code, verdict = verify_with_js(first, wrong_keys, tmp_path)
    assert (code, verdict["ok"]) == (1, False)


def test_typescript_sdk_dev_mode_adopts_the_server(
    server: LocalQStashServer, receiver: Receiver, tmp_path: Path
) -> None:
    _node()
    # Dev mode adopts a server only when GET /v2/keys, asked with the public dev token,
    # answers the dev keys; otherwise it would download the qstash-cli binary (which
    # devmode.mjs blocks, so that path fails instead of reaching the network).
    dev = QStash(DEV_TOKEN, base_url=server.url)
    try:
        keys = dev.signing_key.get()
    finally:
        dev.http._client.close()  # the SDK has no public close
    assert (keys.current, keys.next) == (DEV_CURRENT_KEY, DEV_NEXT_KEY)
    assert server.url == f"http://127.0.0.1:{server.port}"

    env = {
        "QSTASH_DEV": "true",
        "QSTASH_DEV_PORT": str(server.port),
        "RECEIVER_URL": receiver.url,
    }
    done = run_node("devmode.mjs", env, tmp_path)
    out = last_json_line(done, "devmode.mjs")
    assert f"Server already running at {server.url}" in done.stdout, done.stdout
    message_id = out["publish"]["messageId"]
    [delivery] = receiver.wait_for(1, path="/js-dev")
    assert delivery.headers["upstash-message-id"] == message_id
    assert delivery.json() == {"dev": True}
    assert delivery.signature_ok, delivery.signature_error

    # The JS Receiver in dev mode uses the dev keys on its own.
    dev_env = {"QSTASH_DEV": "true"}
    assert verify_with_js(delivery, dev_env, tmp_path) == (0, {"ok": True})
    code, verdict = verify_with_js(delivery, dev_env, tmp_path, body='{"dev":false}')
    assert (code, verdict["ok"]) == (1, False)
