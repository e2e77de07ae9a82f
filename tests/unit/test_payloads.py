"""Payload types: wire form, defaults and every validation rule with its field path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from jobsvc.errors import FieldViolation, InvalidArgument
from jobsvc.jobs import JobType
from jobsvc.payloads import (
    DEFAULT_PLATFORMS,
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_MISSING_DOCS,
    MAX_PAYLOAD_BYTES,
    PAYLOAD_TYPES,
    CrmMatch,
    NotificationType,
    Payload,
    Platform,
    ReminderType,
    SendNotification,
    SendReminder,
    SyndicateListing,
    parse_payload,
)

VALID: dict[JobType, dict[str, Any]] = {
    JobType.SYNDICATE_LISTING: {"listingId": "L1", "platforms": ["zillow", "trulia"]},
    JobType.SEND_REMINDER: {
        "applicantId": "A1",
        "reminderType": "day3",
        "missingDocs": ["pay_stub", "photo_id"],
    },
    JobType.CRM_MATCH: {"listingId": "L1", "agentId": "AG1"},
    JobType.SEND_NOTIFICATION: {
        "type": "adverse_action",
        "recipientId": "R1",
        "templateId": "adverse-v2",
        "templateData": {"name": "Ann", "scores": [1, 2.5], "nested": {"ok": True, "x": None}},
    },
}

# (job type, wire key, violation path) of every id-like field.
ID_FIELDS = [
    (JobType.SYNDICATE_LISTING, "listingId", "syndicate_listing.listing_id"),
    (JobType.SEND_REMINDER, "applicantId", "send_reminder.applicant_id"),
    (JobType.CRM_MATCH, "listingId", "crm_match.listing_id"),
    (JobType.CRM_MATCH, "agentId", "crm_match.agent_id"),
    (JobType.SEND_NOTIFICATION, "recipientId", "send_notification.recipient_id"),
    (JobType.SEND_NOTIFICATION, "templateId", "send_notification.template_id"),
]


def violations(job_type: JobType, data: Any) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as info:
        parse_payload(job_type, data)
    assert info.value.reason == "INVALID_ARGUMENT"
    return info.value.violations


def paths(job_type: JobType, data: Any) -> list[str]:
    return [v.field for v in violations(job_type, data)]


def test_every_job_type_has_a_payload_type_named_like_its_proto_field() -> None:
    assert set(PAYLOAD_TYPES) == set(JobType)
    for job_type, cls in PAYLOAD_TYPES.items():
        assert cls.job_type is job_type
        assert cls.field_name == job_type.value.replace("-", "_")


@pytest.mark.parametrize("job_type", list(JobType))
def test_camel_case_round_trip(job_type: JobType) -> None:
    payload = parse_payload(job_type, VALID[job_type])
    assert isinstance(payload, PAYLOAD_TYPES[job_type])
    assert payload.to_dict() == VALID[job_type]
    assert type(payload).from_dict(payload.to_dict()) == payload
    # What goes on the wire must be plain JSON, enum members included.
    assert json.loads(json.dumps(payload.to_dict())) == VALID[job_type]


def test_typed_fields_after_parsing() -> None:
    assert parse_payload(JobType.SYNDICATE_LISTING, VALID[JobType.SYNDICATE_LISTING]) == (
        SyndicateListing(listing_id="L1", platforms=(Platform.ZILLOW, Platform.TRULIA))
    )
    reminder = parse_payload(JobType.SEND_REMINDER, VALID[JobType.SEND_REMINDER])
    assert reminder == SendReminder(
        applicant_id="A1", reminder_type=ReminderType.DAY3, missing_docs=("pay_stub", "photo_id")
    )
    assert isinstance(reminder, SendReminder)
    assert reminder.reminder_type is ReminderType.DAY3
    notification = parse_payload(JobType.SEND_NOTIFICATION, VALID[JobType.SEND_NOTIFICATION])
    assert isinstance(notification, SendNotification)
    assert notification.type is NotificationType.ADVERSE_ACTION


def test_snake_case_keys_are_accepted_as_in_proto_json() -> None:
    payload = SendReminder.from_dict(
        {"applicant_id": "A1", "reminder_type": "day1", "missing_docs": ["lease"]}
    )
    assert payload.to_dict() == {
        "applicantId": "A1",
        "reminderType": "day1",
        "missingDocs": ["lease"],
    }


def test_both_spellings_of_one_field_are_rejected() -> None:
    data = {"listingId": "L1", "listing_id": "L2", "agentId": "AG1"}
    assert violations(JobType.CRM_MATCH, data) == [
        FieldViolation("crm_match.listing_id", "both listingId and listing_id given")
    ]


def test_unknown_keys_are_ignored() -> None:
    payload = CrmMatch.from_dict({"listingId": "L1", "agentId": "AG1", "addedLater": 1})
    assert payload.to_dict() == {"listingId": "L1", "agentId": "AG1"}


@pytest.mark.parametrize("platforms", [None, []])
def test_no_platforms_means_the_default_five(platforms: list[str] | None) -> None:
    payload = SyndicateListing.from_dict({"listingId": "L1", "platforms": platforms})
    assert payload.platforms == DEFAULT_PLATFORMS
    assert payload.to_dict()["platforms"] == [
        "zillow",
        "apartments",
        "craigslist",
        "facebook",
        "streeteasy",
    ]
    assert SyndicateListing(listing_id="L1").platforms == DEFAULT_PLATFORMS


def test_platforms_beyond_the_defaults_are_allowed() -> None:
    assert len(Platform) >= 6  # the ADR's "6+ external platforms"
    extra = [p.value for p in Platform if p not in DEFAULT_PLATFORMS]
    payload = SyndicateListing.from_dict({"listingId": "L1", "platforms": extra})
    assert [p.value for p in payload.platforms] == extra


def test_optional_fields_default_to_empty() -> None:
    reminder = SendReminder.from_dict({"applicantId": "A1", "reminderType": "day7"})
    assert reminder.missing_docs == ()
    assert reminder.to_dict()["missingDocs"] == []
    note = SendNotification.from_dict(
        {"type": "confirmation", "recipientId": "R1", "templateId": "T1", "templateData": None}
    )
    assert note.template_data == {}
    assert note.to_dict()["templateData"] == {}


@pytest.mark.parametrize(("job_type", "key", "path"), ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "is required"),
        ("", "is required"),
        ("   ", "must not be blank"),
        (" L1", "must not start or end with whitespace"),
        ("L\n1", "must not contain control characters"),
        ("x" * (MAX_ID_LENGTH + 1), f"must be at most {MAX_ID_LENGTH} characters, got 129"),
        (42, "must be a string"),
    ],
)
def test_id_rules(job_type: JobType, key: str, path: str, value: Any, problem: str) -> None:
    data = {**VALID[job_type], key: value}
    assert violations(job_type, data) == [FieldViolation(path, problem)]


@pytest.mark.parametrize(("job_type", "key", "path"), ID_FIELDS)
def test_missing_id_is_required_and_the_longest_id_is_fine(
    job_type: JobType, key: str, path: str
) -> None:
    data = {k: v for k, v in VALID[job_type].items() if k != key}
    assert violations(job_type, data) == [FieldViolation(path, "is required")]
    longest = "é" * MAX_ID_LENGTH  # characters, not bytes
    assert parse_payload(job_type, {**VALID[job_type], key: longest}).to_dict()[key] == longest


@pytest.mark.parametrize(
    ("job_type", "key", "path"),
    [
        (JobType.SEND_REMINDER, "reminderType", "send_reminder.reminder_type"),
        (JobType.SEND_NOTIFICATION, "type", "send_notification.type"),
    ],
)
@pytest.mark.parametrize("value", ["day2", "DAY1", "Reminder", "sms"])
def test_unknown_enum_values(job_type: JobType, key: str, path: str, value: str) -> None:
    [violation] = violations(job_type, {**VALID[job_type], key: value})
    assert violation.field == path
    assert violation.description.startswith(f"unknown value {value!r}; allowed: ")


def test_missing_enum_is_required() -> None:
    assert violations(JobType.SEND_REMINDER, {"applicantId": "A1"}) == [
        FieldViolation("send_reminder.reminder_type", "is required")
    ]


def test_bad_platforms_are_reported_by_index() -> None:
    data = {"listingId": "L1", "platforms": ["zillow", "myspace", "Zillow", 7, "zillow"]}
    found = violations(JobType.SYNDICATE_LISTING, data)
    assert [v.field for v in found] == [
        "syndicate_listing.platforms[1]",
        "syndicate_listing.platforms[2]",
        "syndicate_listing.platforms[3]",
        "syndicate_listing.platforms[4]",
    ]
    assert found[0].description.startswith("unknown value 'myspace'")
    assert found[1].description.startswith("unknown value 'Zillow'")  # wire names are exact
    assert found[2].description == "must be a string"
    assert found[3].description == "duplicate of syndicate_listing.platforms[0] (zillow)"


def test_duplicate_missing_docs_are_reported_at_the_repeat() -> None:
    data = {**VALID[JobType.SEND_REMINDER], "missingDocs": ["lease", "id", "lease", " "]}
    assert violations(JobType.SEND_REMINDER, data) == [
        FieldViolation(
            "send_reminder.missing_docs[2]", "duplicate of send_reminder.missing_docs[0] (lease)"
        ),
        FieldViolation("send_reminder.missing_docs[3]", "must not be blank"),
    ]


def test_too_many_items_is_one_violation_for_the_whole_list() -> None:
    platforms = [p.value for p in Platform] + ["zillow"]
    assert violations(JobType.SYNDICATE_LISTING, {"listingId": "L1", "platforms": platforms}) == [
        FieldViolation(
            "syndicate_listing.platforms",
            f"must have at most {len(Platform)} items, got {len(Platform) + 1}",
        )
    ]
    docs = [f"doc{i}" for i in range(MAX_MISSING_DOCS + 1)]
    data = {**VALID[JobType.SEND_REMINDER], "missingDocs": docs}
    assert violations(JobType.SEND_REMINDER, data) == [
        FieldViolation(
            "send_reminder.missing_docs",
            f"must have at most {MAX_MISSING_DOCS} items, got {MAX_MISSING_DOCS + 1}",
        )
    ]
    full = {**data, "missingDocs": docs[:-1]}
    assert len(SendReminder.from_dict(full).missing_docs) == MAX_MISSING_DOCS


@pytest.mark.parametrize(
    ("job_type", "data", "path"),
    [
        (JobType.SYNDICATE_LISTING, {"listingId": "L1", "platforms": "zillow"}, "platforms"),
        (
            JobType.SEND_REMINDER,
            {**VALID[JobType.SEND_REMINDER], "missingDocs": {}},
            "missing_docs",
        ),
    ],
)
def test_lists_must_be_lists(job_type: JobType, data: dict[str, Any], path: str) -> None:
    root = PAYLOAD_TYPES[job_type].field_name
    assert violations(job_type, data) == [FieldViolation(f"{root}.{path}", "must be a list")]


@pytest.mark.parametrize("job_type", list(JobType))
@pytest.mark.parametrize("data", [["listingId", "L1"], "L1", None])
def test_payload_must_be_an_object(job_type: JobType, data: Any) -> None:
    root = PAYLOAD_TYPES[job_type].field_name
    assert violations(job_type, data) == [FieldViolation(root, "must be a JSON object")]


def test_every_problem_is_reported_at_once() -> None:
    data = {"type": "fax", "recipientId": " ", "templateData": [1]}
    assert paths(JobType.SEND_NOTIFICATION, data) == [
        "send_notification.type",
        "send_notification.recipient_id",
        "send_notification.template_id",
        "send_notification.template_data",
    ]


def template_data_violation(template_data: Any) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as info:
        SendNotification(
            type=NotificationType.REMINDER,
            recipient_id="R1",
            template_id="T1",
            template_data=template_data,
        )
    return info.value.violations


@pytest.mark.parametrize(
    ("template_data", "problem"),
    [
        ([1, 2], "must be a JSON object"),
        ({"score": float("nan")}, "must not contain NaN or infinite numbers"),
        ({"score": [float("inf")]}, "must not contain NaN or infinite numbers"),
        ({1: "one"}, "must have string keys only"),
        ({"at": datetime(2025, 1, 1, tzinfo=UTC)}, "must contain JSON values only, not datetime"),
        ({"tags": {"a", "b"}}, "must contain JSON values only, not set"),
    ],
)
def test_template_data_must_be_a_json_object(template_data: Any, problem: str) -> None:
    assert template_data_violation(template_data) == [
        FieldViolation("send_notification.template_data", problem)
    ]


def test_template_data_nesting_is_limited() -> None:
    def nest(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels):
            value = {"a": value}
        return value

    SendNotification.from_dict({**VALID[JobType.SEND_NOTIFICATION], "templateData": nest(32)})
    assert template_data_violation(nest(MAX_JSON_DEPTH + 1)) == [
        FieldViolation(
            "send_notification.template_data",
            f"must be nested at most {MAX_JSON_DEPTH} levels deep",
        )
    ]


def test_template_data_is_copied_in_and_out() -> None:
    data: dict[str, Any] = {"names": ["Ann"], "pair": (1, 2)}
    payload = SendNotification(
        type=NotificationType.CONFIRMATION, recipient_id="R1", template_id="T1", template_data=data
    )
    data["names"].append("Bob")
    assert payload.template_data == {"names": ["Ann"], "pair": [1, 2]}
    wire = payload.to_dict()
    wire["templateData"]["names"].append("Eve")
    assert payload.to_dict()["templateData"] == {"names": ["Ann"], "pair": [1, 2]}


def notification_of_size(size: int) -> dict[str, Any]:
    data = {**VALID[JobType.SEND_NOTIFICATION], "templateData": {"body": ""}}
    overhead = len(json.dumps(data, separators=(",", ":")).encode())
    # "é" is two bytes of UTF-8: the limit counts bytes, not characters.
    body = "é" * ((size - overhead) // 2) + "x" * ((size - overhead) % 2)
    data["templateData"] = {"body": body}
    assert len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return data


def test_payload_size_limit_counts_utf8_bytes() -> None:
    SendNotification.from_dict(notification_of_size(MAX_PAYLOAD_BYTES))
    assert violations(JobType.SEND_NOTIFICATION, notification_of_size(MAX_PAYLOAD_BYTES + 1)) == [
        FieldViolation(
            "send_notification",
            f"is {MAX_PAYLOAD_BYTES + 1} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}",
        )
    ]


def test_field_limits_keep_the_other_payloads_under_the_size_limit() -> None:
    # Only SendNotification checks its size; this proves the others cannot exceed it.
    longest = "😀" * MAX_ID_LENGTH  # four bytes of UTF-8 each
    largest: list[Payload] = [
        SyndicateListing(listing_id=longest, platforms=tuple(Platform)),
        SendReminder(
            applicant_id=longest,
            reminder_type=ReminderType.DAY1,
            missing_docs=tuple(f"{i:03}{longest[3:]}" for i in range(MAX_MISSING_DOCS)),
        ),
        CrmMatch(listing_id=longest, agent_id=longest),
    ]
    for payload in largest:
        encoded = json.dumps(payload.to_dict(), separators=(",", ":"), ensure_ascii=False)
        assert len(encoded.encode()) < MAX_PAYLOAD_BYTES


def test_direct_construction_validates_too() -> None:
    with pytest.raises(InvalidArgument) as info:
        CrmMatch(listing_id="", agent_id="AG1")
    assert info.value.violations == [FieldViolation("crm_match.listing_id", "is required")]
    with pytest.raises(InvalidArgument) as info:
        SendReminder(applicant_id="A1", reminder_type="day9")  # type: ignore[arg-type]
    assert [v.field for v in info.value.violations] == ["send_reminder.reminder_type"]
    # Plain strings are accepted where enums are declared, and become members.
    reminder = SendReminder(applicant_id="A1", reminder_type="day1")  # type: ignore[arg-type]
    assert reminder.reminder_type is ReminderType.DAY1


def test_payloads_are_frozen() -> None:
    payload = CrmMatch(listing_id="L1", agent_id="AG1")
    with pytest.raises(AttributeError):
        payload.listing_id = "L2"  # type: ignore[misc]
