"""SmtpEmailSender against a real SMTP server (aiosmtpd): what arrives, and how each way a
mail server can fail turns into Unavailable (try again) or Rejected (give up)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobsvc.adapters.smtp import SmtpEmailSender
from jobsvc.ports import EmailMessage, Rejected, SentMessage, Unavailable
from tests.standins.smtp import HOST, SmtpServer

ServerFactory = Callable[..., SmtpServer]

FROM = "Elm Street Rentals <rentals@example.com>"
USERNAME = "mailer"
PASSWORD = "s3cret-pass"


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Start SMTP servers (``SmtpServer`` options); each is stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(SmtpServer(**options))


def sender_for(server: SmtpServer, **options: Any) -> SmtpEmailSender:
    values: dict[str, Any] = {
        "host": HOST,
        "port": server.port,
        "from_address": FROM,
        "starttls": False,
        "timeout_seconds": 5.0,
    }
    values.update(options)
    return SmtpEmailSender(**values)


def secure_sender_for(server: SmtpServer, **options: Any) -> SmtpEmailSender:
    """STARTTLS and login, trusting the server's test CA."""
    values: dict[str, Any] = {
        "starttls": True,
        "username": USERNAME,
        "password": PASSWORD,
        "tls_context": server.client_tls_context(),
    }
    values.update(options)
    return sender_for(server, **values)


