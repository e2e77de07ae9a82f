"""Hostile requests against the real local QStash server: every endpoint answers a 4xx with
QStash's ``{"error": ...}``, never a 500 or a hang, stores nothing, and one user's bad requests
leave the other users (and itself) served."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobsvc.localqstash import LocalQStashServer
from jobsvc.localqstash.users import DEV_USERS
from tests.integration.conftest import raw_http
from tests.receiver import Receiver

DEEP = 100_000  # nesting that a recursive parser cannot follow


@dataclass
class Hostile:
    """One request; ``{rx}`` in the path or a header value is the receiver's URL."""

    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _deep_array() -> bytes:
    return b"[" * DEEP + b"]" * DEEP


def _deep_object(key: str) -> bytes:
    return json.dumps({key: "x"}).replace('"x"', "[" * DEEP + "]" * DEEP).encode()


HOSTILE = [
    # publish: every computed time and delay is bounded, every parser guarded
    Hostile(
        "retry delay of 100,000 characters",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Retry-Delay": "1+" * 50_000 + "1"},
    ),
    Hostile(
        "retry delay nested 100,000 deep",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Retry-Delay": "-" * DEEP + "1"},
    ),
    Hostile(
        "retry delay of 1000 parentheses",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Retry-Delay": "(" * 499 + "1" + ")" * 499},
    ),
    Hostile(
        "infinite retry delay", "POST", "/v2/publish/{rx}", {"Upstash-Retry-Delay": "1e308*10"}
    ),
    Hostile(
        "retry delay that is not a number",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Retry-Delay": "1e308*10 - 1e308*10"},
    ),
    Hostile(
        "retry delay overflowing", "POST", "/v2/publish/{rx}", {"Upstash-Retry-Delay": "exp(1e6)"}
    ),
    Hostile(
        "callback retry delay nested deep",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Callback": "{rx}", "Upstash-Callback-Retry-Delay": "-" * DEEP + "1"},
    ),
    Hostile(
        "callback retries out of range",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Callback": "{rx}", "Upstash-Callback-Retries": "9" * 400},
    ),
    Hostile("delay of 400 digits", "POST", "/v2/publish/{rx}", {"Upstash-Delay": "9" * 400 + "s"}),
    Hostile("bare delay of 400 digits", "POST", "/v2/publish/{rx}", {"Upstash-Delay": "9" * 400}),
    Hostile("delay past the year 9999", "POST", "/v2/publish/{rx}", {"Upstash-Delay": "99999999d"}),
    Hostile(
        "not-before of 30 digits", "POST", "/v2/publish/{rx}", {"Upstash-Not-Before": "9" * 30}
    ),
    Hostile(
        "not-before past the year 9999",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Not-Before": "99999999999999"},
    ),
    Hostile("timeout of 400 digits", "POST", "/v2/publish/{rx}", {"Upstash-Timeout": "9" * 400}),
    Hostile("retries of 400 digits", "POST", "/v2/publish/{rx}", {"Upstash-Retries": "9" * 400}),
    Hostile("labels too long", "POST", "/v2/publish/{rx}", {"Upstash-Label": "l" * 1000}),
    Hostile(
        "deduplication id too long",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Deduplication-Id": "d" * 300},
    ),
    Hostile(
        "flow control parallelism of 400 digits",
        "POST",
        "/v2/publish/{rx}",
        {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "parallelism=" + "9" * 400},
    ),
    Hostile("unknown method", "POST", "/v2/publish/{rx}", {"Upstash-Method": "BREW"}),
    Hostile("destination of another scheme", "POST", "/v2/publish/ftp://example.com/x"),
    Hostile("unknown URL group", "POST", "/v2/publish/" + "g" * 300),
    # enqueue
    Hostile("queue name too long", "POST", "/v2/enqueue/" + "q" * 300 + "/{rx}"),
    Hostile(
        "enqueue with an infinite retry delay",
        "POST",
        "/v2/enqueue/q/{rx}",
        {"Upstash-Retry-Delay": "1e308*10"},
    ),
    # batch
    Hostile("batch nested 100,000 deep", "POST", "/v2/batch", body=_deep_array()),
    Hostile(
        "batch header nested 100,000 deep",
        "POST",
        "/v2/batch",
        body=b'[{"destination": "{rx}", "headers": {"a": ' + _deep_array() + b"}}]",
    ),
    Hostile(
        "batch header that is not a string",
        "POST",
        "/v2/batch",
        body=b'[{"destination": "{rx}", "headers": {"a": {"b": 1}}}]',
    ),
    Hostile("batch entry that is not an object", "POST", "/v2/batch", body=b"[1]"),
    Hostile(
        "batch entry with an infinite retry delay",
        "POST",
        "/v2/batch",
        body=b'[{"destination": "{rx}", "headers": {"Upstash-Retry-Delay": "1e308*10"}}]',
    ),
    Hostile("batch that is not JSON", "POST", "/v2/batch", body=b"\xff\xfe"),
    # schedules
    Hostile("cron that never fires", "POST", "/v2/schedules/{rx}", {"Upstash-Cron": "0 0 31 2 *"}),
    Hostile(
        "cron zone that is a directory",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "CRON_TZ=America 0 9 * * *"},
    ),
    Hostile(
        "cron zone too long",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "CRON_TZ=" + "A" * 300 + " 0 9 * * *"},
    ),
    Hostile(
        "cron zone outside the zone database",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "CRON_TZ=../../../etc/passwd 0 9 * * *"},
    ),
    Hostile("cron of 6 fields", "POST", "/v2/schedules/{rx}", {"Upstash-Cron": "0 0 9 * * *"}),
    Hostile("cron too long", "POST", "/v2/schedules/{rx}", {"Upstash-Cron": "0 " * 5000 + "0"}),
    Hostile(
        "schedule id with a slash",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "* * * * *", "Upstash-Schedule-Id": "a/b"},
    ),
    Hostile(
        "schedule with an infinite retry delay",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "* * * * *", "Upstash-Retry-Delay": "1e308*10"},
    ),
    Hostile(
        "schedule delayed beyond the plan",
        "POST",
        "/v2/schedules/{rx}",
        {"Upstash-Cron": "* * * * *", "Upstash-Delay": "36500d"},
    ),
    # messages
    Hostile("cancel body nested 100,000 deep", "DELETE", "/v2/messages", body=_deep_array()),
    Hostile(
        "cancel body ids nested deep", "DELETE", "/v2/messages", body=_deep_object("messageIds")
    ),
    Hostile("cancel with a misspelt filter", "DELETE", "/v2/messages?labeel=a"),
    Hostile("cancel with an unreadable date", "DELETE", "/v2/messages?fromDate=yesterday"),
    Hostile("cancel with a date of 40 digits", "DELETE", "/v2/messages?toDate=" + "9" * 40),
    Hostile("unknown message", "GET", "/v2/messages/msg_" + "x" * 20_000),
    # dead-letter queue
    Hostile("DLQ delete with a misspelt filter", "DELETE", "/v2/dlq?labeel=a"),
    Hostile("DLQ delete body nested deep", "DELETE", "/v2/dlq", body=_deep_object("dlqIds")),
    Hostile("DLQ delete by an unreadable status", "DELETE", "/v2/dlq?responseStatus=abc"),
    Hostile("DLQ delete with a count of 40 digits", "DELETE", "/v2/dlq?count=" + "9" * 40),
    Hostile("DLQ retry with a misspelt filter", "POST", "/v2/dlq/retry?urll=x"),
    Hostile("DLQ list with an unreadable count", "GET", "/v2/dlq?count=many"),
    Hostile("DLQ list with a cursor of 50 digits", "GET", "/v2/dlq?cursor=" + "9" * 50),
    Hostile("unknown DLQ entry", "GET", "/v2/dlq/" + "1" * 300),
    # events and logs
    Hostile("logs from a date of 40 digits", "GET", "/v2/logs?fromDate=" + "9" * 40),
    Hostile("logs with an unreadable cursor", "GET", "/v2/logs?cursor=abc"),
    Hostile("logs in an unknown state", "GET", "/v2/logs?state=BOGUS"),
    Hostile("logs in an unknown order", "GET", "/v2/logs?order=sideways"),
    Hostile("events with a negative count", "GET", "/v2/events?count=-1"),
    # URL groups
    Hostile("endpoints nested 100,000 deep", "POST", "/v2/topics/g/endpoints", body=_deep_array()),
    Hostile(
        "endpoints list nested deep",
        "POST",
        "/v2/topics/g/endpoints",
        body=_deep_object("endpoints"),
    ),
    Hostile(
        "endpoint of another scheme",
        "POST",
        "/v2/topics/g/endpoints",
        body=b'{"endpoints": [{"url": "file:///etc/passwd"}]}',
    ),
    Hostile("group name too long", "POST", "/v2/topics/" + "g" * 300 + "/endpoints", body=b"{}"),
    Hostile("remove endpoints nested deep", "DELETE", "/v2/topics/g/endpoints", body=_deep_array()),
    # queues and flow control
    Hostile("queue nested 100,000 deep", "POST", "/v2/queues", body=_deep_array()),
    Hostile(
        "queue parallelism of 31 digits",
        "POST",
        "/v2/queues",
        body=b'{"queueName": "q", "parallelism": 1' + b"0" * 30 + b"}",
    ),
    Hostile(
        "queue parallelism that is a boolean",
        "POST",
        "/v2/queues",
        body=b'{"queueName": "q", "parallelism": true}',
    ),
    Hostile("unknown flow control key", "POST", "/v2/flowControl/nokey/pin?period=" + "9" * 400),
    # NUL, which PostgreSQL refuses in text, the same on both databases
    Hostile("NUL in a message id", "GET", "/v2/messages/msg_%00"),
    Hostile("NUL in a filter", "GET", "/v2/logs?label=a%00b"),
    Hostile("NUL in a cancel filter", "DELETE", "/v2/messages?url=http://x/%00"),
    Hostile("NUL in a DLQ id", "DELETE", "/v2/dlq/1%00"),
    Hostile("NUL in an encoded destination", "POST", "/v2/publish/http%3A%2F%2Fx%2F%00"),
    Hostile(
        "NUL in a batch destination",
        "POST",
        "/v2/batch",
        body=b'[{"destination": "{rx}/\\u0000"}]',
    ),
    Hostile("NUL in cancelled ids", "DELETE", "/v2/messages", body=b'{"messageIds": ["\\u0000"]}'),
    Hostile("NUL in a queue name", "POST", "/v2/queues", body=b'{"queueName": "q\\u0000"}'),
    Hostile(
        "NUL in an endpoint",
        "POST",
        "/v2/topics/g/endpoints",
        body=b'{"endpoints": [{"url": "http://x/\\u0000"}]}',
    ),
    Hostile("NUL in a schedule id", "DELETE", "/v2/schedules/s%00"),
    # authentication
    Hostile("no token", "POST", "/v2/publish/{rx}", {"Authorization": ""}),
    Hostile(
        "a token of 100,000 characters",
        "GET",
        "/v2/logs",
        {"Authorization": "Bearer " + "t" * DEEP},
    ),
]


