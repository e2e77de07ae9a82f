"""Development adapters: synthetic answers, files in the outbox folder, and what they log."""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage as MimeMessage
from pathlib import Path
from typing import Any

import pytest

from jobsvc.adapters.dev import (
    DevApplicationService,
    DevCrm,
    DevEmailSender,
    DevListingService,
    DevOutbox,
    DevSmsSender,
    DevSyndicationPlatform,
    announce_platforms,
)
from jobsvc.payloads import Platform
from jobsvc.ports import (
    ApplicationStatus,
    Contact,
    EmailMessage,
    Listing,
    PlatformListing,
    Rejected,
    SmsMessage,
    Unavailable,
)

ODD_IDS = ["../../escape", "a/b", "..", ".", "/etc/passwd", "a\\b", "x\x00y", "", "é 1", "a" * 300]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="jobsvc.adapters")
    return caplog


@pytest.fixture
def outbox(tmp_path: Path) -> DevOutbox:
    return DevOutbox(tmp_path / "outbox")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


def read(path: Path | str | None) -> bytes:
    assert path is not None
    return Path(path).read_bytes()


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def listing(listing_id: str = "L1") -> Listing:
    document = {"id": listing_id, "headline": "Sunny 2BR", "amenities": ["dishwasher"]}
    return Listing(
        id=listing_id,
        title="Sunny 2BR",
        address="5 Main St",
        rent=2500,
        bedrooms=2,
        bathrooms=1.5,
        document=document,
    )


def email_message(**overrides: Any) -> EmailMessage:
    fields: dict[str, Any] = {
        "to": "ann@applicants.example",
        "subject": "Your application: 2 documents missing",
        "text": "Hello Ann,\nplease upload your documents.\n",
        "html": "<p>Hello Ann,</p><p>please upload your <b>documents</b>.</p>",
        "message_id": "<job-1.email@jobsvc.example>",
    }
    return EmailMessage(**{**fields, **overrides})


# The outbox


async def test_outbox_folder_is_created_on_first_write(tmp_path: Path) -> None:
    outbox = DevOutbox(tmp_path / "deep" / "outbox")
    DevCrm(outbox)
    assert not (tmp_path / "deep").exists()

    await DevCrm(outbox).record_matches(agent_id="AG1", listing_id="L1", contact_ids=["c1"])

    assert files(tmp_path / "deep" / "outbox") == [
        tmp_path / "deep" / "outbox" / "crm" / "AG1" / "L1.json"
    ]


async def test_write_leaves_no_temporary_files_and_logs_each_file(
    outbox: DevOutbox, logs: pytest.LogCaptureFixture
) -> None:
    sms = DevSmsSender(outbox)
    platform = DevSyndicationPlatform(Platform.ZILLOW, outbox)
    first = await sms.send(SmsMessage(to="+15551234567", text="hi", idempotency_key="k1"))
    await platform.publish(listing(), idempotency_key="job-1:zillow")
    await platform.publish(listing(), idempotency_key="job-1:zillow")

    written = records(logs, "dev_written")
    assert [r.levelno for r in written] == [logging.INFO] * 3
    assert [r.__dict__["path"] for r in written] == [
        first.written_to,
        str(outbox.folder / "syndication" / "zillow" / "L1.json"),
        str(outbox.folder / "syndication" / "zillow" / "L1.json"),
    ]
    assert files(outbox.folder) == sorted(
        [Path(str(first.written_to)), outbox.folder / "syndication" / "zillow" / "L1.json"]
    )


async def test_a_failed_write_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "outbox").write_text("a file where the folder should be")
    sms = DevSmsSender(DevOutbox(tmp_path / "outbox"))

    with pytest.raises(Unavailable, match="cannot write"):
        await sms.send(SmsMessage(to="+15551234567", text="hi", idempotency_key="k1"))


