"""The CRM: an agent's contacts, and the matches recorded between contacts and listings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from jobsvc.ports.listings import Listing


@dataclass(frozen=True, kw_only=True)
class Contact:
    """A CRM contact of an agent; ``score`` is the CRM's match score (higher is better)."""

    id: str
    name: str
    email: str | None = None
    score: float | None = None


class Crm(Protocol):
    async def find_matches(self, *, agent_id: str, listing: Listing) -> list[Contact]:
        """The agent's contacts whose search criteria the listing meets, best first.
        ``NotFound`` for an unknown agent."""
        ...

    async def record_matches(
        self, *, agent_id: str, listing_id: str, contact_ids: Sequence[str]
    ) -> None:
        """Record (replace) the agent's matches for the listing. Idempotent: recording the same
        matches again changes nothing. ``NotFound`` for an unknown agent."""
        ...
