"""One remote HTTP system as the adapters see it: a base URL, a bearer token, a timeout, and the
mapping of everything that can go wrong onto ``jobsvc.ports.errors``."""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from jobsvc.ports.errors import NotFound, PortError, Rejected, Unavailable
from jobsvc.remote_text import clean_remote_text

logger = logging.getLogger(__name__)

# QStash delays a retry by at most a day, so a longer Retry-After could not be honoured anyway.
MAX_RETRY_AFTER = timedelta(days=1)
# Statuses that say "not now" rather than "not this request".
_TRANSIENT_4XX = frozenset({408, 429})


class HttpEndpoint:
    """A remote system at ``base_url`` (``name`` it in messages, e.g. "listing service").

    Requests go through ``client``, a pooled ``httpx.AsyncClient`` shared with other endpoints;
    whoever passes it in closes it. ``timeout_seconds`` bounds each request as a whole (connect,
    send, wait, read). With a ``token`` every request carries ``Authorization: Bearer <token>``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout_seconds: float,
        client: httpx.AsyncClient,
        name: str,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.name = name
        self._token = token
        self._client = client

    def __repr__(self) -> str:
        return f"HttpEndpoint({self.name!r}, {self.base_url!r})"

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send ``method path`` (``path`` already URL-quoted, starting with ``/``) with an
        optional JSON body; return the decoded JSON answer of a 2xx, or None for 204 or an empty
        body. Raises ``NotFound`` (404), ``Rejected`` (other 4xx but 408/429, with the remote's
        error text) or ``Unavailable`` (unreachable, timed out, 5xx, 408, 429 with
        ``retry_after`` from ``Retry-After``, a body that is not JSON)."""
        response = await self._send(method, path, json=json, headers=headers)
        if response.status_code == 204 or not response.content.strip():
            return None
        try:
            return jsonlib.loads(response.content)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            _fail(
                self.name,
                Unavailable(
                    f"{self.name}: {method} {path} answered {response.status_code} with a body "
                    f"that is not JSON: {_clip(response.text)!r}"
                ),
                status=response.status_code,
                cause=exc,
            )

    async def request_object(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """As ``request_json``, for requests answered with a JSON object; anything else (an empty
        body, a list) raises ``Unavailable`` as a malformed answer."""
        value = await self.request_json(method, path, json=json, headers=headers)
        answer = Answer(value, endpoint=self, request=f"{method} {path}")
        if not isinstance(value, dict):
            answer.malformed(f"expected a JSON object, got {_json_type(value)}")
        return answer

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """As ``request_json`` for requests whose answer carries nothing needed: any 2xx body is
        accepted and ignored."""
        await self._send(method, path, json=json, headers=headers)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        merged = {"Accept": "application/json", **(headers or {})}
        if self._token is not None:
            merged["Authorization"] = f"Bearer {self._token}"
        url = self.base_url + path
        try:
            # httpx's timeout applies per phase; a server trickling its answer byte by byte
            # would never trip it, so the whole exchange is bounded too.
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._client.request(
                    method, url, json=json, headers=merged, timeout=self.timeout_seconds
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            _fail(
                self.name,
                Unavailable(
                    f"{self.name}: {method} {path} got no answer within {self.timeout_seconds:g} s"
                ),
                cause=exc,
            )
        except httpx.TransportError as exc:
            _fail(
                self.name,
                Unavailable(f"{self.name}: {method} {path} failed: {type(exc).__name__}: {exc}"),
                cause=exc,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            _fail(
                self.name,
                Unavailable(f"{self.name}: {method} {path} could not be sent: {exc}"),
                cause=exc,
            )
        status = response.status_code
        if 200 <= status < 300:
            return response
        text = _clip(_error_text(response))
        where = f"{self.name}: {method} {path} answered {status}"
        if status == 404:
            _fail(self.name, NotFound(f"{where} (not found): {text}"), status=status)
        if status >= 500 or status in _TRANSIENT_4XX:
            after = parse_retry_after(response.headers.get("Retry-After"), now=datetime.now(UTC))
            _fail(self.name, Unavailable(f"{where}: {text}", retry_after=after), status=status)
        if 400 <= status < 500:
            _fail(self.name, Rejected(f"{where}: {text}"), status=status)
        # 1xx/3xx: a redirect the client was not set to follow: a wrong base URL or a proxy.
        _fail(self.name, Unavailable(f"{where}, which is not an answer: {text}"), status=status)


class Answer:
    """A JSON value an endpoint answered with, read field by field. A missing or wrongly typed
    field raises ``Unavailable("… malformed answer …")``: the remote is not speaking the
    protocol, which may be a deployment in progress, so the job retries rather than fails."""

    def __init__(self, value: Any, *, endpoint: HttpEndpoint, request: str) -> None:
        self.value = value
        self._endpoint = endpoint
        self._request = request

    def malformed(self, detail: str) -> NoReturn:
        _fail(
            self._endpoint.name,
            Unavailable(
                f"{self._endpoint.name}: {self._request} gave a malformed answer: {detail}"
            ),
        )

    def _field(self, key: str) -> Any:
        if not isinstance(self.value, dict):
            self.malformed(f"expected a JSON object, got {_json_type(self.value)}")
        if key not in self.value:
            self.malformed(f"field {key!r} is missing")
        return self.value[key]

    def _optional(self, key: str) -> Any:
        if not isinstance(self.value, dict):
            self.malformed(f"expected a JSON object, got {_json_type(self.value)}")
        return self.value.get(key)

    def _wrong(self, key: str, expected: str, value: Any) -> NoReturn:
        self.malformed(f"field {key!r} must be {expected}, got {_json_type(value)}")

    def text(self, key: str) -> str:
        value = self._field(key)
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
        return value

    def optional_text(self, key: str) -> str | None:
        """A string that may be null or absent."""
        value = self._optional(key)
        if value is not None and not isinstance(value, str):
            self._wrong(key, "a string or null", value)
        return value

    def integer(self, key: str) -> int:
        value = self._field(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "an integer", value)
        return value

    def number(self, key: str) -> float:
        value = self._field(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self._wrong(key, "a number", value)
        return float(value)

    def optional_number(self, key: str) -> float | None:
        """A number that may be null or absent."""
        return None if self._optional(key) is None else self.number(key)

    def flag(self, key: str) -> bool:
        value = self._field(key)
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        """A list of strings that may be null or absent (then empty)."""
        value = self._optional(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self._wrong(key, "a list of strings", value)
        return tuple(value)

    def objects(self, key: str) -> list[Answer]:
        """A required list of JSON objects, each readable like this one."""
        value = self._field(key)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self._wrong(key, "a list of objects", value)
        return [
            Answer(item, endpoint=self._endpoint, request=f"{self._request} ({key}[{i}])")
            for i, item in enumerate(value)
        ]

    def timestamp(self, key: str) -> datetime | None:
        """An ISO 8601 instant with its UTC offset, or null/absent; a local time without an
        offset is malformed, since nobody could say when it is."""
        value = self.optional_text(key)
        if value is None:
            return None
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            self._wrong(key, "an ISO 8601 timestamp", value)
        if when.tzinfo is None or when.utcoffset() is None:
            self.malformed(f"field {key!r} has no UTC offset: {value!r}")
        return when


def path_segment(value: str) -> str:
    """``value`` quoted as one URL path segment: an id with ``/``, ``?`` or ``#`` stays one id."""
    return quote(value, safe="")


def parse_retry_after(value: str | None, *, now: datetime) -> timedelta | None:
    """The wait a ``Retry-After`` header asks for: delta-seconds or an HTTP-date (RFC 9110),
    at most ``MAX_RETRY_AFTER``; a date in the past is no wait. None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # Capped before it becomes a timedelta, which overflows at about 10**14 seconds.
        return timedelta(seconds=min(int(text), int(MAX_RETRY_AFTER.total_seconds())))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return min(max(when - now, timedelta(0)), MAX_RETRY_AFTER)


def _fail(
    system: str,
    error: PortError,
    *,
    status: int | None = None,
    cause: BaseException | None = None,
) -> NoReturn:
    """Log the failure once, where it is best understood, and raise it."""
    logger.log(
        logging.INFO if isinstance(error, NotFound) else logging.WARNING,
        "%s",
        error.message,
        extra={
            "action": "http_port_request_failed",
            "system": system,
            "http_status": status,
            "error_kind": type(error).__name__,
        },
    )
    raise error from cause


def _error_text(response: httpx.Response) -> str:
    """The remote's own words: ``error``/``message``/``detail`` of a JSON body, else the body."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return value.strip()
    text = response.text.strip()  # httpx decodes with errors="replace"
    return text or response.reason_phrase or "(no body)"


def _clip(text: str) -> str:
    # A remote's error text ends up in job errors and logs; a whole HTML error page does not.
    return clean_remote_text(text)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
