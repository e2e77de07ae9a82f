"""The application service: who an applicant is and where their rental application stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class ApplicationStatus(StrEnum):
    """Where an application stands; only an ``active`` one is still waiting for documents."""

    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    APPROVED = "approved"
    DECLINED = "declined"


@dataclass(frozen=True, kw_only=True)
class Applicant:
    """An applicant and their application. ``email`` or ``phone`` may be missing; ``expires_at``
    (aware) is when the application lapses; ``missing_documents`` is what it still lacks."""

    id: str
    name: str
    email: str | None
    phone: str | None
    listing_address: str
    status: ApplicationStatus
    documents_complete: bool
    expires_at: datetime | None = None
    missing_documents: tuple[str, ...] = ()

    def is_expired(self, now: datetime) -> bool:
        """Expired by status, or by ``expires_at`` having passed."""
        return self.status is ApplicationStatus.EXPIRED or (
            self.expires_at is not None and self.expires_at <= now
        )


class ApplicationService(Protocol):
    async def get_applicant(self, applicant_id: str) -> Applicant:
        """The applicant with their application; ``NotFound`` if there is none with this id,
        ``Unavailable`` if the service cannot say now."""
        ...
