"""The cron rules of schedules: which five-field expressions and IANA time zones a schedule may
hold, and when it fires next.

A schedule is accepted only if it fires within ``MAX_YEARS_BETWEEN_RUNS`` years: an expression
such as ``0 0 31 2 *`` (31 February) is valid syntax but never fires, and a broker asked to arm
it fails (QStash: "failed to find next date").
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter

from jobsvc.errors import FieldViolation, quoted

# 29 February comes back within 8 years (2096 -> 2104); nothing legitimate waits longer.
MAX_YEARS_BETWEEN_RUNS = 10
# The longest name in the IANA database is 32 characters; longer ones are refused unread.
MAX_TIME_ZONE_LENGTH = 64


@functools.cache
def _zone_names() -> frozenset[str]:
    # Only names of real zones: ZoneInfo() also opens directories ("America") and raises
    # OSError for them, or for names too long for the file system.
    return frozenset(available_timezones())


def time_zone(name: str) -> tzinfo | None:
    """The IANA time zone ``name``; None if there is no such zone."""
    if len(name) > MAX_TIME_ZONE_LENGTH or name not in _zone_names():
        return None
    try:
        return ZoneInfo(name)
    except (OSError, ValueError):  # listed but unreadable: as unknown
        return None


def cron_violations(expression: str, zone: str | None = None) -> list[FieldViolation]:
    """What is wrong with a five-field cron expression (in ``zone``, UTC if None) as a
    schedule's cron; empty if fine. An expression that never fires is wrong too."""
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
    if not expression.isprintable() or not croniter.is_valid(expression):
        return [FieldViolation("cron", f"is not a valid cron expression: {quoted(expression)}")]
    if next_run_time(expression, zone if zone and time_zone(zone) else None, _now()) is None:
        return [
            FieldViolation(
                "cron",
                f"never fires (no run within {MAX_YEARS_BETWEEN_RUNS} years): {quoted(expression)}",
            )
        ]
    return []


def time_zone_violations(name: str) -> list[FieldViolation]:
    """What is wrong with an IANA time zone name; empty if the zone is known."""
    if time_zone(name) is None:
        return [FieldViolation("time_zone", f"unknown IANA time zone {quoted(name)}")]
    return []


def next_run_time(expression: str, zone_name: str | None, after: datetime) -> datetime | None:
    """The first time after ``after`` that the expression names in ``zone_name`` (UTC if None),
    as an aware UTC datetime; None if the expression or zone cannot be read, or it does not fire
    within ``MAX_YEARS_BETWEEN_RUNS`` years."""
    zone = time_zone(zone_name) if zone_name else UTC
    if zone is None:
        return None
    try:
        following: datetime = croniter(
            expression,
            after.astimezone(zone),
            max_years_between_matches=MAX_YEARS_BETWEEN_RUNS,
        ).get_next(datetime)
    except (ValueError, KeyError, OverflowError):  # croniter's errors are ValueErrors
        return None
    return following.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)
