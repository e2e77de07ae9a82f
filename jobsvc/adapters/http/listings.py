"""The listing service over HTTP: ``GET /listings/{listingId}``."""

from __future__ import annotations

from jobsvc.adapters.http.endpoint import HttpEndpoint, path_segment
from jobsvc.ports.listings import Listing


class HttpListingService:
    """``ListingService`` against the listing service's REST API.

    The answer is a JSON object with ``id``, ``title``, ``address``, ``rent`` (integer, monthly),
    ``bedrooms`` (integer), ``bathrooms`` (number) and optionally ``description`` and ``photos``
    (URLs); the whole object is kept as ``Listing.document`` for platforms that want more.
    A missing or wrongly typed field is ``Unavailable`` (malformed answer)."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint

    async def get_listing(self, listing_id: str) -> Listing:
        answer = await self.endpoint.request_object("GET", f"/listings/{path_segment(listing_id)}")
        return Listing(
            id=answer.text("id"),
            title=answer.text("title"),
            address=answer.text("address"),
            rent=answer.integer("rent"),
            bedrooms=answer.integer("bedrooms"),
            bathrooms=answer.number("bathrooms"),
            description=answer.optional_text("description") or "",
            photos=answer.texts("photos"),
            document=answer.value,
        )
