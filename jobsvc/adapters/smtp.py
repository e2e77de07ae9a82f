"""Email over SMTP: ``SmtpEmailSender`` hands each message to a mail server with the standard
library's smtplib, one connection per message, in a worker thread so the event loop never
blocks on the network."""

from __future__ import annotations

import asyncio
import email.policy
import logging
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime, parseaddr

from jobsvc.ports.errors import PortError, Rejected, Unavailable
from jobsvc.ports.messaging import EmailMessage, SentMessage

log = logging.getLogger("jobsvc.adapters.smtp")

# Server replies go into job errors and logs; a long multi-line reply is clipped to this.
MAX_REPLY_CHARS = 300


class SmtpEmailSender:
    """Sends email through one SMTP server (implements ``jobsvc.ports.EmailSender``).

    ``starttls`` (the default, for the submission port 587) upgrades the connection before
    anything else is sent and refuses to go on if the server does not offer STARTTLS, so
    neither the credentials nor the message ever travel in clear. ``implicit_tls`` speaks TLS
    from the first byte (SMTPS, port 465) and makes ``starttls`` moot. Credentials are only
    accepted with one of the two. ``tls_context`` defaults to ``ssl.create_default_context()``
    (system CAs, host name checked). ``timeout_seconds`` bounds each network operation, not
    the whole exchange. ``from_address`` is the From header (``Name <addr@example.com>``); its
    address is also the envelope sender.

    ``send`` answers ``Unavailable`` when the server could not be reached, dropped the
    connection before it accepted the message, timed out or answered 4xx (try again later),
    and ``Rejected`` when it refused the sender, the recipient, the message or the
    credentials with a 5xx, did not offer STARTTLS, or presented a certificate that does not
    verify. Constructor arguments that cannot work raise ``ValueError``. A cancelled ``send``
    cannot stop the exchange already under way in its thread, so the message may still go.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int = 587,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        implicit_tls: bool = False,
        from_address: str,
        timeout_seconds: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not host:
            raise ValueError("SMTP host is required")
        if not 0 < port < 65536:
            raise ValueError(f"SMTP port must be between 1 and 65535, got {port}")
        if (username is None) != (password is None):
            raise ValueError("SMTP username and password go together")
        if username is not None and not (starttls or implicit_tls):
            raise ValueError("SMTP credentials need STARTTLS or implicit TLS; never sent in clear")
        if timeout_seconds <= 0:
            raise ValueError(f"SMTP timeout must be positive, got {timeout_seconds}")
        sender = parseaddr(from_address)[1]
        if "@" not in sender:
            raise ValueError(f"from address {from_address!r} has no email address")
        self.host = host
        self.port = port
        self.from_address = from_address
        self._envelope_sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls and not implicit_tls
        self._implicit_tls = implicit_tls
        self._timeout_seconds = timeout_seconds
        self._tls_context = tls_context or ssl.create_default_context()

    def __repr__(self) -> str:
        return f"SmtpEmailSender(host={self.host!r}, port={self.port})"

    async def send(self, message: EmailMessage) -> SentMessage:
        """Hand ``message`` to the server; its Message-ID is the id reported back."""
        try:
            mime = self._compose(message)
        except (ValueError, TypeError) as exc:  # a header value the email package refuses
            raise Rejected(f"the message cannot be sent as email: {exc}") from exc
        try:
            await asyncio.to_thread(self._deliver, mime, message.to)
        except PortError as exc:
            # Debug only: the caller logs the outcome, with the job's context.
            log.debug(
                "email %s not sent via %s:%d: %s",
                message.message_id,
                self.host,
                self.port,
                exc.message,
                extra={"action": "email_not_sent"},
            )
            raise
        log.debug(
            "email %s sent via %s:%d",
            message.message_id,
            self.host,
            self.port,
            extra={"action": "email_sent"},
        )
        return SentMessage(id=message.message_id)

    def _compose(self, message: EmailMessage) -> MimeMessage:
        mime = MimeMessage(policy=email.policy.SMTP)
        mime["From"] = self.from_address
        mime["To"] = message.to
        mime["Subject"] = message.subject
        mime["Date"] = format_datetime(datetime.now(UTC))
        mime["Message-ID"] = message.message_id
        mime.set_content(message.text)
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html")
        return mime

    def _deliver(self, mime: MimeMessage, to: str) -> None:
        """Runs in a worker thread: one connection, one message; raises only PortErrors."""
        smtp: smtplib.SMTP | None = None
        try:
            smtp = self._connect()
            self._start_session(smtp)
            smtp.send_message(mime, from_addr=self._envelope_sender, to_addrs=[to])
        except (smtplib.SMTPException, OSError, ValueError, PortError) as exc:
            if smtp is not None:
                smtp.close()
            raise _port_error(exc, f"mail server {self.host}:{self.port}") from exc
        # The server has accepted the message: whatever QUIT meets must not turn that into a
        # failure, or a retry would send the message a second time.
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()

    def _connect(self) -> smtplib.SMTP:
        # Connects in the constructor, which closes the socket itself if the greeting fails;
        # the host given there is also the name STARTTLS checks the certificate against.
        if self._implicit_tls:
            return smtplib.SMTP_SSL(
                self.host, self.port, context=self._tls_context, timeout=self._timeout_seconds
            )
        return smtplib.SMTP(self.host, self.port, timeout=self._timeout_seconds)

    def _start_session(self, smtp: smtplib.SMTP) -> None:
        smtp.ehlo_or_helo_if_needed()
        if self._starttls:
            if not smtp.has_extn("starttls"):
                raise Rejected(
                    f"mail server {self.host}:{self.port} does not offer STARTTLS; "
                    "nothing sent, as it would travel in clear"
                )
            smtp.starttls(context=self._tls_context)
            smtp.ehlo_or_helo_if_needed()
        if self._username is not None and self._password is not None:
            smtp.login(self._username, self._password)


def _port_error(exc: Exception, server: str) -> PortError:
    """The port's view of what went wrong talking to ``server``: 4xx replies and transport
    failures may pass, 5xx replies and a server that cannot be trusted will not."""
    if isinstance(exc, PortError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        # One recipient per message, so one reply.
        for recipient, (code, reply) in exc.recipients.items():
            return _by_code(code, f"{server} refused recipient {recipient}: {_text(code, reply)}")
        return Rejected(f"{server} refused the recipient")
    if isinstance(exc, smtplib.SMTPResponseException):
        what = {
            smtplib.SMTPSenderRefused: "refused the sender",
            smtplib.SMTPDataError: "refused the message",
            smtplib.SMTPAuthenticationError: "refused the credentials",
            smtplib.SMTPConnectError: "refused the connection",
            smtplib.SMTPHeloError: "refused the greeting",
        }.get(type(exc), "answered")
        return _by_code(exc.smtp_code, f"{server} {what}: {_text(exc.smtp_code, exc.smtp_error)}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a read that timed out as a disconnect; the timeout is its context.
        if isinstance(exc.__context__, TimeoutError):
            return Unavailable(f"{server} did not answer within the timeout")
        return Unavailable(f"{server} closed the connection before accepting the message")
    if isinstance(exc, smtplib.SMTPException):
        # smtplib's own verdicts on the pair (no AUTH offered, no usable AUTH mechanism,
        # SMTPUTF8 needed but not offered): the same server will say the same next time.
        return Rejected(f"{server} cannot take this message: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Rejected(f"{server} presented a certificate that does not verify: {exc}")
    if isinstance(exc, TimeoutError):
        return Unavailable(f"{server} did not answer within the timeout")
    if isinstance(exc, OSError):
        return Unavailable(f"{server} could not be reached: {exc}")
    return Rejected(f"the message cannot be sent as email: {exc}")


def _by_code(code: int, message: str) -> PortError:
    # 4xx is transient by definition (RFC 5321 4.2.1); a reply outside 4xx and 5xx is
    # unexpected, and counted as transient.
    if 500 <= code < 600:
        return Rejected(message)
    return Unavailable(message)


def _text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = f"{code} {' '.join(text.split())}"
    return text if len(text) <= MAX_REPLY_CHARS else text[: MAX_REPLY_CHARS - 1] + "…"
