"""Development adapters: the ports implemented without any other system, for when nothing is
configured (like Django's console email backend).

Reads answer with synthetic data; writes go to files in one folder (the *outbox*), one
subfolder per kind, so a developer can see what would have been sent:

- ``syndication/<platform>/<listing id>.json``: a listing as published to a platform;
- ``email/<time>-<hash>.eml``: an email, the whole RFC 5322 message;
- ``sms/<time>-<hash>.json``: a text message;
- ``crm/<agent id>/<listing id>.json``: the CRM matches recorded for a listing.

Every adapter logs a WARNING when it is made (naming the setting that configures the real
system) and an INFO for each file it writes. Nothing here ever fails for lack of data: any id
is a listing, an applicant or an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.errors
import email.policy
import email.utils
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage as MimeMessage
from pathlib import Path
from typing import Any

from jobsvc.payloads import Platform
from jobsvc.ports.applications import Applicant, ApplicationStatus
from jobsvc.ports.crm import Contact
from jobsvc.ports.errors import Rejected, Unavailable
from jobsvc.ports.listings import Listing
from jobsvc.ports.messaging import EmailMessage, SentMessage, SmsMessage
from jobsvc.ports.syndication import PlatformListing

log = logging.getLogger("jobsvc.adapters")

DEV_ADDRESS = "1 Example Street, Springfield"
DEV_MISSING_DOCUMENTS = ("proof_of_income", "photo_id")
MAX_NAME_LENGTH = 80  # characters of an id kept in a file name, before the hash
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_UNSAFE_IN_MAILBOX = re.compile(r"[^A-Za-z0-9_-]+")


def _short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _safe_name(value: str) -> str:
    """``value`` as one path component: letters, digits, ``_``, ``-`` and ``.``, never starting
    with a dot (so never ``..`` or hidden). Altered or clipped values get a hash of the original
    appended, so ``a/b`` and ``a_b`` stay distinct files and each id always maps to the same
    file."""
    safe = _UNSAFE.sub("_", value)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == value and 0 < len(safe) <= MAX_NAME_LENGTH:
        return safe
    return f"{safe[:MAX_NAME_LENGTH]}-{_short_hash(value)}"


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, default=_json_default) + "\n").encode()


def _write_atomically(path: Path, content: bytes) -> None:
    # A temporary file in the same folder, then a rename: readers see the old file or the new
    # one, never half of either.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class DevOutbox:
    """The folder development adapters write to, created on the first write.

    Each file is written atomically on a worker thread, so the event loop never waits for the
    disk. Every path component derived from an id is made safe (see ``write``): nothing an id
    holds can place a file outside the folder. A failed write raises ``Unavailable``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).absolute()

    async def write(
        self, content: bytes, *, folders: Sequence[str], stem: str, suffix: str
    ) -> Path:
        """Write ``content`` to ``<folder>/<folders…>/<stem><suffix>``, replacing any file there.

        ``folders`` and ``stem`` may be anything (ids included): each becomes a safe, readable
        name (``L1`` stays ``L1``; ``../x`` becomes ``_._x-<hash>``). ``suffix`` is the
        adapter's own (``.json``). Returns the file's path."""
        path = self.folder.joinpath(*(_safe_name(part) for part in folders))
        path /= _safe_name(stem) + suffix
        try:
            await asyncio.to_thread(_write_atomically, path, content)
        except OSError as exc:
            raise Unavailable(f"cannot write {path}: {exc}") from exc
        log.info("wrote %s", path, extra={"action": "dev_written", "path": str(path)})
        return path

    async def write_json(
        self, document: Mapping[str, Any], *, folders: Sequence[str], stem: str
    ) -> Path:
        """``write`` of ``document`` as indented JSON, to ``<stem>.json``."""
        return await self.write(_json_bytes(document), folders=folders, stem=stem, suffix=".json")


def _announce(what: str, setting: str, outbox: DevOutbox) -> None:
    log.warning(
        "%s: not configured (set %s); using the development adapter, output goes to %s",
        what,
        setting,
        outbox.folder,
        extra={"action": "dev_adapter", "setting": setting, "folder": str(outbox.folder)},
    )


