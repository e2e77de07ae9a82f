"""Handler of ``crm-match`` jobs: find the agent's CRM contacts a listing suits and record the
matches in the CRM. Recording replaces the agent's matches for the listing, so a retried
attempt (or a duplicate delivery) leaves the CRM as one run would."""

from __future__ import annotations

from dataclasses import dataclass

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.handlers.steering import port_failures
from jobsvc.payloads import CrmMatch
from jobsvc.ports import Crm, ListingService


@dataclass(frozen=True, kw_only=True)
class CrmMatching:
    listings: ListingService
    crm: Crm

    async def __call__(self, payload: CrmMatch, ctx: HandlerContext) -> HandlerResult:
        """The result: ``{"listingId", "agentId", "matches": [{"contactId", "name", "score"}]}``,
        best match first. An unknown listing or agent is a permanent failure."""
        with port_failures(not_found=f"listing {payload.listing_id} not found"):
            listing = await self.listings.get_listing(payload.listing_id)
        with port_failures(not_found=f"agent {payload.agent_id} not found in the CRM"):
            contacts = await self.crm.find_matches(agent_id=payload.agent_id, listing=listing)
            await self.crm.record_matches(
                agent_id=payload.agent_id,
                listing_id=payload.listing_id,
                contact_ids=[contact.id for contact in contacts],
            )
        ctx.logger.info(
            "listing %s matched %d contacts of agent %s",
            payload.listing_id,
            len(contacts),
            payload.agent_id,
            extra={"action": "crm_matched"},
        )
        matches = [{"contactId": c.id, "name": c.name, "score": c.score} for c in contacts]
        return HandlerResult(
            data={"listingId": payload.listing_id, "agentId": payload.agent_id, "matches": matches}
        )
