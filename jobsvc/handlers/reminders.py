"""Handler of ``send-reminder`` jobs: the document-reminder sequence of a rental application.

A sequence is day1 → day3 → day5 → day7, each step its own job, ``interval`` (2 days) after the
previous one. At each step the application service says where the application stands: complete
documents, or an application withdrawn, expired or decided, end the sequence (the job completes
as skipped, with the reason); an unknown applicant is a permanent failure. Otherwise the
reminder goes out through the notifier (email, and SMS where the applicant has a phone) and the
next step is enqueued under the deduplication id ``reminder:{applicant id}:{step}``, so however
often this step's delivery is retried, the next step exists once. The application service
starts a sequence by enqueueing day1 under that same id (``reminder:{applicant id}:day1``),
which makes starting it twice harmless too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.notifier import Notifier
from jobsvc.handlers.outcomes import HandlerResult
from jobsvc.handlers.steering import port_failures
from jobsvc.jobs import JobType
from jobsvc.payloads import ReminderType, SendReminder
from jobsvc.ports import ApplicationService, ApplicationStatus

DEFAULT_INTERVAL = timedelta(days=2)
TEMPLATE_ID = "document_reminder"
NEXT_STEP: dict[ReminderType, ReminderType | None] = {
    ReminderType.DAY1: ReminderType.DAY3,
    ReminderType.DAY3: ReminderType.DAY5,
    ReminderType.DAY5: ReminderType.DAY7,
    ReminderType.DAY7: None,
}


def deduplication_id(applicant_id: str, step: ReminderType) -> str:
    """The deduplication id of one step of an applicant's sequence."""
    return f"reminder:{applicant_id}:{step.value}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Reminders:
    applications: ApplicationService
    notifier: Notifier
    interval: timedelta = DEFAULT_INTERVAL
    clock: Callable[[], datetime] = _utc_now

    async def __call__(self, payload: SendReminder, ctx: HandlerContext) -> HandlerResult:
        """The result: ``{"applicantId", "step", "channels", "next"}`` (``next``: the next
        step and its job id, None after day7), or a skip with the reason the sequence ended."""
        step = payload.reminder_type
        with port_failures(not_found=f"applicant {payload.applicant_id} not found"):
            applicant = await self.applications.get_applicant(payload.applicant_id)
        reason = self._stop_reason(applicant.status, applicant.documents_complete)
        if reason is None and applicant.is_expired(self.clock()):
            reason = "application expired"
        if reason is not None:
            ctx.logger.info(
                "reminder sequence of applicant %s ends at %s: %s",
                payload.applicant_id,
                step.value,
                reason,
                extra={"action": "reminder_sequence_ended"},
            )
            return HandlerResult.skip(reason, applicantId=payload.applicant_id, step=step.value)
        missing = applicant.missing_documents or payload.missing_docs
        data: dict[str, Any] = {
            "step": step.value,
            "missing_documents": list(missing),
            "listing_address": applicant.listing_address,
        }
        if applicant.expires_at is not None:
            data["expires_at"] = applicant.expires_at.isoformat()
        channels = await self.notifier.send(
            ctx, recipient=applicant, template_id=TEMPLATE_ID, template_data=data
        )
        following = NEXT_STEP[step]
        next_step: dict[str, str] | None = None
        if following is not None:
            job_id = await ctx.enqueue(
                JobType.SEND_REMINDER,
                SendReminder(
                    applicant_id=payload.applicant_id,
                    reminder_type=following,
                    missing_docs=tuple(missing),
                ).to_dict(),
                delay=self.interval,
                deduplication_id=deduplication_id(payload.applicant_id, following),
            )
            next_step = {"step": following.value, "jobId": str(job_id)}
        return HandlerResult(
            data={
                "applicantId": payload.applicant_id,
                "step": step.value,
                "channels": channels,
                "next": next_step,
            }
        )

    @staticmethod
    def _stop_reason(status: ApplicationStatus, documents_complete: bool) -> str | None:
        if documents_complete:
            return "documents complete"
        if status is ApplicationStatus.ACTIVE:
            return None
        return f"application {status.value}"
