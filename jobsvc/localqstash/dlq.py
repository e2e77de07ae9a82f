"""The dead-letter queue: messages whose retries ran out, kept until deleted or retried."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, delete, select

from jobsvc.localqstash import tables
from jobsvc.localqstash.durations import parse_int
from jobsvc.localqstash.engine import Engine, Published
from jobsvc.localqstash.errors import NotFound
from jobsvc.localqstash.filters import conditions, page, values
from jobsvc.localqstash.messages import Message, body_fields
from jobsvc.localqstash.options import Options
from jobsvc.localqstash.store import Statement
from jobsvc.localqstash.users import User

MAX_PAGE = 100


def dlq_json(row: Row[Any]) -> dict[str, Any]:
    message = _message(row)
    data = row.data
    out = message.to_json()
    out["dlqId"] = row.dlq_id
    out["responseStatus"] = row.response_status
    out["responseHeader"] = data.get("responseHeader") or {}
    response = base64.b64decode(data.get("responseBody") or "")
    fields = body_fields(response)
    if "bodyBase64" in fields:
        out["responseBodyBase64"] = fields["bodyBase64"]
    else:
        out["responseBody"] = fields.get("body", "")
    if data.get("error"):
        out["error"] = data["error"]
    return out


def _message(row: Row[Any]) -> Message:
    return Message.from_row(SimpleNamespace(**row.data["message"], body=row.body))


def _where(user: User, params: Mapping[str, Sequence[str]]) -> list[Any]:
    table = tables.dlq
    where = [table.c.user_id == user.user_id, *conditions(table, params)]
    ids = values(params, "dlqIds")
    if ids:
        where.append(table.c.dlq_id.in_(ids))
    statuses = values(params, "responseStatus")
    if statuses:
        codes = [parse_int(s, name="responseStatus", maximum=999) for s in statuses]
        where.append(table.c.response_status.in_(codes))
    return where


async def list_dlq(
    engine: Engine, user: User, params: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    count, cursor = page(params, default=MAX_PAGE, maximum=MAX_PAGE)
    table = tables.dlq
    where = _where(user, params)
    if cursor is not None:
        where.append(table.c.seq > cursor)

    def run(conn: Connection) -> list[Row[Any]]:
        query = select(table).where(*where).order_by(table.c.seq).limit(count + 1)
        return list(conn.execute(query))

    rows = await engine.store.read(run)
    out: dict[str, Any] = {"messages": [dlq_json(r) for r in rows[:count]]}
    if len(rows) > count:
        out["cursor"] = str(rows[count - 1].seq)
    return out


async def get_dlq(engine: Engine, user: User, dlq_id: str) -> Row[Any]:
    table = tables.dlq
    row = await engine.store.read(
        lambda conn: conn.execute(
            select(table).where(table.c.user_id == user.user_id, table.c.dlq_id == dlq_id)
        ).first()
    )
    if row is None:
        raise NotFound(f"dlq message {dlq_id} not found")
    return row


async def delete_dlq(
    engine: Engine, user: User, dlq_ids: list[str] | None, params: Mapping[str, Sequence[str]]
) -> tuple[int, str | None]:
    """Delete by ids, or what the filters match (the first ``count`` after ``cursor``, when
    given); the number deleted, and the cursor to continue from while more remain."""
    table = tables.dlq
    where = [table.c.user_id == user.user_id]
    count: int | None = None
    if dlq_ids is not None:
        where.append(table.c.dlq_id.in_(dlq_ids))
    else:
        where += _where(user, params)
        if params.get("count") or params.get("cursor"):
            count, cursor = page(params, default=2**62, maximum=2**62)
            if cursor is not None:
                where.append(table.c.seq > cursor)
    result: list[tuple[int, str | None]] = []

    def run(conn: Connection) -> None:
        bounded = where
        more: str | None = None
        if count is not None:
            seqs = list(
                conn.execute(
                    select(table.c.seq).where(*where).order_by(table.c.seq).limit(count + 1)
                ).scalars()
            )
            if len(seqs) > count:
                more = str(seqs[count - 1])
            bounded = [*where, table.c.seq <= seqs[:count][-1]] if seqs else [*where]
        result.append((conn.execute(delete(table).where(*bounded)).rowcount, more))

    await engine.store.write(Statement(run))
    return result[0]


async def retry_dlq(
    engine: Engine, user: User, rows: list[Row[Any]], overrides: Options, override_names: set[str]
) -> list[Published]:
    """Publish each entry again as a new message (config headers on the request win) and
    remove it from the DLQ in the same transaction."""
    batch = []
    for row in rows:
        message = _message(row)
        options = Options(
            method=message.method,
            forward=message.headers,
            retries=message.max_retries,
            retry_delay_expression=message.retry_delay_expression,
            callback=message.callback,
            failure_callback=message.failure_callback,
            callback_headers=message.callback_headers,
            failure_callback_headers=message.failure_callback_headers,
            timeout_seconds=message.timeout_seconds,
            flow_control=message.flow_control,
            labels=message.labels,
            redact=message.redact,
        )
        for name in override_names:
            setattr(options, name, getattr(overrides, name))
        # The failed endpoint alone is retried, even when it was reached through a URL group.
        prepared = engine.prepare(
            user,
            message.url,
            options,
            message.body,
            caller_ip=message.caller_ip,
            queue_name=message.queue_name,
            schedule_id=message.schedule_id,
        )
        prepared.ops.append(_delete_entry(row.dlq_id))
        batch.append(prepared)
    await engine.commit(*batch)
    return [r for p in batch for r in p.results]


def _delete_entry(dlq_id: str) -> Statement:
    def run(conn: Connection) -> None:
        conn.execute(delete(tables.dlq).where(tables.dlq.c.dlq_id == dlq_id))

    return Statement(run)
