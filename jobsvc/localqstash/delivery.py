"""One delivery attempt: the signed HTTP request QStash sends, and what came back."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field

import aiohttp

from jobsvc.localqstash.messages import Headers, Message
from jobsvc.localqstash.signing import sign

MAX_RESPONSE_BODY = 1024 * 1024
log = logging.getLogger("jobsvc.localqstash.delivery")


@dataclass
class Outcome:
    """What an attempt got: a status with headers and body, or an error without a response."""

    status: int | None
    headers: Headers = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def non_retryable(self) -> bool:
        return self.status == 489 and any(
            n.lower() == "upstash-nonretryable-error" and v and v[0].lower() == "true"
            for n, v in self.headers.items()
        )

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, values in self.headers.items():
            if key.lower() == lower and values:
                return values[0]
        return None


class Deliverer:
    """Sends attempts over a shared keep-alive connection pool."""

    def __init__(self, *, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_headers(self, message: Message, signing_key: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, values in message.headers.items():
            headers[name] = ", ".join(values)
        headers["User-Agent"] = "Upstash-QStash"
        headers["Upstash-Signature"] = sign(signing_key, url=message.url, body=message.body)
        headers["Upstash-Message-Id"] = message.message_id
        headers["Upstash-Retried"] = str(message.retried)
        if message.schedule_id:
            headers["Upstash-Schedule-Id"] = message.schedule_id
        if message.topic_name:
            headers["Upstash-Topic-Name"] = message.topic_name
        if message.caller_ip:
            headers["Upstash-Caller-Ip"] = message.caller_ip
        return headers

    async def attempt(
        self, message: Message, *, signing_key: str, timeout_seconds: float
    ) -> Outcome:
        assert self._session is not None, "Deliverer.start() was not called"
        headers = self.request_headers(message, signing_key)
        skip = () if any(n.lower() == "content-type" for n in headers) else ("Content-Type",)
        try:
            async with self._session.request(
                message.method,
                message.url,
                data=_payload(message),
                headers=headers,
                skip_auto_headers=skip,
                timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                allow_redirects=False,
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BODY)
                received: Headers = {}
                for name, value in response.headers.items():
                    received.setdefault(name, []).append(value)
                return Outcome(status=response.status, headers=received, body=body)
        except TimeoutError:
            return Outcome(status=None, error=f"request timed out after {timeout_seconds:g}s")
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Outcome(status=None, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        except Exception as exc:
            # Whatever else goes wrong is a failed attempt too: the message must be retried,
            # never left behind as in flight.
            log.exception(
                "delivery of %s failed", message.message_id, extra={"action": "attempt_error"}
            )
            return Outcome(status=None, error=f"{type(exc).__name__}: {exc}".rstrip(": "))


def _payload(message: Message) -> bytes | io.BytesIO | None:
    """The request body; over 1 MiB as a stream, as aiohttp asks (it warns about raw bytes)."""
    if not message.body and message.method == "GET":
        return None
    if len(message.body) > 1024 * 1024:
        return io.BytesIO(message.body)
    return message.body
