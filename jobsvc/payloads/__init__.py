"""Typed payloads, one per job type, with the ADR-022 fields and their validation.

A payload instance is always valid: construction checks every field and raises
``InvalidArgument`` with one ``FieldViolation`` per problem, paths in proto style relative to the
request (``syndicate_listing.platforms[1]``; a batch prefixes its own ``jobs[3].``). The wire form
(the job log, QStash bodies, proto JSON) uses the ADR's camelCase keys; ``from_dict`` also accepts
the snake_case names, as the proto3 JSON mapping does. Validation is pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeAlias

from jobsvc.errors import FieldViolation, InvalidArgument
from jobsvc.jobs import JobType
from jobsvc.payloads.checks import MAX_ID_LENGTH, MAX_JSON_DEPTH, FieldChecker

__all__ = [
    "DEFAULT_PLATFORMS",
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_MISSING_DOCS",
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_TYPES",
    "CrmMatch",
    "NotificationType",
    "Payload",
    "Platform",
    "ReminderType",
    "SendNotification",
    "SendReminder",
    "SyndicateListing",
    "parse_payload",
]

MAX_MISSING_DOCS = 50
MAX_PAYLOAD_BYTES = 64 * 1024


class Platform(StrEnum):
    """External rental platforms a listing can be syndicated to, by wire name."""

    ZILLOW = "zillow"
    APARTMENTS = "apartments"  # apartments.com
    CRAIGSLIST = "craigslist"
    FACEBOOK = "facebook"  # Facebook Marketplace
    STREETEASY = "streeteasy"
    TRULIA = "trulia"
    HOTPADS = "hotpads"
    ZUMPER = "zumper"
    REALTOR = "realtor"  # realtor.com


# The ADR's default set, used when a request names no platform.
DEFAULT_PLATFORMS: tuple[Platform, ...] = (
    Platform.ZILLOW,
    Platform.APARTMENTS,
    Platform.CRAIGSLIST,
    Platform.FACEBOOK,
    Platform.STREETEASY,
)


class ReminderType(StrEnum):
    """Steps of the document-reminder sequence: day1, then day3, day5 and day7."""

    DAY1 = "day1"
    DAY3 = "day3"
    DAY5 = "day5"
    DAY7 = "day7"


class NotificationType(StrEnum):
    """Kinds of notification (``adverse_action``: the notice owed to a declined applicant)."""

    ADVERSE_ACTION = "adverse_action"
    REMINDER = "reminder"
    CONFIRMATION = "confirmation"


class _WireMapping:
    """Wire form shared by the payload dataclasses: each field maps to one camelCase key."""

    job_type: ClassVar[JobType]
    field_name: ClassVar[str]  # the proto oneof field, root of the violation paths
    wire_names: ClassVar[Mapping[str, str]]  # dataclass field -> camelCase key

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build and validate a payload from its wire form (camelCase or snake_case keys).

        A missing or ``null`` key means the field's default, so a required field is reported as
        required. Unknown keys are ignored, as protobuf readers do, so a payload written by a
        newer release still runs on an older replica during a rolling deploy. Raises
        ``InvalidArgument`` listing every problem.
        """
        if not isinstance(data, Mapping):
            raise InvalidArgument(FieldViolation(cls.field_name, "must be a JSON object"))
        kwargs: dict[str, Any] = {}
        violations: list[FieldViolation] = []
        for name, wire in cls.wire_names.items():
            given = [key for key in dict.fromkeys((wire, name)) if data.get(key) is not None]
            if len(given) > 1:
                violations.append(
                    FieldViolation(f"{cls.field_name}.{name}", f"both {wire} and {name} given")
                )
            if given:
                kwargs[name] = data[given[0]]
            elif name in _required_fields(cls):
                kwargs[name] = None  # construction reports it as required
        try:
            payload = cls(**kwargs)
        except InvalidArgument as exc:
            raise InvalidArgument(violations + exc.violations) from None
        if violations:
            raise InvalidArgument(violations)
        return payload

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, enums as their strings, lists, a fresh copy."""
        return {wire: _to_wire(getattr(self, name)) for name, wire in self.wire_names.items()}


def _required_fields(cls: type) -> frozenset[str]:
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


_PLAIN = frozenset({str, int, float, bool, type(None)})
_SEQUENCES = (tuple, list)


def _to_wire(value: Any) -> Any:
    # Plain values first: they are most of a payload, and this runs for every job enqueued.
    if type(value) in _PLAIN:
        return value
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, _SEQUENCES):
        return [_to_wire(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_wire(item) for key, item in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class SyndicateListing(_WireMapping):
    """Publish a listing to external platforms (none given: ``DEFAULT_PLATFORMS``)."""

    job_type: ClassVar[JobType] = JobType.SYNDICATE_LISTING
    field_name: ClassVar[str] = "syndicate_listing"
    wire_names: ClassVar[Mapping[str, str]] = {
        "listing_id": "listingId",
        "platforms": "platforms",
    }

    listing_id: str
    platforms: tuple[Platform, ...] = ()

    def __post_init__(self) -> None:
        check = FieldChecker(self.field_name)
        check.identifier("listing_id", self.listing_id)
        platforms = check.unique_enums("platforms", self.platforms, Platform, len(Platform))
        object.__setattr__(self, "platforms", platforms or DEFAULT_PLATFORMS)
        check.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class SendReminder(_WireMapping):
    """Remind an applicant of the documents their rental application still lacks."""

    job_type: ClassVar[JobType] = JobType.SEND_REMINDER
    field_name: ClassVar[str] = "send_reminder"
    wire_names: ClassVar[Mapping[str, str]] = {
        "applicant_id": "applicantId",
        "reminder_type": "reminderType",
        "missing_docs": "missingDocs",
    }

    applicant_id: str
    reminder_type: ReminderType
    missing_docs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check = FieldChecker(self.field_name)
        check.identifier("applicant_id", self.applicant_id)
        reminder_type = check.enum("reminder_type", self.reminder_type, ReminderType)
        object.__setattr__(self, "reminder_type", reminder_type)
        docs = check.unique_identifiers("missing_docs", self.missing_docs, MAX_MISSING_DOCS)
        object.__setattr__(self, "missing_docs", docs)
        check.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class CrmMatch(_WireMapping):
    """Match a listing with an agent in the CRM."""

    job_type: ClassVar[JobType] = JobType.CRM_MATCH
    field_name: ClassVar[str] = "crm_match"
    wire_names: ClassVar[Mapping[str, str]] = {"listing_id": "listingId", "agent_id": "agentId"}

    listing_id: str
    agent_id: str

    def __post_init__(self) -> None:
        check = FieldChecker(self.field_name)
        check.identifier("listing_id", self.listing_id)
        check.identifier("agent_id", self.agent_id)
        check.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class SendNotification(_WireMapping):
    """Send a templated notification; ``template_data`` is any JSON object the template reads.

    The payload keeps its own deep copy of ``template_data`` (and ``to_dict`` hands out another),
    so changing the caller's dict cannot invalidate a validated payload."""

    job_type: ClassVar[JobType] = JobType.SEND_NOTIFICATION
    field_name: ClassVar[str] = "send_notification"
    wire_names: ClassVar[Mapping[str, str]] = {
        "type": "type",
        "recipient_id": "recipientId",
        "template_id": "templateId",
        "template_data": "templateData",
    }

    type: NotificationType
    recipient_id: str
    template_id: str
    template_data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check = FieldChecker(self.field_name)
        object.__setattr__(self, "type", check.enum("type", self.type, NotificationType))
        check.identifier("recipient_id", self.recipient_id)
        check.identifier("template_id", self.template_id)
        data = check.json_object("template_data", self.template_data)
        object.__setattr__(self, "template_data", data)
        # The only payload whose size its field limits do not bound (a test proves the others).
        check.size(self.to_dict, MAX_PAYLOAD_BYTES)
        check.raise_if_any()


Payload: TypeAlias = SyndicateListing | SendReminder | CrmMatch | SendNotification

PAYLOAD_TYPES: Mapping[JobType, type[Payload]] = {
    cls.job_type: cls for cls in (SyndicateListing, SendReminder, CrmMatch, SendNotification)
}


def parse_payload(job_type: JobType, data: Mapping[str, Any]) -> Payload:
    """Validate ``data`` as the wire payload of ``job_type``; raises ``InvalidArgument``."""
    return PAYLOAD_TYPES[job_type].from_dict(data)
