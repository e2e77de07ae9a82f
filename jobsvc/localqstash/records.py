"""The rows that record what happened to a message: events, DLQ entries and state changes."""

from __future__ import annotations

import base64
from typing import Any

from jobsvc.localqstash import tables
from jobsvc.localqstash.delivery import Outcome
from jobsvc.localqstash.messages import FAILED, Message, now_ms, redacted_headers
from jobsvc.localqstash.store import Insert, Update


def event_row(
    message: Message,
    state: str,
    *,
    outcome: Outcome | None = None,
    next_delivery: int | None = None,
    created: bool = False,
) -> Insert:
    """An event (log entry) of ``message`` entering ``state``."""
    data: dict[str, Any] = {}
    if created:
        data = {
            # Logs keep what the publisher asked to redact out of sight, as QStash does.
            "header": redacted_headers(message.headers, message.redact),
            # None (left out) without a body, as in the message itself.
            "body": (
                base64.b64encode(b"REDACTED" if "body" in message.redact else message.body).decode()
                if message.body or "body" in message.redact
                else None
            ),
            "method": message.method,
            "maxRetries": message.max_retries,
            "callback": message.callback,
            "failureCallback": message.failure_callback,
            "retryDelayExpression": message.retry_delay_expression,
            "timeout": int(message.timeout_seconds * 1000) if message.timeout_seconds else None,
            "endpointName": message.endpoint_name,
        }
    if outcome is not None:
        data["responseStatus"] = outcome.status
        data["responseHeader"] = outcome.headers
        data["responseBody"] = base64.b64encode(outcome.body).decode()
        if outcome.error:
            data["error"] = outcome.error
        elif not outcome.ok:
            data["error"] = f"endpoint answered {outcome.status}"
    if next_delivery is not None:
        data["nextDeliveryTime"] = next_delivery
    if message.flow_control is not None:
        fc = message.flow_control
        data["flowControl"] = [fc.key, fc.parallelism, fc.rate, fc.period_seconds]
    return Insert(
        tables.events,
        {
            "user_id": message.user_id,
            "time": now_ms(),
            "message_id": message.message_id,
            "state": state,
            "url": message.url,
            "topic_name": message.topic_name,
            "queue_name": message.queue_name,
            "schedule_id": message.schedule_id,
            "flow_control_key": message.flow_control.key if message.flow_control else None,
            "label": message.label_column,
            "caller_ip": message.caller_ip,
            "data": {k: v for k, v in data.items() if v is not None},
        },
    )


def dlq_row(message: Message, outcome: Outcome, dlq_id: str) -> dict[str, Any]:
    """The DLQ entry of a message whose retries ran out: a snapshot of it and the last answer."""
    row = message.to_row()
    snapshot = {k: v for k, v in row.items() if k != "body"}
    snapshot["state"] = FAILED
    return {
        "dlq_id": dlq_id,
        "user_id": message.user_id,
        "message_id": message.message_id,
        "url": message.url,
        "topic_name": message.topic_name,
        "queue_name": message.queue_name,
        "schedule_id": message.schedule_id,
        "flow_control_key": row["flow_control_key"],
        "label": message.label_column,
        "caller_ip": message.caller_ip,
        "created_at": now_ms(),
        "response_status": outcome.status if outcome.status is not None else 0,
        "body": message.body,
        "data": {
            "message": snapshot,
            "responseHeader": outcome.headers,
            "responseBody": base64.b64encode(outcome.body).decode(),
            "error": outcome.error,
        },
    }


def state_update(message: Message) -> Update:
    values = {
        "state": message.state,
        "retried": message.retried,
        "due_at": message.due_at,
        "updated_at": now_ms(),
    }
    return Update(tables.messages, "message_id", message.message_id, values)
