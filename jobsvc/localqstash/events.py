"""The events (logs) API: every state a message went through, newest first by default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, select

from jobsvc.localqstash import tables
from jobsvc.localqstash.durations import FlowControl
from jobsvc.localqstash.engine import Engine
from jobsvc.localqstash.errors import BadRequest
from jobsvc.localqstash.filters import conditions, page, values
from jobsvc.localqstash.messages import flow_control_fields, split_labels
from jobsvc.localqstash.users import User

MAX_PAGE = 1000
IN_PROGRESS = ("ACTIVE", "RETRY", "ERROR")
STATES = frozenset(
    {"CREATED", "ACTIVE", "RETRY", "ERROR", "DELIVERED", "FAILED", "CANCEL_REQUESTED", "CANCELED"}
)


def event_json(row: Row[Any]) -> dict[str, Any]:
    data = row.data
    out: dict[str, Any] = {
        "time": row.time,
        "messageId": row.message_id,
        "state": row.state,
        "url": row.url,
    }
    optional = {
        "topicName": row.topic_name,
        "queueName": row.queue_name,
        "scheduleId": row.schedule_id,
        "label": split_labels(row.label)[0] if row.label else None,
        "labels": split_labels(row.label) or None,
        "callerIp": row.caller_ip,
        "endpointName": data.get("endpointName"),
        "header": data.get("header"),
        "body": data.get("body"),
        "method": data.get("method"),
        "maxRetries": data.get("maxRetries"),
        "callback": data.get("callback"),
        "failureCallback": data.get("failureCallback"),
        "timeout": data.get("timeout"),
        "error": data.get("error"),
        "nextDeliveryTime": data.get("nextDeliveryTime"),
        "responseStatus": data.get("responseStatus"),
        "responseHeader": data.get("responseHeader"),
        "responseHeaders": data.get("responseHeader"),
        "responseBody": data.get("responseBody"),
        "retryDelayExpr": data.get("retryDelayExpression"),
        "retryDelayExpression": data.get("retryDelayExpression"),
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    if data.get("flowControl"):
        out.update(flow_control_fields(FlowControl(*data["flowControl"])))
    return out


async def list_events(
    engine: Engine, user: User, params: Mapping[str, Sequence[str]], *, key: str
) -> dict[str, Any]:
    count, cursor = page(params, default=MAX_PAGE if key == "events" else 100, maximum=MAX_PAGE)
    table = tables.events
    where = [table.c.user_id == user.user_id, *conditions(table, params)]
    states: list[str] = []
    for state in values(params, "state"):
        state = state.upper()
        if state == "CANCELLED":
            state = "CANCELED"
        if state == "IN_PROGRESS":
            states.extend(IN_PROGRESS)
        elif state in STATES:
            states.append(state)
        else:
            raise BadRequest(f"invalid state filter: {state!r}")
    if states:
        where.append(table.c.state.in_(states))
    order = (params.get("order") or ["latestFirst"])[0]
    if order not in ("latestFirst", "earliestFirst"):
        raise BadRequest(f"invalid order: {order!r}, expected latestFirst or earliestFirst")
    newest_first = order == "latestFirst"
    if cursor is not None:
        where.append(table.c.seq < cursor if newest_first else table.c.seq > cursor)

    def run(conn: Connection) -> list[Row[Any]]:
        by = table.c.seq.desc() if newest_first else table.c.seq
        return list(conn.execute(select(table).where(*where).order_by(by).limit(count + 1)))

    rows = await engine.store.read(run)
    out: dict[str, Any] = {key: [event_json(r) for r in rows[:count]]}
    if len(rows) > count:
        out["cursor"] = str(rows[count - 1].seq)
    return out
