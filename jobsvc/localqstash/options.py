"""What a publish, enqueue, batch entry or schedule asks for, read from its ``Upstash-*`` headers
(or the same names as query parameters)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from jobsvc.localqstash.durations import (
    MAX_TIME_MS,
    FlowControl,
    check_retry_delay_expression,
    parse_bool,
    parse_duration,
    parse_flow_control,
    parse_int,
)
from jobsvc.localqstash.errors import BadRequest
from jobsvc.localqstash.messages import Headers

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_RETRIES = 100
MAX_LABELS_LENGTH = 256  # every label, comma-separated, as the label column holds them
MAX_CRON_LENGTH = 256
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,256}$")
# Headers a client sends about its own connection; never forwarded.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "authorization",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "accept-encoding",
        "user-agent",
        "upgrade",
        "te",
        "expect",
    }
)


def canonical(name: str) -> str:
    """Header names as QStash (a Go server) writes them: ``x-custom`` → ``X-Custom``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass
class Options:
    """Every per-message setting a request can carry."""

    method: str = "POST"
    forward: Headers = field(default_factory=dict)
    delay_seconds: float | None = None
    not_before: int | None = None  # unix seconds
    retries: int | None = None
    retry_delay_expression: str | None = None
    callback: str | None = None
    failure_callback: str | None = None
    callback_headers: Headers = field(default_factory=dict)
    failure_callback_headers: Headers = field(default_factory=dict)
    timeout_seconds: float | None = None
    deduplication_id: str | None = None
    content_based_deduplication: bool = False
    flow_control: FlowControl | None = None
    labels: list[str] = field(default_factory=list)
    redact: list[str] = field(default_factory=list)
    queue_name: str | None = None
    cron: str | None = None
    schedule_id: str | None = None


def check_url(url: str, *, name: str) -> str:
    if not re.match(r"^https?://[^/?#\s]+", url):
        raise BadRequest(f"invalid {name}: {url!r}, expected an http or https URL")
    return url


