"""Query filters shared by the DLQ and events listings: repeated keys and comma lists are OR-ed,
different filters AND-ed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import ColumnElement, Table, or_

from jobsvc.localqstash.durations import parse_int
from jobsvc.localqstash.errors import BadRequest

# query parameter -> column
COLUMNS = {
    "messageId": "message_id",
    "messageIds": "message_id",
    "url": "url",
    "topicName": "topic_name",
    "queueName": "queue_name",
    "scheduleId": "schedule_id",
    "label": "label",
    "flowControlKey": "flow_control_key",
    "callerIp": "caller_ip",
}


def values(params: Mapping[str, Sequence[str]], name: str) -> list[str]:
    out: list[str] = []
    for raw in params.get(name, ()):
        out.extend(part.strip() for part in raw.split(",") if part.strip())
    return out


def conditions(table: Table, params: Mapping[str, Sequence[str]]) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for name, column in COLUMNS.items():
        if column not in table.c:
            continue
        wanted = values(params, name)
        if wanted:
            where.append(or_(*(table.c[column] == v for v in wanted)))
    for name in ("host", "path"):
        for value in values(params, name):
            needle = f"://{value}" if name == "host" else value
            where.append(table.c.url.contains(needle, autoescape=True))
    time_column = table.c.time if "time" in table.c else table.c.created_at
    if params.get("fromDate"):
        where.append(time_column >= _int(params, "fromDate"))
    if params.get("toDate"):
        where.append(time_column <= _int(params, "toDate"))
    return where


def _int(params: Mapping[str, Sequence[str]], name: str) -> int:
    return parse_int(params[name][0], name=name)


def page(
    params: Mapping[str, Sequence[str]], *, default: int, maximum: int
) -> tuple[int, int | None]:
    """``(count, cursor)``: how many to return and the sequence number to continue from."""
    count = default
    if params.get("count"):
        count = min(maximum, parse_int(params["count"][0], name="count", minimum=1))
    cursor: int | None = None
    if params.get("cursor") and params["cursor"][0]:
        try:
            cursor = int(params["cursor"][0])
        except ValueError:
            raise BadRequest(f"invalid cursor: {params['cursor'][0]!r}") from None
    return count, cursor
