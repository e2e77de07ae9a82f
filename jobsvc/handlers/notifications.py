"""Handler of ``send-notification`` jobs: send a templated email or SMS to a recipient.

No notification adapter exists yet (the next issue brings them), so this handler sends nothing
and its result says so."""

from __future__ import annotations

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.payloads import SendNotification

NOTE = "no notification adapter is configured yet; nothing was sent"


async def handle(payload: SendNotification, ctx: HandlerContext) -> HandlerResult:
    """Accept the job without sending anything (no adapter is configured yet).

    The result is ``{"status": "accepted", "note": ..., "payload": <the validated payload>}``."""
    ctx.logger.warning(
        "%s notification to %s not sent: %s",
        payload.type.value,
        payload.recipient_id,
        NOTE,
        extra={"action": "notification_not_configured"},
    )
    return HandlerResult(data={"status": "accepted", "note": NOTE, "payload": payload.to_dict()})
