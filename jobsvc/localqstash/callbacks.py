"""Callbacks: after each attempt (and once after the last failed one) QStash publishes a new
signed message describing what happened."""

from __future__ import annotations

import base64
import json
from typing import Any

from jobsvc.localqstash.delivery import Outcome
from jobsvc.localqstash.durations import parse_duration
from jobsvc.localqstash.errors import BadRequest
from jobsvc.localqstash.messages import Headers, Message, new_id, now_ms
from jobsvc.localqstash.options import config_header

CALLBACK_PREFIX = "Upstash-Callback-"
FAILURE_CALLBACK_PREFIX = "Upstash-Failure-Callback-"


def callback_body(message: Message, outcome: Outcome, dlq_id: str | None) -> bytes:
    """The JSON QStash posts to a callback: the attempt's response and the source message."""
    body: dict[str, Any] = {
        "status": outcome.status if outcome.status is not None else 0,
        "header": outcome.headers,
        "body": base64.b64encode(outcome.body).decode(),
        "retried": message.retried,
        "maxRetries": message.max_retries,
        "sourceMessageId": message.message_id,
        "url": message.url,
        "method": message.method,
        "sourceHeader": message.headers,
        "sourceBody": base64.b64encode(message.body).decode(),
        "notBefore": str(message.not_before or message.created_at),
        "createdAt": str(message.created_at),
        "callerIP": message.caller_ip or "",
    }
    optional = {
        "topicName": message.topic_name,
        "endpointName": message.endpoint_name,
        "scheduleId": message.schedule_id,
        "dlqId": dlq_id,
        "error": outcome.error,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return json.dumps(body).encode()


def callback_message(
    source: Message, url: str, config: Headers, prefix: str, body: bytes
) -> Message:
    """A new message to the callback URL, configured by the source's ``prefix*`` headers
    (``Upstash-Callback-Retries``, ``…-Forward-X`` and so on)."""
    forward = {
        key[len(prefix) + len("Forward-") :]: value
        for key, value in config.items()
        if key.startswith(prefix + "Forward-")
    }
    forward.setdefault("Content-Type", ["application/json"])
    retries = config_header(config, prefix + "Retries")
    timeout = config_header(config, prefix + "Timeout")
    now = now_ms()
    return Message(
        message_id=new_id("msg_"),
        user_id=source.user_id,
        url=url,
        method=(config_header(config, prefix + "Method") or "POST").upper(),
        body=body,
        headers=forward,
        max_retries=int(retries) if retries and retries.isdigit() else source.max_retries,
        retry_delay_expression=config_header(config, prefix + "Retry-Delay")
        or source.retry_delay_expression,
        timeout_seconds=_seconds(timeout) if timeout else source.timeout_seconds,
        due_at=now,
        created_at=now,
        caller_ip=source.caller_ip,
        is_callback=True,
    )


def _seconds(value: str) -> float | None:
    try:
        return parse_duration(value, name="timeout")
    except BadRequest:
        return None
