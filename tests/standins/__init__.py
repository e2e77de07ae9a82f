"""Local stand-ins for the systems around jobsvc, for tests: real servers on 127.0.0.1 with
in-memory state the tests set up and inspect, and scripted failures."""

from tests.standins.http import (
    APPLICATION_SERVICE,
    CRM,
    LISTING_SERVICE,
    SMS_GATEWAY,
    CrmContact,
    ExternalSystems,
    PublishedListing,
    ReceivedSms,
    RecordedRequest,
    platform_prefix,
)

__all__ = [
    "APPLICATION_SERVICE",
    "CRM",
    "LISTING_SERVICE",
    "SMS_GATEWAY",
    "CrmContact",
    "ExternalSystems",
    "PublishedListing",
    "ReceivedSms",
    "RecordedRequest",
    "platform_prefix",
]
