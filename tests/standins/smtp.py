"""A real SMTP server for tests (aiosmtpd, in its own thread, on 127.0.0.1 and a free port).

It keeps what it received, can offer or require STARTTLS or speak TLS from the first byte with
a certificate from its own test CA (``client_tls_context()`` trusts it), can require AUTH,
and can be told to misbehave for the next few messages: drop the connection during DATA,
answer 451, or refuse recipients with 550.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class ReceivedMail:
    """One accepted message: its envelope, the parsed message, the bytes as received, whether
    the connection was encrypted, and the AUTH login used (None: none)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    tls: bool
    login: str | None


class SmtpServer:
    """An SMTP server on ``HOST``:``port``, started by ``start()`` or ``with``.

    ``starttls`` offers STARTTLS, ``require_starttls`` refuses everything but EHLO, NOOP,
    QUIT and STARTTLS until it is done, ``implicit_tls`` speaks TLS from the first byte
    (SMTPS). With ``username`` and ``password``, AUTH (PLAIN, LOGIN) is offered (only after
    STARTTLS when STARTTLS is on) and MAIL is refused with 530 until the client has logged in.
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.ca = trustme.CA()
        self._handler = _Handler(username=username, password=password)
        tls = starttls or require_starttls or implicit_tls
        server_context: ssl.SSLContext | None = None
        if tls:
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(HOST, "localhost").configure_cert(server_context)
        self._controller = _Controller(
            self._handler,
            hostname=HOST,
            port=0,
            server_hostname="localhost",
            ssl_context=server_context if implicit_tls else None,
            tls_context=server_context if not implicit_tls else None,
            require_starttls=require_starttls,
            authenticator=self._handler.authenticate if username is not None else None,
            # AUTH waits for STARTTLS when there is one to wait for (SMTPS is TLS throughout).
            auth_require_tls=starttls or require_starttls,
            # Enforced by the handler instead: aiosmtpd warns when it requires AUTH in clear.
            auth_required=False,
        )

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (and nothing else)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    @property
    def messages(self) -> list[ReceivedMail]:
        """Messages accepted so far, oldest first."""
        with self._handler.lock:
            return list(self._handler.received)

    @property
    def transactions(self) -> int:
        """MAIL commands received, accepted or not: how often a client began to send."""
        with self._handler.lock:
            return self._handler.transactions

    @property
    def auth_attempts(self) -> int:
        """AUTH exchanges received, successful or not."""
        with self._handler.lock:
            return self._handler.auth_attempts

    def on_message(self, hook: Callable[[ReceivedMail], None] | None) -> None:
        """Call ``hook`` (on the server's thread) with each message it accepts, after keeping
        it and before answering 250 (None: no longer)."""
        with self._handler.lock:
            self._handler.on_message = hook

    def drop_next_messages(self, count: int = 1) -> None:
        """Abort the connection once the next ``count`` messages' data has arrived, before
        answering it; those messages are not kept."""
        with self._handler.lock:
            self._handler.drops += count

    def defer_next_messages(
        self, count: int = 1, reply: str = "451 4.3.0 Temporary local problem, try again later"
    ) -> None:
        """Answer ``reply`` to the next ``count`` messages' data instead of accepting them."""
        with self._handler.lock:
            self._handler.deferrals.extend([reply] * count)

    def refuse_next_recipients(
        self, count: int = 1, reply: str = "550 5.1.1 Recipient address rejected: no such user"
    ) -> None:
        """Answer ``reply`` to the next ``count`` RCPT commands."""
        with self._handler.lock:
            self._handler.refusals.extend([reply] * count)


class _Controller(Controller):
    """aiosmtpd's Controller, bound to port 0: it learns its port before it first connects."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    """aiosmtpd hooks; runs on the server's thread, so state is shared under ``lock``."""

    def __init__(self, *, username: str | None, password: str | None) -> None:
        self.lock = threading.Lock()
        self.received: list[ReceivedMail] = []
        self.transactions = 0
        self.auth_attempts = 0
        self.drops = 0
        self.deferrals: list[str] = []
        self.refusals: list[str] = []
        self.on_message: Callable[[ReceivedMail], None] | None = None
        self._credentials = (
            None if username is None else (username.encode(), (password or "").encode())
        )

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        with self.lock:
            self.auth_attempts += 1
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == self._credentials
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        with self.lock:
            self.transactions += 1
        if self._credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.lock:
            if self.refusals:
                return self.refusals.pop(0)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            drop = self.drops > 0
            if drop:
                self.drops -= 1
            deferral = self.deferrals.pop(0) if self.deferrals and not drop else None
        if drop:
            assert server.transport is not None
            server.transport.abort()
            # Losing the connection cancels this session's coroutine, this hook included.
            await asyncio.Event().wait()
        if deferral is not None:
            return deferral
        raw = envelope.original_content or b""
        assert server.transport is not None
        login = session.auth_data.login.decode() if session.authenticated else None
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            # Parsed with Python's line endings, so bodies compare equal to what was sent.
            message=BytesParser(policy=email.policy.default).parsebytes(
                raw.replace(b"\r\n", b"\n")
            ),
            raw=raw,
            tls=server.transport.get_extra_info("ssl_object") is not None,
            login=login,
        )
        with self.lock:
            self.received.append(mail)
            hook = self.on_message
        if hook is not None:
            hook(mail)  # before the client hears 250: it runs while the message is unconfirmed
        return "250 OK"
