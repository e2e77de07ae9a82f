"""Handler of ``syndicate-listing`` jobs: publish a listing to external rental platforms.

No syndication adapter exists yet (the next issue brings them), so this handler publishes
nothing and its result says so; a completed job never claims that a listing went out."""

from __future__ import annotations

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.payloads import SyndicateListing

NOTE = "no syndication adapter is configured yet; nothing was published to any platform"


async def handle(payload: SyndicateListing, ctx: HandlerContext) -> HandlerResult:
    """Accept the job without contacting any platform (none is configured yet).

    The result is ``{"status": "accepted", "note": ..., "payload": <the validated payload>}``;
    it holds no platform listing ids because no platform was asked for one."""
    ctx.logger.warning(
        "listing %s not syndicated: %s",
        payload.listing_id,
        NOTE,
        extra={"action": "syndication_not_configured"},
    )
    return HandlerResult(data={"status": "accepted", "note": NOTE, "payload": payload.to_dict()})
