"""The records the stand-in systems start from in the handler tests: listing L1 and applicant
A1 (and others made with ``applicant``)."""

from __future__ import annotations

from typing import Any

from tests.standins.http import ExternalSystems

ADDRESS = "12 Garden Row, Brooklyn, NY"
EMAIL = "dana@applicants.example"
PHONE = "+15551230001"


def listing(listing_id: str = "L1", **changes: Any) -> dict[str, Any]:
    """A listing as the listing service answers it."""
    record: dict[str, Any] = {
        "id": listing_id,
        "title": "Sunny two-bedroom",
        "address": ADDRESS,
        "rent": 2400,
        "bedrooms": 2,
        "bathrooms": 1.5,
        "description": "Corner unit, south light.",
        "photos": [f"https://photos.example/{listing_id}/1.jpg"],
    }
    record.update(changes)
    return record


def applicant(applicant_id: str, **changes: Any) -> dict[str, Any]:
    """An active applicant with documents missing, as the application service answers it."""
    record: dict[str, Any] = {
        "id": applicant_id,
        "name": "Dana Reyes",
        "email": EMAIL,
        "phone": PHONE,
        "listingAddress": ADDRESS,
        "status": "active",
        "documentsComplete": False,
        "expiresAt": None,
        "missingDocuments": ["proof_of_income", "photo_id"],
    }
    record.update(changes)
    return record


def seeded(systems: ExternalSystems) -> ExternalSystems:
    """``systems`` emptied, then holding listing L1 and applicant A1."""
    systems.reset()
    systems.listings["L1"] = listing()
    systems.applicants["A1"] = applicant("A1")
    return systems
