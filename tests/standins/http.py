"""One local HTTP server that plays every external system jobsvc talks to over HTTP.

Usage::

    with ExternalSystems() as systems:
        systems.listings["L1"] = {"id": "L1", "title": "Loft", "address": "1 Main St",
                                  "rent": 2400, "bedrooms": 2, "bathrooms": 1}
        systems.answer_next(LISTING_SERVICE, status=503, times=2)
        ... point an adapter at systems.listing_service_url ...
        assert [r.method for r in systems.requests_to(LISTING_SERVICE)] == ["GET"] * 3

Each system lives under its own path prefix, which is also its base URL:

==========================  ==================================================================
``/listing-service``        ``GET /listings/{id}`` from ``listings``
``/application-service``    ``GET /applicants/{id}`` from ``applicants``
``/crm``                    ``POST /agents/{agent}/matches/search``: ``crm_contacts[agent]``
                            whose ``max_rent >= rent`` and ``min_bedrooms <= bedrooms``, best
                            first; ``PUT /agents/{agent}/listings/{listing}/matches`` into
                            ``crm_matches``
``/platforms/{platform}``   ``POST /listings`` into ``platform_listings[platform]``, keyed by
                            ``Idempotency-Key`` (a repeated key answers the same id, creates
                            nothing); ``reject_listings(platform)`` makes it answer 422
``/sms-gateway``            ``POST /messages`` into ``sms_messages``, deduplicated by
                            ``Idempotency-Key``; a ``to`` that is not E.164 answers 422
==========================  ==================================================================

Every request is logged in ``requests`` before anything else happens to it. Failures are
scripted per path prefix (``answer_next``, ``malformed_next``, ``delay_next``, ``drop_next``),
and ``hold`` keeps requests waiting until ``release`` (``held`` counts those waiting);
``require_token`` makes a prefix demand ``Authorization: Bearer <token>`` (401 otherwise).

The server is uvicorn on 127.0.0.1, port 0, on its own event loop in a daemon thread, so
synchronous and asynchronous tests use it alike. State is shared with the test thread: the
server reads and writes it under ``lock``; tests may assign to the dicts directly (single
assignments are atomic) and read them after the requests they care about have been answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from jobsvc.asgi_server import AsgiServer
from jobsvc.payloads import Platform

__all__ = [
    "APPLICATION_SERVICE",
    "CRM",
    "LISTING_SERVICE",
    "SMS_GATEWAY",
    "CrmContact",
    "ExternalSystems",
    "PublishedListing",
    "ReceivedSms",
    "RecordedRequest",
    "platform_prefix",
]

LISTING_SERVICE = "/listing-service"
APPLICATION_SERVICE = "/application-service"
CRM = "/crm"
SMS_GATEWAY = "/sms-gateway"

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def platform_prefix(platform: Platform | str) -> str:
    """The path prefix (and base path) of one syndication platform: ``/platforms/zillow``."""
    return f"/platforms/{Platform(platform).value}"


@dataclass(frozen=True, kw_only=True)
class RecordedRequest:
    """One request as the stand-in received it."""

    method: str
    path: str  # percent-decoded
    raw_path: str  # as sent, still percent-encoded
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # the decoded body, None when it is empty or not JSON

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, kw_only=True)
class CrmContact:
    """A CRM contact and what they are looking for: a listing matches when its rent is at most
    ``max_rent`` and it has at least ``min_bedrooms``. ``score`` of a match: rent / max_rent
    (the closer to the budget, the better the fit)."""

    id: str
    name: str
    email: str | None = None
    max_rent: int
    min_bedrooms: int = 0


@dataclass(frozen=True, kw_only=True)
class PublishedListing:
    """A listing a platform stand-in accepted; ``document`` is the JSON it was sent."""

    id: str
    platform: str
    idempotency_key: str
    url: str
    document: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ReceivedSms:
    """A text message the gateway stand-in accepted."""

    id: str
    to: str
    sender: str | None
    text: str
    idempotency_key: str


@dataclass(kw_only=True)
class _Scripted:
    prefix: str
    remaining: int
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_seconds: float = 0.0
    drop: bool = False

    def matches(self, path: str) -> bool:
        return self.remaining > 0 and _under(path, self.prefix)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def _body_bytes(body: bytes | str | Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class ExternalSystems:
    """The stand-in server and its state; see the module docstring. ``start()``/``stop()`` or
    use it as a context manager; ``url`` and the ``*_url`` properties once started."""

    def __init__(self, *, tokens: Mapping[str, str] | None = None) -> None:
        self.lock = threading.Lock()
        self.listings: dict[str, dict[str, Any]] = {}
        self.applicants: dict[str, dict[str, Any]] = {}
        self.crm_contacts: dict[str, list[CrmContact]] = {}
        # (agent id, listing id) -> contact ids, as last recorded.
        self.crm_matches: dict[tuple[str, str], list[str]] = {}
        # platform -> Idempotency-Key -> listing.
        self.platform_listings: dict[str, dict[str, PublishedListing]] = {}
        self.sms_messages: list[ReceivedSms] = []
        self.requests: list[RecordedRequest] = []
        self._tokens: dict[str, str] = dict(tokens or {})
        self._rejecting: dict[str, str] = {}
        self._answers: list[_Scripted] = []
        self._delays: list[_Scripted] = []
        self._holds: dict[str, asyncio.Event] = {}
        self._held: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._server: AsgiServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ExternalSystems:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._server = AsgiServer(self._app(), host="127.0.0.1", port=0, graceful_seconds=1)
            try:
                await self._server.start()
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            await self._stopping.wait()
            await self._server.stop()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(main()), name="external-systems", daemon=True
        )
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop serving; requests still sleeping in a scripted delay are cut short."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> ExternalSystems:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all state, scripts, tokens and rejections, so one running server can serve
        test after test (starting and stopping one takes about 0.2 s)."""
        with self.lock:
            holds = list(self._holds.values())
        for event in holds:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(event.set)
        with self.lock:
            for state in (
                self.listings,
                self.applicants,
                self.crm_contacts,
                self.crm_matches,
                self.platform_listings,
                self._tokens,
                self._rejecting,
                self._holds,
                self._held,
            ):
                state.clear()
            self.sms_messages.clear()
            self.requests.clear()
            self._answers.clear()
            self._delays.clear()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def listing_service_url(self) -> str:
        return self.url + LISTING_SERVICE

    @property
    def application_service_url(self) -> str:
        return self.url + APPLICATION_SERVICE

    @property
    def crm_url(self) -> str:
        return self.url + CRM

    @property
    def sms_gateway_url(self) -> str:
        return self.url + SMS_GATEWAY

    def platform_url(self, platform: Platform | str) -> str:
        return self.url + platform_prefix(platform)

    # -- scripting ---------------------------------------------------------------------------

    def require_token(self, prefix: str, token: str | None) -> None:
        """Requests under ``prefix`` must carry ``Authorization: Bearer <token>`` (None: no
        longer)."""
        with self.lock:
            if token is None:
                self._tokens.pop(prefix, None)
            else:
                self._tokens[prefix] = token

    def answer_next(
        self,
        prefix: str,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Any = b"",
        times: int = 1,
    ) -> None:
        """The next ``times`` requests under ``prefix`` get this answer instead of the system's
        own. ``body``: bytes, text, or anything else as JSON."""
        with self.lock:
            self._answers.append(
                _Scripted(
                    prefix=prefix,
                    remaining=times,
                    status=status,
                    headers=dict(headers or {}),
                    body=_body_bytes(body),
                )
            )

    def malformed_next(
        self,
        prefix: str,
        body: bytes | str | Any = "not json",
        *,
        status: int = 200,
        times: int = 1,
    ) -> None:
        """The next ``times`` requests under ``prefix`` get a success status with ``body`` (by
        default not JSON; pass JSON of the wrong shape to test shape checks)."""
        self.answer_next(
            prefix,
            status=status,
            headers={"content-type": "application/json"},
            body=body,
            times=times,
        )

    def delay_next(self, prefix: str, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` requests under ``prefix`` wait ``seconds`` before they are
        answered (as usual, or as scripted); a client that gives up ends the wait."""
        with self.lock:
            self._delays.append(_Scripted(prefix=prefix, remaining=times, delay_seconds=seconds))

    def drop_next(self, prefix: str, *, times: int = 1) -> None:
        """The next ``times`` requests under ``prefix`` see the connection closed in the middle
        of the answer (a 200 status line, then part of the body)."""
        with self.lock:
            self._answers.append(_Scripted(prefix=prefix, remaining=times, drop=True))

    def hold(self, prefix: str) -> None:
        """Keep every request under ``prefix`` waiting, unanswered, until ``release(prefix)``
        (or until its client hangs up)."""
        with self.lock:
            self._holds.setdefault(prefix, asyncio.Event())

    def release(self, prefix: str) -> None:
        """Let the requests held under ``prefix`` go on, and hold no more."""
        with self.lock:
            event = self._holds.pop(prefix, None)
        if event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(event.set)

    def held(self, prefix: str) -> int:
        """How many requests under ``prefix`` are being held now."""
        with self.lock:
            return self._held.get(prefix, 0)

    def reject_listings(
        self, platform: Platform | str, reason: str | None = "listing is invalid"
    ) -> None:
        """Make ``platform`` answer new listings 422 with ``reason`` (None: accept again)."""
        name = Platform(platform).value
        with self.lock:
            if reason is None:
                self._rejecting.pop(name, None)
            else:
                self._rejecting[name] = reason

    # -- reading -----------------------------------------------------------------------------

    def requests_to(self, prefix: str) -> list[RecordedRequest]:
        """The requests received under ``prefix``, oldest first."""
        with self.lock:
            return [r for r in self.requests if _under(r.path, prefix)]

    def published(self, platform: Platform | str) -> list[PublishedListing]:
        """The listings ``platform`` accepted, oldest first."""
        with self.lock:
            return list(self.platform_listings.get(Platform(platform).value, {}).values())

    # -- the server --------------------------------------------------------------------------

    def _app(self) -> _Prelude:
        app = Starlette(
            routes=[
                Route(
                    LISTING_SERVICE + "/listings/{listing_id:path}",
                    self._get_listing,
                    methods=["GET"],
                ),
                Route(
                    APPLICATION_SERVICE + "/applicants/{applicant_id:path}",
                    self._get_applicant,
                    methods=["GET"],
                ),
                Route(
                    CRM + "/agents/{agent_id}/matches/search", self._search_crm, methods=["POST"]
                ),
                Route(
                    CRM + "/agents/{agent_id}/listings/{listing_id}/matches",
                    self._record_crm_matches,
                    methods=["PUT"],
                ),
                Route("/platforms/{platform}/listings", self._publish, methods=["POST"]),
                Route(SMS_GATEWAY + "/messages", self._send_sms, methods=["POST"]),
            ]
        )
        return _Prelude(app, self)

    def _take(self, scripted: list[_Scripted], path: str) -> _Scripted | None:
        with self.lock:
            for entry in scripted:
                if entry.matches(path):
                    entry.remaining -= 1
                    return entry
        return None

    def _hold_of(self, path: str) -> tuple[str, asyncio.Event] | None:
        with self.lock:
            for prefix, event in self._holds.items():
                if _under(path, prefix):
                    return prefix, event
        return None

    def _token_for(self, path: str) -> str | None:
        with self.lock:
            matching = [p for p in self._tokens if _under(path, p)]
            return self._tokens[max(matching, key=len)] if matching else None

    async def _get_listing(self, request: Request) -> Response:
        with self.lock:
            listing = self.listings.get(request.path_params["listing_id"])
            body = None if listing is None else json.loads(json.dumps(listing))
        if body is None:
            return _error(404, "listing not found")
        return JSONResponse(body)

    async def _get_applicant(self, request: Request) -> Response:
        with self.lock:
            applicant = self.applicants.get(request.path_params["applicant_id"])
            body = None if applicant is None else json.loads(json.dumps(applicant))
        if body is None:
            return _error(404, "applicant not found")
        return JSONResponse(body)

    async def _search_crm(self, request: Request) -> Response:
        agent = request.path_params["agent_id"]
        body = await _json_body(request)
        listing = body.get("listing") if isinstance(body, dict) else None
        if not isinstance(listing, dict):
            return _error(400, 'body must be {"listing": {...}}')
        rent, bedrooms = listing.get("rent"), listing.get("bedrooms")
        if not isinstance(rent, int) or not isinstance(bedrooms, int):
            return _error(400, "listing.rent and listing.bedrooms must be integers")
        with self.lock:
            contacts = self.crm_contacts.get(agent)
        if contacts is None:
            return _error(404, "agent not found")
        matches = [
            (round(rent / c.max_rent, 4) if c.max_rent else 0.0, c)
            for c in contacts
            if c.max_rent >= rent and c.min_bedrooms <= bedrooms
        ]
        matches.sort(key=lambda pair: (-pair[0], pair[1].id))
        return JSONResponse(
            {
                "contacts": [
                    {"id": c.id, "name": c.name, "email": c.email, "score": score}
                    for score, c in matches
                ]
            }
        )

    async def _record_crm_matches(self, request: Request) -> Response:
        agent, listing = request.path_params["agent_id"], request.path_params["listing_id"]
        body = await _json_body(request)
        ids = body.get("contactIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(400, 'body must be {"contactIds": [...]}')
        with self.lock:
            if agent not in self.crm_contacts:
                return _error(404, "agent not found")
            self.crm_matches[(agent, listing)] = list(ids)
        return Response(status_code=204)

    async def _publish(self, request: Request) -> Response:
        platform = request.path_params["platform"]
        if platform not in {p.value for p in Platform}:
            return _error(404, f"no platform {platform!r}")
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "Idempotency-Key header is required")
        document = await _json_body(request)
        if not isinstance(document, dict):
            return _error(400, "body must be a JSON object")
        with self.lock:
            listings = self.platform_listings.setdefault(platform, {})
            existing = listings.get(key)
            if existing is not None:
                return JSONResponse({"id": existing.id, "url": existing.url}, status_code=200)
            reason = self._rejecting.get(platform)
            if reason is not None:
                return _error(422, reason)
            listing_id = f"{platform}-{next(self._ids)}"
            published = PublishedListing(
                id=listing_id,
                platform=platform,
                idempotency_key=key,
                url=f"https://{platform}.example/listings/{listing_id}",
                document=document,
            )
            listings[key] = published
        return JSONResponse({"id": published.id, "url": published.url}, status_code=201)

    async def _send_sms(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "Idempotency-Key header is required")
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        to, text, sender = body.get("to"), body.get("text"), body.get("from")
        if not isinstance(to, str) or not _E164.fullmatch(to):
            return _error(422, f"invalid phone number {to!r}: use E.164, like +15551234567")
        if not isinstance(text, str) or not text:
            return _error(422, "text must be a non-empty string")
        with self.lock:
            for sent in self.sms_messages:
                if sent.idempotency_key == key:
                    return JSONResponse({"id": sent.id}, status_code=200)
            message = ReceivedSms(
                id=f"sms-{next(self._ids)}",
                to=to,
                sender=sender if isinstance(sender, str) else None,
                text=text,
                idempotency_key=key,
            )
            self.sms_messages.append(message)
        return JSONResponse({"id": message.id}, status_code=201)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


class _Prelude:
    """What happens to every request before a system sees it: it is logged, then scripted
    delays, answers and drops apply, then the bearer token is checked."""

    def __init__(self, app: Starlette, systems: ExternalSystems) -> None:
        self._app = app
        self._systems = systems

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self._record(scope, bytes(body))
        path: str = scope["path"]
        systems = self._systems

        delay = systems._take(systems._delays, path)
        if delay is not None and await self._client_left(receive, delay.delay_seconds):
            return

        held = systems._hold_of(path)
        if held is not None:
            prefix, released = held
            with systems.lock:
                systems._held[prefix] = systems._held.get(prefix, 0) + 1
            try:
                if await self._client_left(receive, None, released):
                    return
            finally:
                with systems.lock:
                    systems._held[prefix] -= 1

        scripted = systems._take(systems._answers, path)
        if scripted is not None and scripted.drop:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
            return  # uvicorn closes the connection of an unfinished answer
        if scripted is not None:
            headers = {k.lower(): v for k, v in scripted.headers.items()}
            headers.setdefault("content-type", "application/json")
            await Response(scripted.body, status_code=scripted.status, headers=headers)(
                scope, receive, send
            )
            return

        token = systems._token_for(path)
        if token is not None:
            sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if sent != f"Bearer {token}":
                await _error(401, "invalid or missing bearer token")(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self._app(scope, replay, send)

    async def _client_left(
        self, receive: Receive, seconds: float | None, until: asyncio.Event | None = None
    ) -> bool:
        """Wait ``seconds`` (or until ``until`` is set); True if the client hung up (or the
        server is stopping) first."""
        stopping = self._systems._stopping
        assert stopping is not None

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        waiters = [
            asyncio.ensure_future(disconnected()),
            asyncio.ensure_future(stopping.wait()),
        ]
        released = None if until is None else asyncio.ensure_future(until.wait())
        try:
            done, _ = await asyncio.wait(
                waiters + ([released] if released is not None else []),
                timeout=seconds,
                return_when="FIRST_COMPLETED",
            )
        finally:
            for waiter in waiters + ([released] if released is not None else []):
                waiter.cancel()
        return any(waiter in done for waiter in waiters)

    def _record(self, scope: Scope, body: bytes) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = None
        request = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            json=decoded,
        )
        with self._systems.lock:
            self._systems.requests.append(request)