# Construction warnings


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (DevListingService, "JOBSVC_LISTING_SERVICE_URL"),
        (DevApplicationService, "JOBSVC_APPLICATION_SERVICE_URL"),
        (DevCrm, "JOBSVC_CRM_URL"),
        (lambda o: DevSyndicationPlatform(Platform.ZILLOW, o), "JOBSVC_PLATFORM_ZILLOW_URL"),
        (
            lambda o: DevSyndicationPlatform(Platform.STREETEASY, o),
            "JOBSVC_PLATFORM_STREETEASY_URL",
        ),
        (lambda o: DevEmailSender(o, from_address="jobs@x.example"), "JOBSVC_SMTP_HOST"),
        (DevSmsSender, "JOBSVC_SMS_GATEWAY_URL"),
    ],
)
def test_each_adapter_warns_once_naming_its_setting_and_folder(
    outbox: DevOutbox,
    logs: pytest.LogCaptureFixture,
    make: Callable[[DevOutbox], object],
    setting: str,
) -> None:
    make(outbox)

    assert [r.levelno for r in logs.records] == [logging.WARNING]
    (record,) = records(logs, "dev_adapter")
    assert record.name == "jobsvc.adapters"
    assert setting in record.getMessage()
    assert str(outbox.folder) in record.getMessage()
    assert record.__dict__["setting"] == setting
    assert not outbox.folder.exists()  # warning, not writing


# Listing service


async def test_listing_service_answers_a_synthetic_listing_for_any_id(outbox: DevOutbox) -> None:
    got = await DevListingService(outbox).get_listing("L-42")

    assert (got.id, got.title, got.address) == (
        "L-42",
        "Development listing L-42",
        "1 Example Street, Springfield",
    )
    assert (got.rent, got.bedrooms, got.bathrooms, got.photos) == (2000, 2, 1.0, ())
    assert "development" in got.description.lower()
    assert "no listing service is configured" in got.description
    assert json.loads(json.dumps(got.document)) == {
        "id": "L-42",
        "title": "Development listing L-42",
        "address": "1 Example Street, Springfield",
        "rent": 2000,
        "bedrooms": 2,
        "bathrooms": 1.0,
        "description": got.description,
        "photos": [],
    }
    assert not outbox.folder.exists()


# Application service


async def test_application_service_answers_an_active_applicant_missing_documents(
    outbox: DevOutbox,
) -> None:
    got = await DevApplicationService(outbox).get_applicant("A1")

    assert got.id == "A1"
    assert got.name == "Applicant A1"
    assert got.email == "A1@applicants.example"
    assert got.phone is None
    assert got.listing_address == "1 Example Street, Springfield"
    assert got.status is ApplicationStatus.ACTIVE
    assert got.documents_complete is False
    assert got.missing_documents == ("proof_of_income", "photo_id")
    assert got.expires_at is None
    assert not got.is_expired(datetime.now(UTC) + timedelta(days=365))


@pytest.mark.parametrize("applicant_id", ["a b@c/..", "../..", "<>", "\n"])
async def test_applicant_email_is_a_plain_address_whatever_the_id(
    outbox: DevOutbox, applicant_id: str
) -> None:
    got = await DevApplicationService(outbox).get_applicant(applicant_id)

    assert got.name == f"Applicant {applicant_id}"
    assert got.email is not None
    assert email.utils.parseaddr(got.email)[1] == got.email
    local, domain = got.email.split("@")
    assert domain == "applicants.example"
    assert local
    assert local.replace("-", "").replace("_", "").isalnum()


# CRM


async def test_crm_finds_two_deterministic_contacts_per_agent(outbox: DevOutbox) -> None:
    crm = DevCrm(outbox)

    first = await crm.find_matches(agent_id="AG1", listing=listing("L1"))
    again = await crm.find_matches(agent_id="AG1", listing=listing("L2"))
    other = await crm.find_matches(agent_id="AG2", listing=listing("L1"))

    assert first == again
    assert [c.id for c in first] == ["AG1-contact-1", "AG1-contact-2"]
    assert [c.score for c in first] == [0.9, 0.7]
    assert all(c.name and c.email and c.email.endswith(".example") for c in first)
    assert len({c.email for c in first}) == 2
    assert [c.id for c in other] == ["AG2-contact-1", "AG2-contact-2"]
    assert not outbox.folder.exists()


