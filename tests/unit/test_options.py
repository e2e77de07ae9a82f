import pytest

from jobsvc.localqstash.errors import BadRequest
from jobsvc.localqstash.options import parse_options


def test_python_sdk_headers() -> None:
    opts = parse_options(
        [
            ("Content-Type", "text/plain"),
            ("Upstash-Method", "PUT"),
            ("Upstash-Forward-X-Custom", "v"),
            ("Upstash-Callback-X-Cb", "1"),
            ("Upstash-Failure-Callback-X-Fcb", "2"),
            ("Upstash-Retries", "2"),
            ("Upstash-Retry-Delay", "1000 * retried"),
            ("Upstash-Callback", "https://cb.example/x"),
            ("Upstash-Failure-Callback", "https://fcb.example/y"),
            ("Upstash-Delay", "10s"),
            ("Upstash-Not-Before", "1700000000"),
            ("Upstash-Deduplication-Id", "dedup-1"),
            ("Upstash-Content-Based-Deduplication", "True"),
            ("Upstash-Timeout", "30s"),
            ("Upstash-Flow-Control-Key", "fk"),
            ("Upstash-Flow-Control-Value", "parallelism=2, rate=5, period=1m"),
            ("Upstash-Label", "lbl"),
            ("Upstash-Redact-Fields", "body,header[Authorization]"),
        ]
    )
    assert opts.method == "PUT"
    assert opts.forward == {"Content-Type": ["text/plain"], "X-Custom": ["v"]}
    assert opts.retries == 2
    assert opts.retry_delay_expression == "1000 * retried"
    assert opts.callback == "https://cb.example/x"
    assert opts.callback_headers == {"Upstash-Callback-X-Cb": ["1"]}
    assert opts.failure_callback_headers == {"Upstash-Failure-Callback-X-Fcb": ["2"]}
    assert opts.delay_seconds == 10
    assert opts.not_before == 1_700_000_000
    assert opts.deduplication_id == "dedup-1"
    assert opts.content_based_deduplication
    assert opts.timeout_seconds == 30
    assert opts.flow_control is not None
    assert opts.flow_control.rate == 5
    assert opts.labels == ["lbl"]
    assert opts.redact == ["body", "header[Authorization]"]


def test_header_forward_all() -> None:
    opts = parse_options(
        [("Upstash-Header-Forward", "true"), ("X-Trace", "t1"), ("Authorization", "Bearer s")]
    )
    assert opts.forward == {"X-Trace": ["t1"]}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Upstash-Method", "FETCH"),
        ("Upstash-Retries", "-1"),
        ("Upstash-Retries", "many"),
        ("Upstash-Delay", "soon"),
        ("Upstash-Callback", "ftp://x"),
        ("Upstash-Retry-Delay", "import os"),
        ("Upstash-Callback-Delay", "10s"),
        ("Upstash-Timeout", "0s"),
    ],
)
def test_bad_headers_are_named(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_options([(name, value)])
    message = caught.value.message.lower()
    assert name.lower() in message or "callback" in message or "retry delay" in message


def test_schedule_needs_cron_and_rejects_dedup() -> None:
    with pytest.raises(BadRequest, match="Upstash-Cron"):
        parse_options([], schedule=True)
    with pytest.raises(BadRequest, match="Deduplication"):
        parse_options(
            [("Upstash-Cron", "* * * * *"), ("Upstash-Deduplication-Id", "a")], schedule=True
        )
    opts = parse_options(
        [("Upstash-Cron", "0 9 * * *"), ("Upstash-Schedule-Id", "daily.report")], schedule=True
    )
    assert opts.cron == "0 9 * * *"
    assert opts.schedule_id == "daily.report"
