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


# What every filtered endpoint also reads.
COMMON = frozenset({"host", "path", "fromDate", "toDate", "count", "cursor", "qstash_token"})


def check_known(params: Mapping[str, Sequence[str]], known: frozenset[str]) -> None:
    """Refuse an unknown parameter: on a bulk delete, cancel or retry, a misspelt filter that
    were ignored would widen the action to everything."""
    unknown = sorted(name for name in params if name not in known)
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        raise BadRequest(f"unknown query parameter {shown}; known: {', '.join(sorted(known))}")


def _inside(host: str) -> tuple[str, ...]:
    # The host, with or without a port, followed by what may end it inside a URL.
    return tuple(f"://{host}{end}" for end in ("/", ":", "?", "#"))


def url_has_host(url: str, host: str) -> bool:
    """``host`` filter: the URL's host (with or without its port) is ``host``."""
    return url.endswith(f"://{host}") or any(needle in url for needle in _inside(host))


def _label_is(column: ColumnElement[str], label: str) -> ColumnElement[bool]:
    # The column holds every label of a message comma-separated; labels hold no comma.
    return or_(
        column == label,
        column.startswith(label + ",", autoescape=True),
        column.endswith("," + label, autoescape=True),
        column.contains("," + label + ",", autoescape=True),
    )


def time_bounds(params: Mapping[str, Sequence[str]]) -> tuple[int | None, int | None]:
    """``fromDate`` and ``toDate`` (ms), None when absent."""
    return (
        _int(params, "fromDate") if params.get("fromDate") else None,
        _int(params, "toDate") if params.get("toDate") else None,
    )


def conditions(table: Table, params: Mapping[str, Sequence[str]]) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for name, column in COLUMNS.items():
        if column not in table.c:
            continue
        wanted = values(params, name)
        if wanted and column == "label":
            where.append(or_(*(_label_is(table.c.label, v) for v in wanted)))
        elif wanted:
            where.append(or_(*(table.c[column] == v for v in wanted)))
    hosts = values(params, "host")
    if hosts:
        where.append(
            or_(
                *(table.c.url.contains(n, autoescape=True) for h in hosts for n in _inside(h)),
                *(table.c.url.endswith(f"://{h}", autoescape=True) for h in hosts),
            )
        )
    paths = values(params, "path")
    if paths:
        where.append(or_(*(table.c.url.contains(p, autoescape=True) for p in paths)))
    time_column = table.c.time if "time" in table.c else table.c.created_at
    since, until = time_bounds(params)
    if since is not None:
        where.append(time_column >= since)
    if until is not None:
        where.append(time_column <= until)
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
        cursor = parse_int(params["cursor"][0], name="cursor")
    return count, cursor
