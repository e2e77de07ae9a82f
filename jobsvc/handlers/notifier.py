"""Sending one templated notification to a person by email and, where the template has a text
version and the person a phone number, by SMS, at most once per channel and job.

Before a channel is used, the job's progress is asked whether an earlier attempt already sent
it; after the channel's server accepted the message, that is noted at once. A retried attempt
(a dropped SMTP connection, an SMS gateway that was down) therefore sends only what is still
missing. A note the job log cannot take at once (a database restart) is written later, and
held in the process until then (``service.progress``): a storage error after a send never
counts as "not sent". The one gap left, a crash of the sidecar process between the server's
acceptance and the note, is closed on the far side: the email carries the same Message-ID and
the SMS the same idempotency key on every attempt, so the SMS gateway, and mail systems that
deduplicate by Message-ID, drop the second copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobsvc.errors import FieldViolation
from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import PermanentFailure, RetryLater
from jobsvc.payloads import Payload, SendNotification
from jobsvc.ports import (
    Applicant,
    EmailMessage,
    EmailSender,
    Rejected,
    SentMessage,
    SmsMessage,
    SmsSender,
    Unavailable,
)
from jobsvc.ports.progress import REJECTED
from jobsvc.templates import RenderedNotification, RenderError, TemplateCatalog, UnknownTemplate

SENT = "sent"
FAILED = "failed"
NOT_SENT = "not_sent"


def progress_key(channel: str) -> str:
    return f"notification:{channel}"


@dataclass(frozen=True, kw_only=True)
class Notifier:
    """Renders ``templates`` and sends through ``email`` and ``sms``; Message-IDs are
    ``<{job id}.{channel}@{message_id_domain}>``."""

    templates: TemplateCatalog
    email: EmailSender
    sms: SmsSender
    message_id_domain: str = "jobsvc.invalid"

    async def send(
        self,
        ctx: HandlerContext,
        *,
        recipient: Applicant,
        template_id: str,
        template_data: Mapping[str, Any],
    ) -> dict[str, dict[str, Any]]:
        """Send the notification; per channel (``email``, ``sms``) what happened: ``sent``
        (with the message id, and ``writtenTo`` when a development adapter wrote it to a file),
        ``rejected`` (refused for good), or ``not_sent`` with the reason (no address, no text
        version).

        ``RetryLater`` if a channel may work later (the channels already sent stay sent);
        ``PermanentFailure`` if no channel can deliver it at all (no address, every channel
        refused it, or the template cannot be rendered with this data).
        """
        rendered = self._render(template_id, template_data, recipient)
        outcomes: dict[str, dict[str, Any]] = {}
        failures: list[Unavailable] = []
        for channel, address in (("email", recipient.email), ("sms", recipient.phone)):
            # (A first attempt has nothing noted yet: attempt numbers never repeat.)
            earlier = await ctx.progress.get(progress_key(channel)) if ctx.attempt > 1 else None
            if earlier is not None and earlier.get("status") in (SENT, REJECTED):
                outcomes[channel] = dict(earlier)
                continue
            if not address:
                outcomes[channel] = {"status": NOT_SENT, "reason": f"recipient has no {channel}"}
                continue
            if channel == "sms" and rendered.sms is None:
                outcomes[channel] = {"status": NOT_SENT, "reason": "template has no SMS text"}
                continue
            try:
                sent = await self._send(ctx, channel, address, rendered)
            except Rejected as exc:
                outcome: dict[str, Any] = {"status": REJECTED, "to": address, "error": exc.message}
                ctx.logger.warning(
                    "%s to %s refused: %s",
                    channel,
                    address,
                    exc.message,
                    extra={"action": "notification_rejected", "channel": channel},
                )
            except Unavailable as exc:
                failures.append(exc)
                outcomes[channel] = {"status": FAILED, "to": address, "error": exc.message}
                ctx.logger.warning(
                    "%s to %s not sent this time: %s",
                    channel,
                    address,
                    exc.message,
                    extra={"action": "notification_failed", "channel": channel},
                )
                continue
            else:
                outcome = {"status": SENT, "to": address, "id": sent.id}
                if sent.written_to is not None:
                    outcome["writtenTo"] = sent.written_to
                ctx.logger.info(
                    "%s sent to %s",
                    channel,
                    address,
                    extra={"action": "notification_sent", "channel": channel},
                )
            await ctx.progress.record(progress_key(channel), outcome)
            outcomes[channel] = outcome
        if failures:
            summary = "; ".join(
                f"{channel}: {o['error']}"
                for channel, o in outcomes.items()
                if o["status"] == FAILED
            )
            after = [f.retry_after for f in failures if f.retry_after is not None]
            raise RetryLater(summary, max(after) if after else None)
        if not any(o["status"] == SENT for o in outcomes.values()):
            reasons = "; ".join(
                f"{c}: {o.get('error') or o.get('reason')}" for c, o in outcomes.items()
            )
            raise PermanentFailure(f"the notification could not be delivered: {reasons}")
        return outcomes

    def _render(
        self, template_id: str, data: Mapping[str, Any], recipient: Applicant
    ) -> RenderedNotification:
        person = {"name": recipient.name, "email": recipient.email, "phone": recipient.phone}
        try:
            return self.templates.render(template_id, data, recipient=person)
        except (UnknownTemplate, RenderError) as exc:
            raise PermanentFailure(f"template {template_id} cannot be rendered: {exc}") from exc

    async def _send(
        self, ctx: HandlerContext, channel: str, address: str, rendered: RenderedNotification
    ) -> SentMessage:
        key = f"{ctx.job_id}.{channel}"
        if channel == "email":
            return await self.email.send(
                EmailMessage(
                    to=address,
                    subject=rendered.subject,
                    text=rendered.text,
                    html=rendered.html,
                    message_id=f"<{key}@{self.message_id_domain}>",
                )
            )
        assert rendered.sms is not None
        return await self.sms.send(SmsMessage(to=address, text=rendered.sms, idempotency_key=key))


def notification_check(
    templates: TemplateCatalog,
) -> Callable[[Payload], Sequence[FieldViolation]]:
    """A check for Enqueue: a ``send-notification`` payload must name a template of its type
    and give it every field it needs."""

    def check(payload: Payload) -> Sequence[FieldViolation]:
        if not isinstance(payload, SendNotification):
            return ()
        return templates.check(payload.template_id, payload.type, payload.template_data)

    return check
