"""The CRM over HTTP: search an agent's contacts for a listing, record the matches."""

from __future__ import annotations

from collections.abc import Sequence

from jobsvc.adapters.http.endpoint import HttpEndpoint, path_segment
from jobsvc.ports.crm import Contact
from jobsvc.ports.listings import Listing


class HttpCrm:
    """``Crm`` against the CRM's REST API.

    ``find_matches``: ``POST /agents/{agentId}/matches/search`` with ``{"listing": {id, title,
    address, rent, bedrooms, bathrooms}}``, answered ``{"contacts": [{id, name, email?,
    score?}]}``, kept in the CRM's order. ``record_matches``: ``PUT
    /agents/{agentId}/listings/{listingId}/matches`` with ``{"contactIds": [...]}``, which
    replaces what was recorded, so repeating it is harmless."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint

    async def find_matches(self, *, agent_id: str, listing: Listing) -> list[Contact]:
        answer = await self.endpoint.request_object(
            "POST",
            f"/agents/{path_segment(agent_id)}/matches/search",
            json={
                "listing": {
                    "id": listing.id,
                    "title": listing.title,
                    "address": listing.address,
                    "rent": listing.rent,
                    "bedrooms": listing.bedrooms,
                    "bathrooms": listing.bathrooms,
                }
            },
        )
        return [
            Contact(
                id=contact.text("id"),
                name=contact.text("name"),
                email=contact.optional_text("email"),
                score=contact.optional_number("score"),
            )
            for contact in answer.objects("contacts")
        ]

    async def record_matches(
        self, *, agent_id: str, listing_id: str, contact_ids: Sequence[str]
    ) -> None:
        await self.endpoint.send(
            "PUT",
            f"/agents/{path_segment(agent_id)}/listings/{path_segment(listing_id)}/matches",
            json={"contactIds": list(contact_ids)},
        )
