"""The sidecar's Starlette application: QStash's deliveries in, handler outcomes out.

Routes:

- ``POST /api/jobs/{job_type}``: one delivery of a job (or a cron firing) of that type.
- ``POST /api/jobs/_failed`` (the broker's failure-callback path): QStash gave up on a message.
- ``GET /livez``: the process serves requests. ``GET /readyz``: the job log answers too.

Every POST is verified first: the body is read up to a cap (413 beyond it), the signature is
checked on the raw body, for the URL QStash called, before anything is parsed or written, and
its token (``jti``) is spent with the delivery's first write; a bad or reused one is answered
401 and nothing else happens.
Endpoints raise; ``errors`` holds the one table that turns exceptions into answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobsvc.broker import DEFAULT_FAILURE_CALLBACK_PATH
from jobsvc.service.deliveries import Deliveries, Token
from jobsvc.webhooks.answers import answer, reply
from jobsvc.webhooks.bodies import DEFAULT_MAX_BODY_BYTES, capped_body
from jobsvc.webhooks.errors import MalformedDelivery, exception_handlers
from jobsvc.webhooks.signature import SignatureVerifier

log = logging.getLogger("jobsvc.webhooks")

Readiness = Callable[[], Awaitable[bool]]
DEFAULT_READINESS_TIMEOUT_SECONDS = 2.0


def build_app(
    *,
    deliveries: Deliveries,
    verifier: SignatureVerifier,
    readiness: Readiness | None = None,
    failure_callback_path: str = DEFAULT_FAILURE_CALLBACK_PATH,
    readiness_timeout_seconds: float = DEFAULT_READINESS_TIMEOUT_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The sidecar for ``deliveries``, checking signatures with ``verifier``.

    ``readiness`` decides ``/readyz`` (default: ``deliveries.ready``, one cheap query of the
    job log); a check that raises or takes longer than ``readiness_timeout_seconds`` counts as
    not ready. ``failure_callback_path`` must match the brokers' ``SidecarUrls``. A body
    over ``max_body_bytes`` is answered 413 before it is read to its end.
    """
    check = readiness or deliveries.ready

    async def verified_body(request: Request) -> tuple[bytes, Token]:
        """The body and its signature token, which the delivery spends (it is used once)."""
        body = await capped_body(request, max_body_bytes)
        claims = verifier.verify(
            request.headers.get("Upstash-Signature"), body, _called_url(request)
        )
        return body, (claims.jwt_id, claims.usable_until)

    async def deliver(request: Request) -> Response:
        body, token = await verified_body(request)
        result = await deliveries.handle(
            request.path_params["job_type"],
            body,
            message_id=_message_id(request),
            retried=_retried(request),
            schedule_id=request.headers.get("Upstash-Schedule-Id") or None,
            token=token,
        )
        return answer(result)

    async def failure_callback(request: Request) -> Response:
        body, token = await verified_body(request)
        await deliveries.failed(body, token=token)
        return reply(200, "RECORDED", "failure callback recorded")

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        try:
            async with asyncio.timeout(readiness_timeout_seconds):
                ready = await check()
        except Exception:  # TimeoutError included: not ready, whatever the reason
            log.warning("readiness check failed", exc_info=True, extra={"action": "not_ready"})
            ready = False
        if not ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            # Before the job route, which would otherwise take it as a job type.
            Route(failure_callback_path, failure_callback, methods=["POST"]),
            Route("/api/jobs/{job_type}", deliver, methods=["POST"]),
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=exception_handlers(),
    )


def _called_url(request: Request) -> str:
    """The URL as the request arrived: the path exactly as sent (still percent-encoded, as in
    the signature's ``sub``), not Starlette's decoded one."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    url = request.url
    return f"{url.scheme}://{url.netloc}{path}" + (f"?{url.query}" if url.query else "")


def _message_id(request: Request) -> str:
    message_id = request.headers.get("Upstash-Message-Id", "").strip()
    if not message_id:
        raise MalformedDelivery("MISSING_MESSAGE_ID", "no Upstash-Message-Id header")
    return message_id


def _retried(request: Request) -> int:
    raw = request.headers.get("Upstash-Retried", "0").strip()
    if not raw.isascii() or not raw.isdigit():
        raise MalformedDelivery("BAD_RETRIED", f"Upstash-Retried {raw!r} is not a count")
    return int(raw)
