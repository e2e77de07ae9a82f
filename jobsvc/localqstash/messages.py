"""A message: what to deliver, where, and how to retry; its row and its QStash JSON."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from jobsvc.localqstash.durations import FlowControl

Headers = dict[str, list[str]]

# States as the events API names them (the SDKs spell CANCELED with one L).
CREATED = "CREATED"
ACTIVE = "ACTIVE"
RETRY = "RETRY"
ERROR = "ERROR"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
CANCEL_REQUESTED = "CANCEL_REQUESTED"
CANCELED = "CANCELED"
FINAL_STATES = frozenset({DELIVERED, FAILED, CANCELED})


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


@dataclass(kw_only=True)
class Message:
    """One message as accepted: it lives in memory until it ends, and in the database longer."""

    message_id: str
    user_id: str
    url: str
    method: str = "POST"
    body: bytes = b""
    headers: Headers = field(default_factory=dict)
    callback: str | None = None
    failure_callback: str | None = None
    callback_headers: Headers = field(default_factory=dict)
    failure_callback_headers: Headers = field(default_factory=dict)
    max_retries: int = 3
    retried: int = 0
    retry_delay_expression: str | None = None
    timeout_seconds: float | None = None
    not_before: int = 0  # ms; the first delivery is due then (0: at once)
    due_at: int = 0  # ms; the next attempt is due then
    created_at: int = 0
    queue_name: str | None = None
    topic_name: str | None = None
    endpoint_name: str | None = None
    schedule_id: str | None = None
    caller_ip: str | None = None
    flow_control: FlowControl | None = None
    labels: list[str] = field(default_factory=list)
    redact: list[str] = field(default_factory=list)
    is_callback: bool = False
    state: str = CREATED
    cancel_requested: bool = False
    holds_queue_slot: bool = False

    @property
    def label(self) -> str | None:
        """The first label: QStash's ``label`` field (``labels`` holds them all)."""
        return self.labels[0] if self.labels else None

    @property
    def label_column(self) -> str | None:
        """Every label in the one ``label`` column the filters search: ``a,b``."""
        return join_labels(self.labels)

    # -- persistence ------------------------------------------------------------------------

    def to_row(self) -> dict[str, Any]:
        fc = self.flow_control
        return {
            "message_id": self.message_id,
            "user_id": self.user_id,
            "state": self.state,
            "url": self.url,
            "due_at": self.due_at,
            "created_at": self.created_at,
            "updated_at": now_ms(),
            "retried": self.retried,
            "queue_name": self.queue_name,
            "topic_name": self.topic_name,
            "schedule_id": self.schedule_id,
            "flow_control_key": fc.key if fc else None,
            "label": self.label_column,
            "caller_ip": self.caller_ip,
            "body": self.body,
            "data": {
                "method": self.method,
                "headers": self.headers,
                "callback": self.callback,
                "failureCallback": self.failure_callback,
                "callbackHeaders": self.callback_headers,
                "failureCallbackHeaders": self.failure_callback_headers,
                "maxRetries": self.max_retries,
                "retryDelayExpression": self.retry_delay_expression,
                "timeout": self.timeout_seconds,
                "notBefore": self.not_before,
                "endpointName": self.endpoint_name,
                "flowControl": (
                    [fc.key, fc.parallelism, fc.rate, fc.period_seconds] if fc else None
                ),
                "labels": self.labels,
                "redact": self.redact,
                "isCallback": self.is_callback,
            },
        }

    @classmethod
    def from_row(cls, row: Any) -> Message:
        data = row.data
        fc = data.get("flowControl")
        return cls(
            message_id=row.message_id,
            user_id=row.user_id,
            url=row.url,
            method=data["method"],
            body=bytes(row.body),
            headers=data["headers"],
            callback=data.get("callback"),
            failure_callback=data.get("failureCallback"),
            callback_headers=data.get("callbackHeaders") or {},
            failure_callback_headers=data.get("failureCallbackHeaders") or {},
            max_retries=data["maxRetries"],
            retried=row.retried,
            retry_delay_expression=data.get("retryDelayExpression"),
            timeout_seconds=data.get("timeout"),
            not_before=data.get("notBefore") or 0,
            due_at=row.due_at,
            created_at=row.created_at,
            queue_name=row.queue_name,
            topic_name=row.topic_name,
            endpoint_name=data.get("endpointName"),
            schedule_id=row.schedule_id,
            caller_ip=row.caller_ip,
            flow_control=FlowControl(fc[0], fc[1], fc[2], fc[3]) if fc else None,
            labels=data.get("labels") or [],
            redact=data.get("redact") or [],
            is_callback=bool(data.get("isCallback")),
            state=row.state,
        )

    # -- the QStash JSON --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The Message object of GET /v2/messages/{id} (and the base of DLQ entries)."""
        out: dict[str, Any] = {
            "messageId": self.message_id,
            "url": self.url,
            "method": self.method,
            "header": redacted_headers(self.headers, self.redact),
            "maxRetries": self.max_retries,
            "notBefore": self.not_before or self.created_at,
            "createdAt": self.created_at,
            "callerIP": self.caller_ip or "",
        }
        out.update(body_fields(self.body, redact="body" in self.redact))
        optional = {
            "topicName": self.topic_name,
            "endpointName": self.endpoint_name,
            "queueName": self.queue_name,
            "scheduleId": self.schedule_id,
            "callback": self.callback,
            "failureCallback": self.failure_callback,
            "callbackHeader": self.callback_headers or None,
            "failureCallbackHeader": self.failure_callback_headers or None,
            "retryDelayExpression": self.retry_delay_expression,
            "label": self.label,
            "labels": self.labels or None,
            "timeout": int(self.timeout_seconds) if self.timeout_seconds else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.flow_control is not None:
            out.update(flow_control_fields(self.flow_control))
        return out


def flow_control_fields(fc: FlowControl) -> dict[str, Any]:
    out: dict[str, Any] = {"flowControlKey": fc.key, "period": fc.period_seconds}
    if fc.parallelism is not None:
        out["parallelism"] = fc.parallelism
    if fc.rate is not None:
        out["rate"] = fc.rate
    return out


def join_labels(labels: list[str]) -> str | None:
    return ",".join(labels) if labels else None


def split_labels(column: str | None) -> list[str]:
    return [label for label in (column or "").split(",") if label]


def body_fields(body: bytes, *, redact: bool = False) -> dict[str, str]:
    """``body`` when it is UTF-8 text, ``bodyBase64`` otherwise, neither when there is none."""
    if redact:
        return {"body": "REDACTED"}
    if not body:
        return {}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"bodyBase64": base64.b64encode(body).decode()}


def redacted_headers(headers: Headers, redact: list[str]) -> Headers:
    if not redact:
        return headers
    if "header" in redact or "headers" in redact:
        return {name: ["REDACTED"] for name in headers}
    hidden = {r[7:-1].lower() for r in redact if r.startswith("header[") and r.endswith("]")}
    return {n: (["REDACTED"] if n.lower() in hidden else v) for n, v in headers.items()}
