"""The application service over HTTP: ``GET /applicants/{applicantId}``."""

from __future__ import annotations

from jobsvc.adapters.http.endpoint import HttpEndpoint, path_segment
from jobsvc.ports.applications import Applicant, ApplicationStatus


class HttpApplicationService:
    """``ApplicationService`` against the application service's REST API.

    The answer is a JSON object with ``id``, ``name``, ``email`` and ``phone`` (string or null),
    ``listingAddress``, ``status`` (active, withdrawn, expired, approved, declined),
    ``documentsComplete`` (boolean), ``expiresAt`` (ISO 8601 with offset, or null) and
    optionally ``missingDocuments`` (strings). Anything else is ``Unavailable`` (malformed)."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint

    async def get_applicant(self, applicant_id: str) -> Applicant:
        answer = await self.endpoint.request_object(
            "GET", f"/applicants/{path_segment(applicant_id)}"
        )
        status = answer.text("status")
        try:
            application_status = ApplicationStatus(status)
        except ValueError:
            answer.malformed(f"field 'status' has an unknown value {status!r}")
        return Applicant(
            id=answer.text("id"),
            name=answer.text("name"),
            email=answer.optional_text("email"),
            phone=answer.optional_text("phone"),
            listing_address=answer.text("listingAddress"),
            status=application_status,
            documents_complete=answer.flag("documentsComplete"),
            expires_at=answer.timestamp("expiresAt"),
            missing_documents=answer.texts("missingDocuments"),
        )
