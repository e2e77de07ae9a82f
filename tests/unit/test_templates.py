"""The notification templates shipped in the package: what each renders, what each needs, and
what ``check`` reports for data that does not fit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobsvc.errors import FieldViolation
from jobsvc.payloads import NotificationType
from jobsvc.templates import (
    RenderError,
    TemplateCatalog,
    UnknownTemplate,
    default_catalog,
)

RECIPIENT = {"name": "Maria Lopez", "email": "maria.lopez@example.org", "phone": "+15551234567"}
ADDRESS = "221 Elm Street, Apt 4B, Springfield, IL 62704"

COMPLETE: dict[str, dict[str, Any]] = {
    "adverse_action_notice": {
        "listing_address": ADDRESS,
        "decision_date": "2025-03-14",
        "reasons": [
            "Income below three times the monthly rent",
            "Eviction filing within the last seven years",
        ],
        "agency_name": "TransUnion Rental Screening Solutions",
        "agency_address": "P.O. Box 800, Woodlyn, PA 19094",
        "agency_phone": "1-866-775-0961",
    },
    "document_reminder": {
        "step": "day3",
        "missing_documents": ["Last two pay stubs", "Government-issued photo ID"],
        "listing_address": ADDRESS,
        "expires_at": "2025-03-21T23:59:00+00:00",
        "upload_url": "https://apply.example.com/applications/app-4217/documents",
    },
    "application_received": {"listing_address": ADDRESS, "application_id": "APP-2025-004217"},
    "viewing_confirmation": {
        "listing_address": ADDRESS,
        "viewing_time": "2025-03-15T10:30:00-05:00",
    },
}

TYPES = {
    "adverse_action_notice": NotificationType.ADVERSE_ACTION,
    "document_reminder": NotificationType.REMINDER,
    "application_received": NotificationType.CONFIRMATION,
    "viewing_confirmation": NotificationType.CONFIRMATION,
}

REQUIRED = {
    "adverse_action_notice": {
        "listing_address",
        "decision_date",
        "reasons",
        "agency_name",
        "agency_address",
        "agency_phone",
    },
    "document_reminder": {"step", "missing_documents", "listing_address"},
    "application_received": {"listing_address", "application_id"},
    "viewing_confirmation": {"listing_address", "viewing_time"},
}

TEMPLATE_IDS = sorted(COMPLETE)


@pytest.fixture(scope="module")
def catalog() -> TemplateCatalog:
    return default_catalog()


def data_path(name: str) -> str:
    return f"send_notification.template_data.{name}"


def test_catalog_holds_the_four_templates(catalog: TemplateCatalog) -> None:
    assert catalog.ids() == TEMPLATE_IDS
    assert catalog.get("no_such_template") is None


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_template_definition(catalog: TemplateCatalog, template_id: str) -> None:
    template = catalog.get(template_id)

    assert template is not None
    assert template.type is TYPES[template_id]
    assert template.required_fields == REQUIRED[template_id]
    assert template.has_sms
    assert len(template.description) > 40


def test_reminder_optional_fields(catalog: TemplateCatalog) -> None:
    template = catalog.get("document_reminder")

    assert template is not None
    assert template.optional_fields == {"expires_at", "upload_url"}


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_complete_data_renders_every_part(catalog: TemplateCatalog, template_id: str) -> None:
    assert catalog.check(template_id, TYPES[template_id], COMPLETE[template_id]) == []

    rendered = catalog.render(template_id, COMPLETE[template_id], recipient=RECIPIENT)

    assert ADDRESS in rendered.subject
    assert "\n" not in rendered.subject
    for body in (rendered.text, rendered.html):
        assert "Maria Lopez" in body
        assert ADDRESS in body
        assert "{{" not in body
        assert "{%" not in body
        assert "None" not in body
    assert rendered.text.endswith("The leasing team\n")
    assert "\n\n\n" not in rendered.text
    assert rendered.html.startswith("<!DOCTYPE html>")


def test_adverse_action_notice_content(catalog: TemplateCatalog) -> None:
    rendered = catalog.render(
        "adverse_action_notice", COMPLETE["adverse_action_notice"], recipient=RECIPIENT
    )

    assert rendered.subject.startswith("Notice of adverse action")
    text = rendered.text
    assert text.startswith("Dear Maria Lopez,\n")
    assert "on March 14, 2025 we decided not to approve your rental application" in text
    assert "  - Income below three times the monthly rent\n" in text
    assert "  - Eviction filing within the last seven years\n" in text
    assert (
        "  TransUnion Rental Screening Solutions\n"
        "  P.O. Box 800, Woodlyn, PA 19094\n"
        "  1-866-775-0961\n"
    ) in text
    assert "did not make this decision and is unable to explain to you why" in text
    assert "free copy of your consumer report" in text
    assert "within 60 days" in text
    assert "accuracy or completeness" in text
    html = rendered.html
    assert "<li>Income below three times the monthly rent</li>" in html
    assert "<strong>TransUnion Rental Screening Solutions</strong>" in html
    assert "within 60 days" in html


def test_adverse_action_notice_without_reasons_leaves_the_list_out(
    catalog: TemplateCatalog,
) -> None:
    data = {**COMPLETE["adverse_action_notice"], "reasons": []}

    rendered = catalog.render("adverse_action_notice", data, recipient=RECIPIENT)

    assert "principal reasons" not in rendered.text
    assert "<ul>" in rendered.html  # the rights list remains
    assert "principal reasons" not in rendered.html
    assert "within 60 days" in rendered.text


def test_document_reminder_content(catalog: TemplateCatalog) -> None:
    rendered = catalog.render(
        "document_reminder", COMPLETE["document_reminder"], recipient=RECIPIENT
    )

    assert rendered.subject == f"Reminder: documents still needed for {ADDRESS}"
    assert "  - Last two pay stubs\n  - Government-issued photo ID\n" in rendered.text
    assert "by March 21, 2025" in rendered.text
    url = COMPLETE["document_reminder"]["upload_url"]
    assert url in rendered.text
    assert f'<a href="{url}"' in rendered.html
    assert "<li>Government-issued photo ID</li>" in rendered.html
    assert rendered.sms is not None
    assert "2 documents" in rendered.sms
    assert url in rendered.sms


@pytest.mark.parametrize(
    ("step", "subject_start", "phrase"),
    [
        ("day1", "Documents needed", "Thank you for applying"),
        ("day3", "Reminder:", "A quick reminder"),
        ("day5", "Reminder:", "A quick reminder"),
        ("day7", "Final reminder:", "last reminder"),
    ],
)
def test_document_reminder_wording_follows_the_step(
    catalog: TemplateCatalog, step: str, subject_start: str, phrase: str
) -> None:
    data = {**COMPLETE["document_reminder"], "step": step}

    rendered = catalog.render("document_reminder", data, recipient=RECIPIENT)

    assert rendered.subject.startswith(subject_start)
    assert phrase in rendered.text
    assert phrase in rendered.html


def test_document_reminder_without_optional_fields(catalog: TemplateCatalog) -> None:
    data = {
        "step": "day1",
        "missing_documents": ["Proof of renter's insurance"],
        "listing_address": ADDRESS,
    }
    assert catalog.check("document_reminder", NotificationType.REMINDER, data) == []

    rendered = catalog.render("document_reminder", data, recipient=RECIPIENT)

    for body in (rendered.text, rendered.html):
        assert "expire" not in body
        assert "signing in to your application" in body
        assert "None" not in body
    assert "<a " not in rendered.html
    assert rendered.sms == (
        f"Maria Lopez, your application for {ADDRESS} still needs Proof of renter's insurance."
    )


def test_document_reminder_with_no_document_named(catalog: TemplateCatalog) -> None:
    data = {"step": "day5", "missing_documents": [], "listing_address": ADDRESS}

    rendered = catalog.render("document_reminder", data, recipient=RECIPIENT)

    assert "documents your application needs are still missing" in rendered.text
    assert rendered.sms is not None
    assert "still needs some documents" in rendered.sms


def test_optional_fields_given_as_null_count_as_absent(catalog: TemplateCatalog) -> None:
    data = {**COMPLETE["document_reminder"], "expires_at": None, "upload_url": None}
    assert catalog.check("document_reminder", NotificationType.REMINDER, data) == []

    rendered = catalog.render("document_reminder", data, recipient=RECIPIENT)

    assert "expire" not in rendered.text
    assert "signing in" in rendered.text


def test_confirmations_content(catalog: TemplateCatalog) -> None:
    received = catalog.render(
        "application_received", COMPLETE["application_received"], recipient=RECIPIENT
    )
    viewing = catalog.render(
        "viewing_confirmation", COMPLETE["viewing_confirmation"], recipient=RECIPIENT
    )

    assert received.subject == f"We received your application for {ADDRESS}"
    assert "Your application reference is APP-2025-004217." in received.text
    assert "<strong>APP-2025-004217</strong>" in received.html
    assert viewing.subject == (
        f"Viewing confirmed: {ADDRESS}, Saturday, March 15, 2025 at 10:30 AM"
    )
    assert "confirmed for Saturday, March 15, 2025 at 10:30 AM." in viewing.text


def test_times_in_utc_say_so_and_datetimes_are_accepted(catalog: TemplateCatalog) -> None:
    data = {
        "listing_address": ADDRESS,
        "viewing_time": datetime(2025, 3, 15, 15, 5, tzinfo=UTC),
    }

    rendered = catalog.render("viewing_confirmation", data, recipient=RECIPIENT)

    assert "Saturday, March 15, 2025 at 3:05 PM UTC" in rendered.text


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_html_body_escapes_data_and_text_keeps_it(
    catalog: TemplateCatalog, template_id: str
) -> None:
    hostile = 'Unit 3 <b>"Loft"</b> & Co'
    data = {**COMPLETE[template_id], "listing_address": hostile}
    recipient = {**RECIPIENT, "name": "<script>alert(1)</script>"}

    rendered = catalog.render(template_id, data, recipient=recipient)

    assert "Unit 3 &lt;b&gt;&#34;Loft&#34;&lt;/b&gt; &amp; Co" in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<b>" not in rendered.html
    assert "<script>" not in rendered.html
    assert hostile in rendered.text
    assert "<script>alert(1)</script>" in rendered.text
    assert hostile in rendered.subject
    assert rendered.sms is not None
    assert hostile in rendered.sms


@pytest.mark.parametrize(
    ("template_id", "changes"),
    [(template_id, {}) for template_id in TEMPLATE_IDS]
    + [("document_reminder", {"step": "day7"})],  # the longest text message
)
def test_sms_is_one_short_line(
    catalog: TemplateCatalog, template_id: str, changes: dict[str, Any]
) -> None:
    data = {**COMPLETE[template_id], **changes}

    rendered = catalog.render(template_id, data, recipient=RECIPIENT)

    assert rendered.sms is not None
    assert ADDRESS in rendered.sms
    assert "Maria Lopez" in rendered.sms
    assert "\n" not in rendered.sms
    assert len(rendered.sms) < 300


def test_adverse_action_sms_mentions_the_email_only_when_there_is_one(
    catalog: TemplateCatalog,
) -> None:
    data = COMPLETE["adverse_action_notice"]

    with_email = catalog.render("adverse_action_notice", data, recipient=RECIPIENT)
    without = catalog.render(
        "adverse_action_notice", data, recipient={"name": "Maria Lopez", "phone": "+15551234567"}
    )

    assert with_email.sms is not None
    assert without.sms is not None
    assert with_email.sms.endswith("Details by email.")
    assert "email" not in without.sms


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_a_recipient_without_a_name_is_still_greeted(
    catalog: TemplateCatalog, template_id: str
) -> None:
    rendered = catalog.render(template_id, COMPLETE[template_id], recipient={"name": ""})

    greeting = rendered.text.splitlines()[0]
    assert greeting in ("Hello there,", "Dear applicant,")
    assert rendered.sms is not None
    assert not rendered.sms.startswith(",")


def test_check_unknown_template(catalog: TemplateCatalog) -> None:
    violations = catalog.check("move_in_checklist", NotificationType.CONFIRMATION, {})

    assert [v.field for v in violations] == ["send_notification.template_id"]
    assert "move_in_checklist" in violations[0].description


def test_check_template_of_another_type(catalog: TemplateCatalog) -> None:
    violations = catalog.check(
        "adverse_action_notice", NotificationType.REMINDER, COMPLETE["adverse_action_notice"]
    )

    assert violations == [
        FieldViolation(
            "send_notification.type",
            "template adverse_action_notice is for adverse_action notifications, not reminder",
        )
    ]


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_check_names_each_missing_field(catalog: TemplateCatalog, template_id: str) -> None:
    violations = catalog.check(template_id, TYPES[template_id], {})

    assert {v.field for v in violations} == {data_path(name) for name in REQUIRED[template_id]}
    for violation in violations:
        assert violation.description == f"is required by template {template_id}"


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_check_names_the_one_missing_field(catalog: TemplateCatalog, template_id: str) -> None:
    for name in REQUIRED[template_id]:
        data = {k: v for k, v in COMPLETE[template_id].items() if k != name}

        violations = catalog.check(template_id, TYPES[template_id], data)

        assert [v.field for v in violations] == [data_path(name)]


def test_check_counts_null_as_missing(catalog: TemplateCatalog) -> None:
    data = {**COMPLETE["application_received"], "application_id": None}

    violations = catalog.check("application_received", NotificationType.CONFIRMATION, data)

    assert [v.field for v in violations] == [data_path("application_id")]


@pytest.mark.parametrize(
    ("template_id", "changes", "fields"),
    [
        ("adverse_action_notice", {"reasons": "Low income"}, ["reasons"]),
        ("adverse_action_notice", {"reasons": ["Low income", " ", 3]}, ["reasons[1]"]),
        ("adverse_action_notice", {"reasons": [{"code": "R1"}]}, ["reasons[0]"]),
        ("adverse_action_notice", {"decision_date": "last Tuesday"}, ["decision_date"]),
        ("adverse_action_notice", {"agency_name": "   "}, ["agency_name"]),
        ("adverse_action_notice", {"agency_phone": True}, ["agency_phone"]),
        ("document_reminder", {"upload_url": "javascript:alert(1)"}, ["upload_url"]),
        ("document_reminder", {"upload_url": "/documents"}, ["upload_url"]),
        ("document_reminder", {"expires_at": "soon"}, ["expires_at"]),
        ("document_reminder", {"listing_address": {"street": "Elm"}}, ["listing_address"]),
        ("viewing_confirmation", {"viewing_time": 1742052600}, ["viewing_time"]),
        ("application_received", {"recipient": {"name": "Eve"}}, ["recipient"]),
    ],
)
def test_check_refuses_values_of_the_wrong_kind(
    catalog: TemplateCatalog, template_id: str, changes: dict[str, Any], fields: list[str]
) -> None:
    data = {**COMPLETE[template_id], **changes}

    violations = catalog.check(template_id, TYPES[template_id], data)

    assert [v.field for v in violations] == [data_path(name) for name in fields]
    with pytest.raises(RenderError):
        catalog.render(template_id, data, recipient=RECIPIENT)


def test_check_accepts_numbers_as_text_and_ignores_extra_fields(
    catalog: TemplateCatalog,
) -> None:
    data = {"listing_address": ADDRESS, "application_id": 4217, "channel": "web"}

    assert catalog.check("application_received", NotificationType.CONFIRMATION, data) == []
    rendered = catalog.render("application_received", data, recipient=RECIPIENT)
    assert "Your application reference is 4217." in rendered.text


def test_render_refuses_unknown_template_and_missing_fields(catalog: TemplateCatalog) -> None:
    with pytest.raises(UnknownTemplate):
        catalog.render("move_in_checklist", {}, recipient=RECIPIENT)
    with pytest.raises(RenderError, match="application_id"):
        catalog.render("application_received", {"listing_address": ADDRESS}, recipient=RECIPIENT)


def write_template(directory: Path, template_id: str, files: dict[str, str]) -> None:
    folder = directory / template_id
    folder.mkdir()
    parts = {
        "template.toml": 'type = "confirmation"\ndescription = "A test template."\n',
        "subject.txt": "Hello {{ recipient.name }}",
        "body.txt": "Your code is {{ code }}.",
        "body.html": "<p>Your code is {{ code }}.</p>",
    }
    parts.update(files)
    for name, text in parts.items():
        if text:
            (folder / name).write_text(text)


def test_a_catalog_from_another_folder(tmp_path: Path) -> None:
    write_template(tmp_path, "one_time_code", {})
    (tmp_path / "__pycache__").mkdir()

    catalog = TemplateCatalog(tmp_path)

    template = catalog.get("one_time_code")
    assert template is not None
    assert template.required_fields == {"code"}
    assert not template.has_sms
    rendered = catalog.render("one_time_code", {"code": "<42>"}, recipient={"name": "Al"})
    assert rendered.sms is None
    assert rendered.text == "Your code is <42>.\n"
    assert rendered.html == "<p>Your code is &lt;42&gt;.</p>\n"


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"body.html": ""}, "body.html"),
        ({"body.txt": "{% if code %}unclosed"}, "body.txt"),
        ({"template.toml": 'type = "newsletter"\ndescription = "x"\n'}, "newsletter"),
        ({"template.toml": 'type = "confirmation"\n'}, "description"),
        (
            {"template.toml": 'type = "confirmation"\ndescription = "x"\noptional = ["cod"]\n'},
            "cod",
        ),
        (
            {"template.toml": 'type = "confirmation"\ndescription = "x"\n[fields]\ncode = "int"\n'},
            "int",
        ),
        ({"template.toml": 'type = "confirmation"\ndescription = "x"\nsms = true\n'}, "sms"),
    ],
    ids=["missing-part", "syntax", "type", "description", "optional", "kind", "unknown-key"],
)
def test_a_broken_template_stops_the_catalog(
    tmp_path: Path, files: dict[str, str], error: str
) -> None:
    write_template(tmp_path, "one_time_code", files)

    with pytest.raises(ValueError, match=error):
        TemplateCatalog(tmp_path)
