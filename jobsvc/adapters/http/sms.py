"""The SMS gateway over HTTP: ``POST /messages``."""

from __future__ import annotations

from jobsvc.adapters.http.endpoint import HttpEndpoint
from jobsvc.ports.messaging import SentMessage, SmsMessage


class HttpSmsGateway:
    """``SmsSender`` against an SMS gateway's REST API.

    Sends ``{"to", "from", "text"}`` (``from`` only when a ``sender`` number is configured;
    otherwise the gateway's default applies) with the message's key as ``Idempotency-Key``, so
    the gateway drops a resent copy. The answer ``{"id": ...}`` becomes ``SentMessage.id``.
    A number or text the gateway refuses (4xx) is ``Rejected``."""

    def __init__(self, endpoint: HttpEndpoint, *, sender: str | None) -> None:
        self.endpoint = endpoint
        self.sender = sender

    async def send(self, message: SmsMessage) -> SentMessage:
        body = {"to": message.to, "text": message.text}
        if self.sender is not None:
            body["from"] = self.sender
        answer = await self.endpoint.request_object(
            "POST",
            "/messages",
            json=body,
            headers={"Idempotency-Key": message.idempotency_key},
        )
        return SentMessage(id=answer.text("id"))