def _send(http: httpx.Client, request: Hostile, rx: Receiver) -> httpx.Response:
    url = rx.url_for("/hostile")
    headers = {name: value.replace("{rx}", url) for name, value in request.headers.items()}
    return http.request(
        request.method,
        request.path.replace("{rx}", url),
        headers=headers,
        content=request.body.replace(b"{rx}", url.encode()),
    )


def _assert_refused(response: httpx.Response, what: str) -> None:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert isinstance(error, str), f"{what}: {response.text}"
    assert error, f"{what}: {response.text}"
    assert len(response.content) < 4096, f"{what}: the error repeats the input"


@pytest.mark.parametrize("request_", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_request_is_refused_with_a_4xx_and_stores_nothing(
    server: LocalQStashServer, raw: httpx.Client, receiver: Receiver, request_: Hostile
) -> None:
    _assert_refused(_send(raw, request_, receiver), request_.name)
    logs = raw.get("/v2/logs").json()["logs"]
    assert logs == [], f"{request_.name} stored {logs}"


def test_after_every_hostile_request_every_user_is_still_served(
    server: LocalQStashServer, receiver: Receiver
) -> None:
    victim, other = DEV_USERS[0], DEV_USERS[1]
    with raw_http(server, victim.token) as hostile:
        for request_ in HOSTILE:
            _assert_refused(_send(hostile, request_, receiver), request_.name)
    for user in (other, victim):
        with raw_http(server, user.token) as http:
            response = http.post(
                f"/v2/publish/{receiver.url_for('/after-' + user.user_id)}", content=b"still here"
            )
            assert response.status_code == 200, response.text
    for user in (other, victim):
        [delivery] = receiver.wait_for(1, path="/after-" + user.user_id)
        assert delivery.body == b"still here"


# -- fuzzing: header and query values ----------------------------------------------------------

PUBLISH_HEADERS = [
    "Upstash-Delay",
    "Upstash-Not-Before",
    "Upstash-Retries",
    "Upstash-Retry-Delay",
    "Upstash-Timeout",
    "Upstash-Method",
    "Upstash-Label",
    "Upstash-Deduplication-Id",
    "Upstash-Flow-Control-Value",
    "Upstash-Callback-Retry-Delay",
    "Upstash-Callback-Retries",
    "Upstash-Callback-Timeout",
    "Upstash-Redact-Fields",
    "Upstash-Queue-Name",
]
# What a header can carry: printable ASCII, digits and operators more often than not.
VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    st.from_regex(r"[0-9e.+*()\-^ ,=a-z]{0,40}", fullmatch=True),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
)
QUERY_NAMES = [
    "count",
    "cursor",
    "fromDate",
    "toDate",
    "state",
    "order",
    "label",
    "responseStatus",
    "messageId",
    "url",
    "host",
]


