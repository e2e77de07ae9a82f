"""Cron expressions and time zones of ScheduleRequest: validated before anything is stored or
sent to QStash, and the next firing computed for Schedule.next_run_time."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from jobsvc.errors import FieldViolation


def cron_violations(expression: str) -> list[FieldViolation]:
    """What is wrong with a five-field cron expression as ScheduleRequest.cron; empty if fine."""
    fields = expression.split()
    if expression.lstrip().upper().startswith("CRON_TZ="):
        return [FieldViolation("cron", "must not carry a CRON_TZ= prefix; use time_zone")]
    if len(fields) != 5:
        return [
            FieldViolation(
                "cron",
                f"must have 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(fields)}",
            )
        ]
    # croniter also takes a sixth (seconds) field and @-macros; the field count rules those out.
    if not croniter.is_valid(expression):
        return [FieldViolation("cron", f"is not a valid cron expression: {expression!r}")]
    return []


def time_zone_violations(name: str) -> list[FieldViolation]:
    """What is wrong with an IANA time zone name; empty if the zone is known."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return [FieldViolation("time_zone", f"unknown IANA time zone {name!r}")]
    return []


def next_run_time(expression: str, time_zone: str | None, after: datetime) -> datetime | None:
    """The first time after ``after`` that the expression names in ``time_zone`` (UTC if None),
    as an aware UTC datetime; None if the stored expression or zone cannot be read."""
    zone: tzinfo
    try:
        zone = ZoneInfo(time_zone) if time_zone else UTC
        following: datetime = croniter(expression, after.astimezone(zone)).get_next(datetime)
    except (ZoneInfoNotFoundError, ValueError, KeyError):
        return None
    return following.astimezone(UTC)