async def test_crm_records_matches_in_one_file_per_agent_and_listing(outbox: DevOutbox) -> None:
    crm = DevCrm(outbox)
    contacts: list[Contact] = await crm.find_matches(agent_id="AG1", listing=listing())
    ids = [c.id for c in contacts]

    await crm.record_matches(agent_id="AG1", listing_id="L1", contact_ids=ids)
    path = outbox.folder / "crm" / "AG1" / "L1.json"
    content = read(path)
    await crm.record_matches(agent_id="AG1", listing_id="L1", contact_ids=ids)

    assert files(outbox.folder) == [path]
    assert read(path) == content
    assert json.loads(content) == {
        "agentId": "AG1",
        "listingId": "L1",
        "contactIds": ["AG1-contact-1", "AG1-contact-2"],
    }

    await crm.record_matches(agent_id="AG1", listing_id="L1", contact_ids=["AG1-contact-2"])
    assert json.loads(read(path))["contactIds"] == ["AG1-contact-2"]  # replaced
    assert files(outbox.folder) == [path]


async def test_crm_odd_agent_and_listing_ids_stay_inside_the_folder(outbox: DevOutbox) -> None:
    crm = DevCrm(outbox)
    for odd in ODD_IDS:
        await crm.record_matches(agent_id=odd, listing_id=odd, contact_ids=["c"])

    written = files(outbox.folder)
    assert len(written) == len(ODD_IDS)  # no two ids share a file
    for path in written:
        assert inside(path, outbox.folder / "crm")
        assert len(path.relative_to(outbox.folder).parts) == 3  # crm/<agent>/<listing>.json
        assert json.loads(read(path))["agentId"] in ODD_IDS


# Syndication


async def test_publish_writes_the_document_and_answers_a_stable_id(outbox: DevOutbox) -> None:
    zillow = DevSyndicationPlatform(Platform.ZILLOW, outbox)
    assert zillow.platform is Platform.ZILLOW

    got = await zillow.publish(listing("L1"), idempotency_key="job-7:zillow")

    path = outbox.folder / "syndication" / "zillow" / "L1.json"
    assert got == PlatformListing(
        platform=Platform.ZILLOW, listing_id="dev-zillow-L1", url=path.as_uri()
    )
    assert files(outbox.folder) == [path]
    assert json.loads(read(path)) == {
        "platform": "zillow",
        "idempotencyKey": "job-7:zillow",
        "listing": {"id": "L1", "headline": "Sunny 2BR", "amenities": ["dishwasher"]},
    }


async def test_publishing_again_overwrites_the_same_file_with_the_same_id(
    outbox: DevOutbox,
) -> None:
    zillow = DevSyndicationPlatform(Platform.ZILLOW, outbox)
    craigslist = DevSyndicationPlatform(Platform.CRAIGSLIST, outbox)

    first = await zillow.publish(listing("L1"), idempotency_key="job-7:zillow")
    content = read(outbox.folder / "syndication" / "zillow" / "L1.json")
    second = await zillow.publish(listing("L1"), idempotency_key="job-7:zillow")
    elsewhere = await craigslist.publish(listing("L1"), idempotency_key="job-7:craigslist")

    assert first == second
    assert elsewhere.listing_id == "dev-craigslist-L1"
    assert read(outbox.folder / "syndication" / "zillow" / "L1.json") == content
    assert [p.relative_to(outbox.folder).as_posix() for p in files(outbox.folder)] == [
        "syndication/craigslist/L1.json",
        "syndication/zillow/L1.json",
    ]


async def test_publish_without_a_document_writes_the_listing_fields(outbox: DevOutbox) -> None:
    bare = Listing(id="L9", title="T", address="A", rent=1, bedrooms=0, bathrooms=1.0)

    await DevSyndicationPlatform(Platform.FACEBOOK, outbox).publish(bare, idempotency_key="k")

    written = json.loads(read(outbox.folder / "syndication" / "facebook" / "L9.json"))
    assert written["listing"]["id"] == "L9"
    assert written["listing"]["title"] == "T"
    assert written["listing"]["photos"] == []


async def test_odd_listing_ids_cannot_escape_the_platform_folder(outbox: DevOutbox) -> None:
    zillow = DevSyndicationPlatform(Platform.ZILLOW, outbox)
    answers = [await zillow.publish(listing(odd), idempotency_key="k") for odd in ODD_IDS]

    written = files(outbox.folder)
    assert len(written) == len(ODD_IDS)
    for path in written:
        assert inside(path, outbox.folder / "syndication" / "zillow")
        assert path.parent == outbox.folder / "syndication" / "zillow"
        assert not path.name.startswith(".")
        assert len(path.name.encode()) < 255
    assert [a.listing_id for a in answers] == [f"dev-zillow-{odd}" for odd in ODD_IDS]
    again = await zillow.publish(listing("../../escape"), idempotency_key="k")
    assert len(files(outbox.folder)) == len(ODD_IDS)  # the same odd id maps to the same file
    assert again == answers[0]