class DevListingService:
    """``ListingService`` that knows every listing id: each gets the same synthetic listing,
    titled with its id. Writes nothing."""

    def __init__(self, outbox: DevOutbox) -> None:
        self.outbox = outbox
        _announce("listing service", "JOBSVC_LISTING_SERVICE_URL", outbox)

    async def get_listing(self, listing_id: str) -> Listing:
        """A synthetic listing for any id; its ``document`` holds the same fields as JSON."""
        fields: dict[str, Any] = {
            "id": listing_id,
            "title": f"Development listing {listing_id}",
            "address": DEV_ADDRESS,
            "rent": 2000,
            "bedrooms": 2,
            "bathrooms": 1.0,
            "description": (
                "Development data: no listing service is configured "
                "(JOBSVC_LISTING_SERVICE_URL), so this listing is made up."
            ),
        }
        return Listing(**fields, photos=(), document={**fields, "photos": []})


class DevApplicationService:
    """``ApplicationService`` that knows every applicant id: each is an active applicant still
    missing ``proof_of_income`` and ``photo_id``, with an email address and no phone. Writes
    nothing."""

    def __init__(self, outbox: DevOutbox) -> None:
        self.outbox = outbox
        _announce("application service", "JOBSVC_APPLICATION_SERVICE_URL", outbox)

    async def get_applicant(self, applicant_id: str) -> Applicant:
        """A synthetic, active applicant for any id."""
        mailbox = _UNSAFE_IN_MAILBOX.sub("-", applicant_id).strip("-")[:64] or "applicant"
        return Applicant(
            id=applicant_id,
            name=f"Applicant {applicant_id}",
            email=f"{mailbox}@applicants.example",
            phone=None,
            listing_address=DEV_ADDRESS,
            status=ApplicationStatus.ACTIVE,
            documents_complete=False,
            expires_at=None,
            missing_documents=DEV_MISSING_DOCUMENTS,
        )


class DevCrm:
    """``Crm`` where every agent has two contacts matching every listing; recorded matches go
    to ``crm/<agent id>/<listing id>.json`` (recording the same matches again rewrites the
    same file with the same content)."""

    def __init__(self, outbox: DevOutbox) -> None:
        self.outbox = outbox
        _announce("CRM", "JOBSVC_CRM_URL", outbox)

    async def find_matches(self, *, agent_id: str, listing: Listing) -> list[Contact]:
        """Two contacts derived from ``agent_id``, best first (scores 0.9 and 0.7)."""
        mailbox = _UNSAFE_IN_MAILBOX.sub("-", agent_id).strip("-")[:48] or "agent"
        return [
            Contact(
                id=f"{agent_id}-contact-{n}",
                name=f"Contact {n} of agent {agent_id}",
                email=f"{mailbox}-contact-{n}@contacts.example",
                score=score,
            )
            for n, score in ((1, 0.9), (2, 0.7))
        ]

    async def record_matches(
        self, *, agent_id: str, listing_id: str, contact_ids: Sequence[str]
    ) -> None:
        """Write the matches; ``Unavailable`` if the file cannot be written."""
        document = {"agentId": agent_id, "listingId": listing_id, "contactIds": list(contact_ids)}
        await self.outbox.write_json(document, folders=("crm", agent_id), stem=listing_id)


