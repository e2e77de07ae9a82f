"""Reading a delivery's body with a cap: the whole body is needed before its signature can be
checked, so an unsigned request could otherwise make the sidecar hold any amount of memory."""

from __future__ import annotations

from starlette.requests import Request

from jobsvc.webhooks.errors import BodyTooLarge

# Above what QStash (and the local server, 10 MiB) accepts as a message, base64'd into a failure
# callback (4/3 of it). jobsvc's own bodies are far smaller: payloads are at most 64 KiB.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


async def capped_body(request: Request, max_bytes: int) -> bytes:
    """The request's body; ``BodyTooLarge`` as soon as it is known to exceed ``max_bytes``: from
    its ``Content-Length`` before reading anything, or once a chunked body has passed the cap."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"the body of {int(declared)} bytes exceeds {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(f"the body exceeds {max_bytes} bytes")
    return bytes(body)
