"""Handler of ``syndicate-listing`` jobs: publish a listing to external rental platforms.

Each platform's outcome is noted in the job's progress as soon as it is known, so a retried
attempt publishes only to the platforms that have not taken the listing yet (a note the job
log cannot take at once is written later, see ``service.progress``). Outcomes:
``published`` (with the platform's listing id), ``rejected`` (the platform refused the listing
as invalid: final for that platform, reported, never retried) and ``failed`` (the platform may
take it later: the job is retried, after the latest ``Retry-After`` a platform asked for). The
same idempotency key goes with every attempt to one platform, so a platform that took the
listing but whose answer was lost does not list it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult, PermanentFailure, RetryLater
from jobsvc.handlers.steering import port_failures
from jobsvc.payloads import Platform, SyndicateListing
from jobsvc.ports import Listing, ListingService, Rejected, SyndicationPlatform, Unavailable
from jobsvc.ports.progress import REJECTED

PUBLISHED = "published"
FAILED = "failed"


def progress_key(platform: Platform) -> str:
    return f"platform:{platform.value}"


@dataclass(frozen=True, kw_only=True)
class Syndication:
    """Loads the listing from ``listings`` and publishes it through ``platforms`` (one adapter
    per platform a job may name)."""

    listings: ListingService
    platforms: Mapping[Platform, SyndicationPlatform]

    async def __call__(self, payload: SyndicateListing, ctx: HandlerContext) -> HandlerResult:
        """The result: ``{"listingId", "platforms": {name: outcome}}``; each outcome has a
        ``status`` and the platform's ``listingId`` and ``url``, or the ``error``."""
        # A first attempt has nothing noted yet (attempt numbers never repeat, not even after
        # an operator's retry), so it skips the read.
        earlier = await ctx.progress.all() if ctx.attempt > 1 else {}
        outcomes: dict[str, dict[str, Any]] = {}
        todo: list[Platform] = []
        for platform in payload.platforms:
            note = earlier.get(progress_key(platform))
            if note is not None and note.get("status") in (PUBLISHED, REJECTED):
                outcomes[platform.value] = dict(note)
            else:
                todo.append(platform)
        retry_after: list[timedelta] = []
        if todo:
            with port_failures(not_found=f"listing {payload.listing_id} not found"):
                listing = await self.listings.get_listing(payload.listing_id)
            results = await asyncio.gather(
                *(self._publish(listing, platform, ctx, retry_after) for platform in todo)
            )
            outcomes.update(zip((p.value for p in todo), results, strict=True))
        ordered = {p.value: outcomes[p.value] for p in payload.platforms}
        failed = {name: o for name, o in ordered.items() if o["status"] == FAILED}
        if failed:
            summary = "; ".join(o["error"] for o in failed.values())
            raise RetryLater(
                f"{len(failed)} of {len(ordered)} platforms did not take the listing: {summary}",
                max(retry_after) if retry_after else None,
            )
        if all(o["status"] == REJECTED for o in ordered.values()):
            summary = "; ".join(o["error"] for o in ordered.values())
            raise PermanentFailure(f"every platform rejected the listing: {summary}")
        return HandlerResult(data={"listingId": payload.listing_id, "platforms": ordered})

    async def _publish(
        self,
        listing: Listing,
        platform: Platform,
        ctx: HandlerContext,
        retry_after: list[timedelta],
    ) -> dict[str, Any]:
        adapter = self.platforms[platform]
        outcome: dict[str, Any]
        try:
            published = await adapter.publish(listing, idempotency_key=f"{ctx.job_id}:{platform}")
        except Rejected as exc:
            outcome = {"status": REJECTED, "error": exc.message}
            ctx.logger.warning(
                "%s rejected listing %s: %s",
                platform.value,
                listing.id,
                exc.message,
                extra={"action": "syndication_rejected", "platform": platform.value},
            )
        except Unavailable as exc:
            outcome = {"status": FAILED, "error": exc.message, "attempt": ctx.attempt}
            if exc.retry_after is not None:
                retry_after.append(exc.retry_after)
            ctx.logger.warning(
                "%s did not take listing %s: %s",
                platform.value,
                listing.id,
                exc.message,
                extra={"action": "syndication_failed", "platform": platform.value},
            )
        else:
            outcome = {"status": PUBLISHED, "listingId": published.listing_id}
            if published.url is not None:
                outcome["url"] = published.url
            ctx.logger.info(
                "listing %s published to %s as %s",
                listing.id,
                platform.value,
                published.listing_id,
                extra={"action": "syndication_published", "platform": platform.value},
            )
        await ctx.progress.record(progress_key(platform), outcome)
        return outcome