class DevSyndicationPlatform:
    """``SyndicationPlatform`` that publishes to ``syndication/<platform>/<listing id>.json``:
    the listing's document with the platform and the idempotency key. Publishing again
    rewrites that file and answers the same platform listing id, ``dev-<platform>-<id>``, with
    the file's ``file://`` URL as the listing's page.
    ``announce`` False leaves the start-up warning to the caller (one for all platforms)."""

    def __init__(self, platform: Platform, outbox: DevOutbox, *, announce: bool = True) -> None:
        self.platform = platform
        self.outbox = outbox
        if announce:
            _announce(
                f"platform {platform.value}",
                f"JOBSVC_PLATFORM_{platform.value.upper()}_URL",
                outbox,
            )

    async def publish(self, listing: Listing, *, idempotency_key: str) -> PlatformListing:
        """Write the listing; ``Unavailable`` if the file cannot be written."""
        document = {
            "platform": self.platform.value,
            "idempotencyKey": idempotency_key,
            "listing": listing.document or _listing_fields(listing),
        }
        path = await self.outbox.write_json(
            document, folders=("syndication", self.platform.value), stem=listing.id
        )
        # The "page" of a listing that was written instead of published: its file.
        return PlatformListing(
            platform=self.platform,
            listing_id=f"dev-{self.platform.value}-{listing.id}",
            url=path.as_uri(),
        )


def _listing_fields(listing: Listing) -> dict[str, Any]:
    return {
        "id": listing.id,
        "title": listing.title,
        "address": listing.address,
        "rent": listing.rent,
        "bedrooms": listing.bedrooms,
        "bathrooms": listing.bathrooms,
        "description": listing.description,
        "photos": list(listing.photos),
    }


def announce_platforms(platforms: Sequence[Platform], outbox: DevOutbox) -> None:
    """One start-up warning for every platform played by ``DevSyndicationPlatform``."""
    if platforms:
        names = ", ".join(p.value for p in platforms)
        _announce(f"platforms {names}", "JOBSVC_PLATFORM_<NAME>_URL", outbox)


class DevEmailSender:
    """``EmailSender`` that writes each message, as the mail server would have received it
    (RFC 5322, CRLF line ends), to ``email/<UTC time>-<hash of the Message-ID>.eml``; any mail
    client opens it. ``Rejected`` for a message that cannot be expressed (a line break in a
    header), ``Unavailable`` if the file cannot be written."""

    def __init__(self, outbox: DevOutbox, *, from_address: str) -> None:
        self.outbox = outbox
        self.from_address = from_address
        _announce("email (SMTP)", "JOBSVC_SMTP_HOST", outbox)

    async def send(self, message: EmailMessage) -> SentMessage:
        """Write the message; ``SentMessage.id`` is its Message-ID."""
        now = datetime.now(UTC)
        try:
            content = self._render(message, now)
        except (ValueError, TypeError, email.errors.MessageError) as exc:
            raise Rejected(f"email to {message.to!r} cannot be written: {exc}") from exc
        path = await self.outbox.write(
            content,
            folders=("email",),
            stem=f"{_timestamp(now)}-{_short_hash(message.message_id)}",
            suffix=".eml",
        )
        return SentMessage(id=message.message_id, written_to=str(path))

    def _render(self, message: EmailMessage, now: datetime) -> bytes:
        mime = MimeMessage(policy=email.policy.SMTP)
        mime["From"] = self.from_address
        mime["To"] = message.to
        mime["Subject"] = message.subject
        mime["Date"] = email.utils.format_datetime(now)
        mime["Message-ID"] = message.message_id
        mime.set_content(message.text)
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html")
        return mime.as_bytes()


class DevSmsSender:
    """``SmsSender`` that writes each message as ``{"to", "text", "idempotencyKey"}`` to
    ``sms/<UTC time>-<hash of the key>.json``. The id it answers, ``dev-sms-<hash of the key>``,
    is the same for every send with one key. ``Unavailable`` if the file cannot be written."""

    def __init__(self, outbox: DevOutbox) -> None:
        self.outbox = outbox
        _announce("SMS gateway", "JOBSVC_SMS_GATEWAY_URL", outbox)

    async def send(self, message: SmsMessage) -> SentMessage:
        """Write the message."""
        key_hash = _short_hash(message.idempotency_key)
        document = {
            "to": message.to,
            "text": message.text,
            "idempotencyKey": message.idempotency_key,
        }
        path = await self.outbox.write_json(
            document, folders=("sms",), stem=f"{_timestamp(datetime.now(UTC))}-{key_hash}"
        )
        return SentMessage(id=f"dev-sms-{key_hash}", written_to=str(path))