@settings(
    max_examples=120,
    deadline=None,
    # The same examples on every run: a failure is found again, never by chance.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# HTTP allows no whitespace around a header value: the client would refuse to send it.
@given(
    headers=st.dictionaries(
        st.sampled_from(PUBLISH_HEADERS), VALUES.map(str.strip), min_size=1, max_size=4
    )
)
def test_fuzzed_publish_headers_never_get_a_5xx(
    server: LocalQStashServer, raw: httpx.Client, receiver: Receiver, headers: dict[str, str]
) -> None:
    if "Upstash-Callback-Retry-Delay" in headers or "Upstash-Callback-Retries" in headers:
        headers["Upstash-Callback"] = receiver.url_for("/callback")
    response = raw.post(f"/v2/publish/{receiver.url_for('/fuzz')}", headers=headers, content=b"x")
    assert response.status_code < 500, f"{headers}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@settings(
    max_examples=120,
    deadline=None,
    # The same examples on every run: a failure is found again, never by chance.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from(["/v2/logs", "/v2/events", "/v2/dlq"]),
    params=st.dictionaries(st.sampled_from(QUERY_NAMES), VALUES, max_size=4),
)
def test_fuzzed_listing_queries_never_get_a_5xx(
    server: LocalQStashServer, raw: httpx.Client, endpoint: str, params: dict[str, str]
) -> None:
    response = raw.get(endpoint, params=params)
    assert response.status_code < 500, f"{params}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
