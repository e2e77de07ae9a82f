"""Handler of ``send-notification`` jobs: a templated message (an adverse-action notice, a
reminder, a confirmation) to an applicant, by email and SMS, each channel at most once per job
(see ``jobsvc.handlers.notifier``). Enqueue already checked that the template exists, is of the
notification's type and gets every field it needs."""

from __future__ import annotations

from dataclasses import dataclass

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.notifier import Notifier
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.handlers.steering import port_failures
from jobsvc.payloads import SendNotification
from jobsvc.ports import ApplicationService


@dataclass(frozen=True, kw_only=True)
class Notifications:
    """``recipient_id`` is an applicant id of the application service, which knows their name,
    email address and phone number."""

    applications: ApplicationService
    notifier: Notifier

    async def __call__(self, payload: SendNotification, ctx: HandlerContext) -> HandlerResult:
        """The result: ``{"type", "templateId", "recipientId", "channels"}``."""
        with port_failures(not_found=f"recipient {payload.recipient_id} not found"):
            recipient = await self.applications.get_applicant(payload.recipient_id)
        channels = await self.notifier.send(
            ctx,
            recipient=recipient,
            template_id=payload.template_id,
            template_data=payload.template_data,
        )
        return HandlerResult(
            data={
                "type": payload.type.value,
                "templateId": payload.template_id,
                "recipientId": payload.recipient_id,
                "channels": channels,
            }
        )
