"""Messages to people: email (SMTP) and SMS (an HTTP gateway)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class EmailMessage:
    """One email. ``message_id`` is its RFC 5322 Message-ID (``<…@…>``), derived from the job
    and channel so the same notification always carries the same id."""

    to: str
    subject: str
    text: str
    html: str | None = None
    message_id: str


@dataclass(frozen=True, kw_only=True)
class SmsMessage:
    """One text message to ``to`` (E.164, ``+15551234567``); ``idempotency_key`` as for
    ``EmailMessage.message_id``: the gateway drops a second message with the same key."""

    to: str
    text: str
    idempotency_key: str


@dataclass(frozen=True, kw_only=True)
class SentMessage:
    """What a sender reports: the id the far side gave the message, and where a development
    adapter wrote it instead of sending it (None when it was really sent)."""

    id: str
    written_to: str | None = None


class EmailSender(Protocol):
    async def send(self, message: EmailMessage) -> SentMessage:
        """Hand the message to the mail server. ``Rejected`` when it refuses the message or a
        recipient for good (5xx), ``Unavailable`` otherwise (connection dropped before the
        server accepted the message, 4xx, timeout)."""
        ...


class SmsSender(Protocol):
    async def send(self, message: SmsMessage) -> SentMessage:
        """Hand the message to the gateway. ``Rejected`` for a number or text it refuses,
        ``Unavailable`` when it may take it later."""
        ...
