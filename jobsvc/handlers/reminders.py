"""Handler of ``send-reminder`` jobs: remind an applicant of missing documents.

No application-service or messaging adapter exists yet (the next issue brings them), so this
handler cannot tell whether the documents are complete, sends nothing and schedules no next
reminder; its result says so."""

from __future__ import annotations

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.payloads import SendReminder

NOTE = "no reminder adapter is configured yet; no reminder was sent and none was scheduled"


async def handle(payload: SendReminder, ctx: HandlerContext) -> HandlerResult:
    """Accept the job without contacting the applicant (no adapter is configured yet).

    The result is ``{"status": "accepted", "note": ..., "payload": <the validated payload>}``."""
    ctx.logger.warning(
        "reminder %s for applicant %s not sent: %s",
        payload.reminder_type.value,
        payload.applicant_id,
        NOTE,
        extra={"action": "reminder_not_configured"},
    )
    return HandlerResult(data={"status": "accepted", "note": NOTE, "payload": payload.to_dict()})
