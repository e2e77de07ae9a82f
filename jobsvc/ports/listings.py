"""The listing service: where a listing's details come from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True)
class Listing:
    """A rental listing as the listing service describes it. ``rent`` is monthly, in whole
    currency units; ``photos`` are URLs. ``document`` is the service's whole JSON document, for
    platforms that want more than these fields."""

    id: str
    title: str
    address: str
    rent: int
    bedrooms: int
    bathrooms: float
    description: str = ""
    photos: tuple[str, ...] = ()
    document: Mapping[str, Any] = field(default_factory=dict)


class ListingService(Protocol):
    async def get_listing(self, listing_id: str) -> Listing:
        """The listing; ``NotFound`` if the service has none with this id, ``Unavailable`` if it
        cannot say now."""
        ...
