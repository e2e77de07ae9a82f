import math

import pytest

from jobsvc.localqstash.durations import (
    MAX_TIME_MS,
    bounded_retry_delay,
    check_retry_delay_expression,
    default_backoff_seconds,
    later_ms,
    parse_bool,
    parse_duration,
    parse_flow_control,
    parse_retry_after,
    retry_delay_ms,
)
from jobsvc.localqstash.errors import BadRequest


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50s", 50), ("1d10h30m", 124200), ("1h30m3s", 5403), ("90", 90), ("2m", 120)],
)
def test_durations_in_qstash_notation(text: str, seconds: float) -> None:
    assert parse_duration(text, name="Upstash-Delay") == seconds


@pytest.mark.parametrize("text", ["", "ten", "5x", "1s2d", "-3s"])
def test_bad_durations_name_the_header(text: str) -> None:
    with pytest.raises(BadRequest, match="Upstash-Delay"):
        parse_duration(text, name="Upstash-Delay")


def test_booleans_ignore_case() -> None:
    assert parse_bool("True")
    assert parse_bool("true")
    assert parse_bool("TRUE")
    assert not parse_bool("False")
    assert not parse_bool(None)


def test_flow_control_value_with_either_separator() -> None:
    fc = parse_flow_control("fk", "parallelism=2, rate=5, period=1m")
    assert (fc.parallelism, fc.rate, fc.period_seconds) == (2, 5, 60)
    assert parse_flow_control("fk", "rate=3,period=10").period_seconds == 10
    bare = parse_flow_control("fk", None)
    assert (bare.parallelism, bare.rate, bare.period_seconds) == (None, None, 1)


@pytest.mark.parametrize("value", ["parallelism=0", "speed=3", "rate", "period=9d"])
def test_bad_flow_control_values(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_flow_control("fk", value)


def test_retry_delay_expressions() -> None:
    assert retry_delay_ms("1000 * retried", retried=0) == 0
    assert retry_delay_ms("1000 * retried", retried=3) == 3000
    assert retry_delay_ms("pow(2, retried) * 100", retried=4) == 1600
    assert retry_delay_ms("max(10, min(5, 1))", retried=0) == 10
    assert retry_delay_ms("7000 * retried", retried=1) == 7000


@pytest.mark.parametrize("expression", ["__import__('os')", "retried.real", "1 +", "x * 2"])
def test_retry_delay_expressions_cannot_run_code(expression: str) -> None:
    with pytest.raises(BadRequest):
        retry_delay_ms(expression, retried=1)


def test_default_backoff_matches_qstash() -> None:
    assert default_backoff_seconds(0) == pytest.approx(math.exp(2.5))  # ≈ 12 s
    assert default_backoff_seconds(1) == pytest.approx(148.41, rel=1e-3)
    assert default_backoff_seconds(2) == pytest.approx(1808.04, rel=1e-3)
    assert default_backoff_seconds(10) == 86400


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("30", now=now) == 30
    assert parse_retry_after("6m5s", now=now) == 365
    assert parse_retry_after(str(int(now) + 45), now=now) == 45
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now=now) == pytest.approx(60)
    assert parse_retry_after("soon", now=now) is None


@pytest.mark.parametrize(
    "expression",
    [
        "1+" * 50_000 + "1",  # 100,000 characters
        "-" * 100_000 + "1",  # nested deeper than the parser recurses
        "(" * 300 + "1" + ")" * 300,
        "1e308*10",  # infinity
        "1e308*10 - 1e308*10",  # not a number
        "exp(1e6)",
        "1" * 5000,
    ],
)
def test_retry_delays_that_cannot_be_honoured_are_bad_requests(expression: str) -> None:
    with pytest.raises(BadRequest):
        check_retry_delay_expression(expression)


def test_every_computed_time_is_bounded() -> None:
    now = 1_700_000_000_000
    assert later_ms(now, 1e300) == MAX_TIME_MS
    assert later_ms(now, math.inf) == MAX_TIME_MS
    assert later_ms(now, math.nan) == now
    assert later_ms(now, -5) == now
    assert later_ms(now, 12, scale=0.5) == now + 6000
    assert bounded_retry_delay(1e61) == 86400
    assert bounded_retry_delay(math.nan) == 0


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "s", "99999999d", "1" * 100])
def test_durations_beyond_a_century_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_duration(text, name="Upstash-Delay")
