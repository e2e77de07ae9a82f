"""Syndication platforms: external sites a listing is published to (Zillow, Craigslist, …)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jobsvc.payloads import Platform
from jobsvc.ports.listings import Listing


@dataclass(frozen=True, kw_only=True)
class PlatformListing:
    """The listing as published on one platform: the platform's own id and page, if it said."""

    platform: Platform
    listing_id: str
    url: str | None = None


class SyndicationPlatform(Protocol):
    """One platform. ``publish`` creates or updates the listing there; ``idempotency_key`` is
    the same for every attempt of one job on this platform, so a retry after a lost answer does
    not create a second listing. ``Rejected`` when the platform refuses the listing as invalid,
    ``Unavailable`` (with ``retry_after`` from a 429's ``Retry-After``) when it may take it
    later."""

    platform: Platform

    async def publish(self, listing: Listing, *, idempotency_key: str) -> PlatformListing: ...
