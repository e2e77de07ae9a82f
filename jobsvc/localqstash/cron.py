"""Cron expressions: five fields, an optional ``CRON_TZ=<IANA zone>`` prefix, and whether they
name any time at all.

``load_zone``, ``next_fire`` and ``never_fires`` take plain values and raise nothing, so any
part of jobsvc that accepts a cron (the local server's schedules, JobService.Schedule) checks it
the same way before storing it.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from jobsvc.localqstash.errors import BadRequest

MAX_ZONE_LENGTH = 255


def load_zone(name: str) -> ZoneInfo | None:
    """The IANA zone called ``name``; None when there is none (unknown, a directory such as
    ``America``, too long, not a normalized relative path)."""
    if not name or len(name) > MAX_ZONE_LENGTH:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a long name
        return None


def next_fire(cron: str, zone: tzinfo, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that the five-field ``cron`` names in ``zone``,
    as an aware datetime in ``zone``; None when it never fires again (``0 0 31 2 *``) or cannot
    be read."""
    try:
        following: datetime = croniter(cron, after.astimezone(zone)).get_next(datetime)
    except (ValueError, KeyError, OverflowError):  # CroniterBadDateError is a ValueError
        return None
    return following


def never_fires(cron: str, zone: tzinfo = UTC) -> bool:
    """True when a valid five-field ``cron`` names no time from now on in ``zone``."""
    return next_fire(cron, zone, datetime.now(UTC)) is None


def parse_cron(expression: str) -> tuple[str, ZoneInfo]:
    """Split ``CRON_TZ=<IANA zone> <5 fields>``; UTC without the prefix. ``BadRequest`` if the
    zone is unknown, the fields are not a cron expression, or it never fires."""
    text = expression.strip()
    zone: ZoneInfo | None = ZoneInfo("UTC")
    if text.startswith("CRON_TZ="):
        name, _, text = text[len("CRON_TZ=") :].partition(" ")
        zone = load_zone(name)
        if zone is None:
            raise BadRequest(f"invalid cron time zone: {name[:100]!r}")
        text = text.strip()
    assert zone is not None
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise BadRequest(f"invalid cron expression: {expression[:300]!r}, expected 5 fields")
    if never_fires(text, zone):
        raise BadRequest(f"invalid cron expression: {expression[:300]!r} never fires")
    return text, zone


def next_fire_time(expression: str, after: float) -> float:
    """The first time (unix seconds) strictly after ``after`` that ``expression`` names;
    ``BadRequest`` when it names none."""
    cron, zone = parse_cron(expression)
    following = next_fire(cron, zone, datetime.fromtimestamp(after, zone))
    if following is None:
        raise BadRequest(f"cron expression {expression[:300]!r} never fires")
    return following.timestamp()
