"""Handler of ``crm-match`` jobs: match a listing with an agent in the CRM.

No CRM adapter exists yet (the next issue brings it), so this handler matches nothing and its
result says so."""

from __future__ import annotations

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.payloads import CrmMatch

NOTE = "no CRM adapter is configured yet; the CRM was not contacted"


async def handle(payload: CrmMatch, ctx: HandlerContext) -> HandlerResult:
    """Accept the job without contacting the CRM (none is configured yet).

    The result is ``{"status": "accepted", "note": ..., "payload": <the validated payload>}``."""
    ctx.logger.warning(
        "listing %s not matched with agent %s: %s",
        payload.listing_id,
        payload.agent_id,
        NOTE,
        extra={"action": "crm_not_configured"},
    )
    return HandlerResult(data={"status": "accepted", "note": NOTE, "payload": payload.to_dict()})