# Email


async def test_email_is_written_as_a_complete_rfc5322_message(outbox: DevOutbox) -> None:
    sender = DevEmailSender(outbox, from_address="Rentals <jobs@rentals.example>")
    message = email_message()
    before = datetime.now(UTC).replace(microsecond=0)

    sent = await sender.send(message)

    assert sent.id == "<job-1.email@jobsvc.example>"
    assert sent.written_to is not None
    path = Path(sent.written_to)
    assert files(outbox.folder) == [path]
    assert path.parent == outbox.folder / "email"
    assert path.suffix == ".eml"
    raw = read(path)
    assert b"\r\n" in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, MimeMessage)
    assert parsed["From"] == "Rentals <jobs@rentals.example>"
    assert parsed["To"] == "ann@applicants.example"
    assert parsed["Subject"] == "Your application: 2 documents missing"
    assert parsed["Message-ID"] == "<job-1.email@jobsvc.example>"
    date = email.utils.parsedate_to_datetime(parsed["Date"])
    assert before <= date <= datetime.now(UTC)
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert text.get_content().replace("\r\n", "\n") == message.text
    assert html.get_content().strip() == message.html


async def test_email_without_html_is_plain_text(outbox: DevOutbox) -> None:
    sender = DevEmailSender(outbox, from_address="jobs@rentals.example")

    sent = await sender.send(email_message(html=None, text="Grüße, Ann\n"))

    parsed = email.message_from_bytes(read(sent.written_to), policy=email.policy.default)
    assert isinstance(parsed, MimeMessage)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n") == "Grüße, Ann\n"


async def test_each_email_sent_is_its_own_file(outbox: DevOutbox) -> None:
    sender = DevEmailSender(outbox, from_address="jobs@rentals.example")

    first = await sender.send(email_message(message_id="<a@jobsvc.example>"))
    second = await sender.send(email_message(message_id="<b@jobsvc.example>"))

    assert first.written_to != second.written_to
    assert len(files(outbox.folder / "email")) == 2


@pytest.mark.parametrize(
    "overrides",
    [{"to": "ann@x.example\nBcc: all@x.example"}, {"subject": "Hi\r\nBcc: all@x.example"}],
)
async def test_email_with_a_line_break_in_a_header_is_rejected_and_not_written(
    outbox: DevOutbox, overrides: dict[str, str]
) -> None:
    sender = DevEmailSender(outbox, from_address="jobs@rentals.example")

    with pytest.raises(Rejected):
        await sender.send(email_message(**overrides))
    assert not outbox.folder.exists()


# SMS


async def test_sms_is_written_as_json_with_an_id_from_its_key(outbox: DevOutbox) -> None:
    sender = DevSmsSender(outbox)
    message = SmsMessage(to="+15551234567", text="Upload your ID", idempotency_key="job-1:sms")

    first = await sender.send(message)
    second = await sender.send(message)
    other = await sender.send(
        SmsMessage(to="+15551234567", text="Upload your ID", idempotency_key="job-2:sms")
    )

    assert first.id == second.id
    assert first.id.startswith("dev-sms-")
    assert other.id != first.id
    assert first.written_to is not None
    path = Path(first.written_to)
    assert path.parent == outbox.folder / "sms"
    assert path.suffix == ".json"
    assert json.loads(read(path)) == {
        "to": "+15551234567",
        "text": "Upload your ID",
        "idempotencyKey": "job-1:sms",
    }
    assert len(files(outbox.folder / "sms")) == 3


def test_platforms_can_share_one_start_up_warning(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    outbox = DevOutbox(tmp_path)
    for platform in (Platform.ZILLOW, Platform.TRULIA):
        DevSyndicationPlatform(platform, outbox, announce=False)
    assert records(logs, "dev_adapter") == []
    announce_platforms([Platform.ZILLOW, Platform.TRULIA], outbox)
    [warning] = records(logs, "dev_adapter")
    assert "platforms zillow, trulia" in warning.getMessage()
    assert warning.setting == "JOBSVC_PLATFORM_<NAME>_URL"  # type: ignore[attr-defined]
    announce_platforms([], outbox)
    assert len(records(logs, "dev_adapter")) == 1
