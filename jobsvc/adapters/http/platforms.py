"""Syndication platforms over HTTP: ``POST /listings`` with each platform's own document shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jobsvc.adapters.http.endpoint import HttpEndpoint
from jobsvc.payloads import Platform
from jobsvc.ports.listings import Listing
from jobsvc.ports.syndication import PlatformListing

Document = dict[str, Any]


def generic_document(listing: Listing) -> Document:
    """The shape platforms without their own take: our field names, rent monthly."""
    return {
        "externalId": listing.id,
        "title": listing.title,
        "address": listing.address,
        "rent": listing.rent,
        "bedrooms": listing.bedrooms,
        "bathrooms": listing.bathrooms,
        "description": listing.description,
        "photos": list(listing.photos),
    }


def zillow_document(listing: Listing) -> Document:
    return {
        "externalId": listing.id,
        "title": listing.title,
        "address": listing.address,
        "monthlyRent": listing.rent,
        "beds": listing.bedrooms,
        "baths": listing.bathrooms,
        "description": listing.description,
        "photos": list(listing.photos),
    }


def craigslist_document(listing: Listing) -> Document:
    return {
        "externalId": listing.id,
        "postingTitle": listing.title,
        "price": listing.rent,
        "body": listing.description,
        "address": listing.address,
        "bedrooms": listing.bedrooms,
        "bathrooms": listing.bathrooms,
        "images": list(listing.photos),
    }


def facebook_document(listing: Listing) -> Document:
    return {
        "externalId": listing.id,
        "name": listing.title,
        "price": {"amount": listing.rent, "currency": "USD", "period": "month"},
        "address": listing.address,
        "bedrooms": listing.bedrooms,
        "bathrooms": listing.bathrooms,
        "description": listing.description,
        "images": list(listing.photos),
    }


# Platforms missing here get ``generic_document``.
DOCUMENT_SHAPES: Mapping[Platform, Callable[[Listing], Document]] = {
    Platform.ZILLOW: zillow_document,
    Platform.CRAIGSLIST: craigslist_document,
    Platform.FACEBOOK: facebook_document,
}


def platform_document(platform: Platform, listing: Listing) -> Document:
    """The listing as ``platform`` wants it posted; ``externalId`` is always our listing id."""
    return DOCUMENT_SHAPES.get(platform, generic_document)(listing)


class HttpSyndicationPlatform:
    """``SyndicationPlatform`` for ``platform`` against its listings API.

    ``POST /listings`` with ``platform_document(...)`` and ``Idempotency-Key``; a 200 or 201
    answers ``{"id": ..., "url": ...?}``. A 4xx such as 422 (the listing is invalid there) is
    ``Rejected`` with the platform's reason; 429 is ``Unavailable`` with its ``Retry-After``."""

    def __init__(self, platform: Platform, endpoint: HttpEndpoint) -> None:
        self.platform = platform
        self.endpoint = endpoint

    async def publish(self, listing: Listing, *, idempotency_key: str) -> PlatformListing:
        answer = await self.endpoint.request_object(
            "POST",
            "/listings",
            json=platform_document(self.platform, listing),
            headers={"Idempotency-Key": idempotency_key},
        )
        return PlatformListing(
            platform=self.platform,
            listing_id=answer.text("id"),
            url=answer.optional_text("url"),
        )