def message(**fields: Any) -> EmailMessage:
    values: dict[str, Any] = {
        "to": "maria.lopez@example.org",
        "subject": "We received your application for 221 Elm Street",
        "text": "Hello Maria,\n\nThank you for applying.\n",
        "html": "<p>Hello Maria,</p><p>Thank you for applying.</p>\n",
        "message_id": "<0f6c2d1e.email@jobsvc.example.com>",
    }
    values.update(fields)
    return EmailMessage(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_plain_send_delivers_text_and_html(make_server: ServerFactory) -> None:
    server = make_server()
    email = message(
        subject="Viewing confirmed: Café Lofts, 5 Rue Émile",
        text="Hello José,\n\nSee you at the Café Lofts.\n",
        html="<p>Hello José,</p>\n",
    )

    sent = await sender_for(server).send(email)

    assert sent == SentMessage(id="<0f6c2d1e.email@jobsvc.example.com>")
    [received] = server.messages
    assert received.mail_from == "rentals@example.com"
    assert received.rcpt_tos == ("maria.lopez@example.org",)
    assert not received.tls
    assert received.login is None
    mail = received.message
    assert mail["Message-ID"] == "<0f6c2d1e.email@jobsvc.example.com>"
    assert mail["Subject"] == "Viewing confirmed: Café Lofts, 5 Rue Émile"
    assert mail["From"] == FROM
    assert mail["To"] == "maria.lopez@example.org"
    assert mail["Date"].datetime is not None
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    assert text.get_content() == "Hello José,\n\nSee you at the Café Lofts.\n"
    assert html.get_content() == "<p>Hello José,</p>\n"


async def test_text_only_message_is_single_part(make_server: ServerFactory) -> None:
    server = make_server()

    await sender_for(server).send(message(html=None))

    [received] = server.messages
    assert received.message.get_content_type() == "text/plain"
    assert received.message.get_content() == "Hello Maria,\n\nThank you for applying.\n"


async def test_starttls_and_login(make_server: ServerFactory) -> None:
    server = make_server(require_starttls=True, username=USERNAME, password=PASSWORD)

    await secure_sender_for(server).send(message())

    [received] = server.messages
    assert received.tls
    assert received.login == USERNAME
    assert received.message["Message-ID"] == "<0f6c2d1e.email@jobsvc.example.com>"


async def test_implicit_tls(make_server: ServerFactory) -> None:
    server = make_server(implicit_tls=True, username=USERNAME, password=PASSWORD)

    await secure_sender_for(server, starttls=False, implicit_tls=True).send(message())

    [received] = server.messages
    assert received.tls
    assert received.login == USERNAME


async def test_wrong_password_is_rejected(make_server: ServerFactory) -> None:
    server = make_server(starttls=True, username=USERNAME, password=PASSWORD)

    with pytest.raises(Rejected, match="535"):
        await secure_sender_for(server, password="wrong").send(message())

    assert server.transactions == 0
    assert server.messages == []


async def test_missing_login_is_rejected(make_server: ServerFactory) -> None:
    server = make_server(starttls=True, username=USERNAME, password=PASSWORD)

    with pytest.raises(Rejected, match="530"):
        await secure_sender_for(server, username=None, password=None).send(message())

    assert server.messages == []


async def test_starttls_not_offered_is_rejected_before_anything_is_sent(
    make_server: ServerFactory,
) -> None:
    # The server offers AUTH in clear: a sender that fell back would hand over the password.
    server = make_server(username=USERNAME, password=PASSWORD)

    with pytest.raises(Rejected, match="STARTTLS"):
        await secure_sender_for(server).send(message())

    assert server.auth_attempts == 0
    assert server.transactions == 0
    assert server.messages == []


async def test_untrusted_certificate_is_rejected(make_server: ServerFactory) -> None:
    server = make_server(starttls=True)
    other_ca = make_server(starttls=True)

    with pytest.raises(Rejected, match="certificate"):
        await sender_for(server, starttls=True, tls_context=other_ca.client_tls_context()).send(
            message()
        )

    assert server.transactions == 0


async def test_connection_dropped_during_data_is_unavailable_then_next_send_arrives_once(
    make_server: ServerFactory,
) -> None:
    server = make_server(starttls=True, username=USERNAME, password=PASSWORD)
    sender = secure_sender_for(server)
    server.drop_next_messages(1)

    with pytest.raises(Unavailable):
        await sender.send(message())
    assert server.transactions == 1
    assert server.messages == []

    await sender.send(message())

    [received] = server.messages
    assert received.message["Message-ID"] == "<0f6c2d1e.email@jobsvc.example.com>"


async def test_451_is_unavailable(make_server: ServerFactory) -> None:
    server = make_server()
    server.defer_next_messages(1)

    with pytest.raises(Unavailable, match="451"):
        await sender_for(server).send(message())

    assert server.messages == []
    await sender_for(server).send(message())
    assert len(server.messages) == 1


async def test_temporary_recipient_failure_is_unavailable(make_server: ServerFactory) -> None:
    server = make_server()
    server.refuse_next_recipients(1, reply="450 4.2.1 Mailbox busy, try again later")

    with pytest.raises(Unavailable, match="450"):
        await sender_for(server).send(message())

    assert server.messages == []


async def test_550_recipient_is_rejected(make_server: ServerFactory) -> None:
    server = make_server()
    server.refuse_next_recipients(1)

    with pytest.raises(Rejected, match="550") as caught:
        await sender_for(server).send(message())

    assert "maria.lopez@example.org" in caught.value.message
    assert server.messages == []


async def test_message_refused_with_554_is_rejected(make_server: ServerFactory) -> None:
    server = make_server()
    server.defer_next_messages(1, reply="554 5.7.1 Message rejected as spam")

    with pytest.raises(Rejected, match="554"):
        await sender_for(server).send(message())


async def test_server_not_listening_is_unavailable() -> None:
    sender = SmtpEmailSender(host=HOST, port=free_port(), starttls=False, from_address=FROM)

    with pytest.raises(Unavailable):
        await sender.send(message())


async def test_server_that_never_answers_is_unavailable_after_the_timeout() -> None:
    # Connections complete into the listen backlog, but nothing ever greets them.
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen()
        sender = SmtpEmailSender(
            host=HOST,
            port=silent.getsockname()[1],
            starttls=False,
            from_address=FROM,
            timeout_seconds=0.2,
        )

        with pytest.raises(Unavailable, match="timeout"):
            await sender.send(message())


async def test_header_injection_is_rejected_and_nothing_sent(make_server: ServerFactory) -> None:
    server = make_server()

    with pytest.raises(Rejected):
        await sender_for(server).send(message(to="maria@example.org\r\nBcc: all@example.org"))

    assert server.transactions == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"username": USERNAME, "password": PASSWORD, "starttls": False}, "in clear"),
        ({"username": USERNAME}, "go together"),
        ({"from_address": "no address here"}, "no email address"),
        ({"port": 0}, "port"),
        ({"timeout_seconds": 0}, "timeout"),
    ],
    ids=["credentials-in-clear", "username-without-password", "bad-from", "port", "timeout"],
)
def test_settings_that_cannot_work_are_refused(options: dict[str, Any], error: str) -> None:
    values: dict[str, Any] = {"host": HOST, "from_address": FROM}
    values.update(options)

    with pytest.raises(ValueError, match=error):
        SmtpEmailSender(**values)