def parse_options(pairs: Iterable[tuple[str, str]], *, schedule: bool = False) -> Options:
    """Read ``Options`` from header (or ``upstash-*`` query) pairs; ``BadRequest`` names the field.

    ``Content-Type`` is forwarded as is, ``Upstash-Forward-X`` as ``X``; with
    ``Upstash-Header-Forward: true`` every other non-QStash header is forwarded too.
    """
    upstash: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    forward: Headers = {}
    for name, raw in pairs:
        lower = name.lower()
        if lower.startswith("upstash-forward-"):
            forward.setdefault(canonical(name[len("upstash-forward-") :]), []).append(raw)
        elif lower.startswith("upstash-"):
            upstash[lower] = raw
        elif lower == "content-type":
            forward.setdefault("Content-Type", [raw])
        else:
            others.append((name, raw))
    if parse_bool(upstash.get("upstash-header-forward")):
        for name, raw in others:
            if name.lower() not in _NOT_FORWARDED:
                forward.setdefault(canonical(name), []).append(raw)

    opts = Options(forward=forward)
    method = upstash.get("upstash-method")
    if method is not None:
        opts.method = method.strip().upper()
        if opts.method not in METHODS:
            raise BadRequest(f"invalid Upstash-Method: {method!r}")
    if (value := upstash.get("upstash-delay")) is not None:
        opts.delay_seconds = parse_duration(value, name="Upstash-Delay")
    if (value := upstash.get("upstash-not-before")) is not None:
        if schedule:
            raise BadRequest("Upstash-Not-Before is not allowed on schedules")
        opts.not_before = parse_int(value, name="Upstash-Not-Before", maximum=MAX_TIME_MS // 1000)
    if (value := upstash.get("upstash-retries")) is not None:
        opts.retries = parse_int(value, name="Upstash-Retries", maximum=MAX_RETRIES)
    if (value := upstash.get("upstash-retry-delay")) is not None:
        check_retry_delay_expression(value)
        opts.retry_delay_expression = value.strip()
    if (value := upstash.get("upstash-callback")) is not None:
        opts.callback = check_url(value.strip(), name="Upstash-Callback")
    if (value := upstash.get("upstash-failure-callback")) is not None:
        opts.failure_callback = check_url(value.strip(), name="Upstash-Failure-Callback")
    for lower, raw in upstash.items():
        if lower.startswith("upstash-failure-callback-"):
            opts.failure_callback_headers[canonical(lower)] = [raw]
        elif lower.startswith("upstash-callback-"):
            opts.callback_headers[canonical(lower)] = [raw]
    for config in (opts.callback_headers, opts.failure_callback_headers):
        _check_callback_config(config)
    if (value := upstash.get("upstash-timeout")) is not None:
        opts.timeout_seconds = parse_duration(value, name="Upstash-Timeout")
        if opts.timeout_seconds <= 0:
            raise BadRequest("invalid Upstash-Timeout: must be positive")
    if (value := upstash.get("upstash-deduplication-id")) is not None:
        if schedule:
            raise BadRequest("Upstash-Deduplication-Id is not allowed on schedules")
        if not value.strip() or len(value) > 256:
            raise BadRequest("invalid Upstash-Deduplication-Id: must be 1 to 256 characters")
        opts.deduplication_id = value.strip()
    opts.content_based_deduplication = parse_bool(
        upstash.get("upstash-content-based-deduplication")
    )
    if (key := upstash.get("upstash-flow-control-key")) is not None:
        opts.flow_control = parse_flow_control(
            key.strip(), upstash.get("upstash-flow-control-value")
        )
    elif "upstash-flow-control-value" in upstash:
        raise BadRequest("Upstash-Flow-Control-Value needs Upstash-Flow-Control-Key")
    if (value := upstash.get("upstash-label")) is not None:
        opts.labels = [label.strip() for label in value.split(",") if label.strip()]
        if len(",".join(opts.labels)) > MAX_LABELS_LENGTH:
            raise BadRequest(f"invalid Upstash-Label: longer than {MAX_LABELS_LENGTH} characters")
    if (value := upstash.get("upstash-redact-fields")) is not None:
        opts.redact = [part.strip() for part in value.split(",") if part.strip()]
        for part in opts.redact:
            if part not in ("body", "header", "headers") and not re.fullmatch(
                r"header\[.+\]", part
            ):
                raise BadRequest(f"invalid Upstash-Redact-Fields entry: {part!r}")
    if (value := upstash.get("upstash-queue-name")) is not None:
        opts.queue_name = check_name(value.strip(), what="queue name")
    if schedule:
        cron = upstash.get("upstash-cron")
        if cron is None or not cron.strip():
            raise BadRequest("Upstash-Cron header is required to create a schedule")
        opts.cron = cron.strip()
        if len(opts.cron) > MAX_CRON_LENGTH:
            raise BadRequest(f"invalid Upstash-Cron: longer than {MAX_CRON_LENGTH} characters")
        if (value := upstash.get("upstash-schedule-id")) is not None:
            opts.schedule_id = check_name(value.strip(), what="schedule id")
    return opts


def _check_callback_config(config: Headers) -> None:
    """The callback's own settings are checked like the message's: a callback is sent long
    after the publish was answered, too late to refuse them."""
    for name, (raw, *_) in config.items():
        setting = name.removeprefix("Upstash-Failure-Callback-").removeprefix("Upstash-Callback-")
        if setting == "Delay":
            raise BadRequest("callbacks cannot be delayed")
        if setting == "Retries":
            parse_int(raw, name=name, maximum=MAX_RETRIES)
        elif setting == "Retry-Delay":
            check_retry_delay_expression(raw)
        elif setting == "Timeout":
            if parse_duration(raw, name=name) <= 0:
                raise BadRequest(f"invalid {name}: must be positive")
        elif setting == "Method" and raw.strip().upper() not in METHODS:
            raise BadRequest(f"invalid {name}: {raw[:100]!r}")


def check_name(value: str, *, what: str) -> str:
    if not NAME.match(value):
        raise BadRequest(f"invalid {what}: {value[:100]!r}, use letters, digits, '-', '_' and '.'")
    return value


def config_header(headers: Headers, name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
