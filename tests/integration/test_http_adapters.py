"""The HTTP adapters against real local stand-ins of the systems they talk to: what they send,
what they make of the answers, and how every kind of failure becomes a port error."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from jobsvc.adapters.http import (
    HttpApplicationService,
    HttpCrm,
    HttpEndpoint,
    HttpListingService,
    HttpSmsGateway,
    HttpSyndicationPlatform,
)
from jobsvc.payloads import Platform
from jobsvc.ports import (
    ApplicationStatus,
    Contact,
    Listing,
    NotFound,
    Rejected,
    SmsMessage,
    Unavailable,
)
from tests.standins import (
    CRM,
    LISTING_SERVICE,
    SMS_GATEWAY,
    CrmContact,
    ExternalSystems,
    platform_prefix,
)

EndpointFactory = Callable[..., HttpEndpoint]

LISTING_JSON: dict[str, Any] = {
    "id": "L1",
    "title": "Sunny 2BR loft",
    "address": "12 Main St, Springfield",
    "rent": 2400,
    "bedrooms": 2,
    "bathrooms": 1.5,
    "description": "Hardwood floors, laundry in unit.",
    "photos": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
    "petsAllowed": True,
}

LISTING = Listing(
    id="L1",
    title="Sunny 2BR loft",
    address="12 Main St, Springfield",
    rent=2400,
    bedrooms=2,
    bathrooms=1.5,
    description="Hardwood floors, laundry in unit.",
    photos=("https://img.example/1.jpg", "https://img.example/2.jpg"),
)

APPLICANT_JSON: dict[str, Any] = {
    "id": "A1",
    "name": "Dana Doe",
    "email": "dana@example.com",
    "phone": "+15551234567",
    "listingAddress": "12 Main St, Springfield",
    "status": "active",
    "documentsComplete": False,
    "expiresAt": "2030-01-31T17:00:00-05:00",
    "missingDocuments": ["pay stub", "photo id"],
}


@pytest.fixture(scope="module")
def running_systems() -> Iterator[ExternalSystems]:
    with ExternalSystems() as systems:
        yield systems


@pytest.fixture
def systems(running_systems: ExternalSystems) -> ExternalSystems:
    """The module's stand-in server, emptied for this test."""
    running_systems.reset()
    return running_systems


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def endpoint(client: httpx.AsyncClient) -> EndpointFactory:
    """``endpoint(base_url, token=None, timeout_seconds=2.0, name="test system")``."""

    def make(
        base_url: str,
        *,
        token: str | None = None,
        timeout_seconds: float = 2.0,
        name: str = "test system",
    ) -> HttpEndpoint:
        return HttpEndpoint(
            base_url, token=token, timeout_seconds=timeout_seconds, client=client, name=name
        )

    return make


@pytest.fixture
def listings(systems: ExternalSystems, endpoint: EndpointFactory) -> HttpListingService:
    systems.listings["L1"] = dict(LISTING_JSON)
    return HttpListingService(endpoint(systems.listing_service_url, name="listing service"))


# -- the listing service -------------------------------------------------------------------------


async def test_listing_is_read_with_every_field_and_the_whole_document(
    listings: HttpListingService,
) -> None:
    listing = await listings.get_listing("L1")

    assert listing == Listing(
        id="L1",
        title="Sunny 2BR loft",
        address="12 Main St, Springfield",
        rent=2400,
        bedrooms=2,
        bathrooms=1.5,
        description="Hardwood floors, laundry in unit.",
        photos=("https://img.example/1.jpg", "https://img.example/2.jpg"),
        document=LISTING_JSON,
    )
    assert listing.document["petsAllowed"] is True


async def test_listing_optional_fields_default_when_absent_or_null(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.listings["L2"] = {**LISTING_JSON, "id": "L2", "photos": None}
    del systems.listings["L2"]["description"]

    listing = await listings.get_listing("L2")

    assert (listing.description, listing.photos) == ("", ())


async def test_listing_ids_are_quoted_as_one_path_segment(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    odd = "a/b c?d#e"
    systems.listings[odd] = {**LISTING_JSON, "id": odd}

    listing = await listings.get_listing(odd)

    assert listing.id == odd
    [request] = systems.requests_to(LISTING_SERVICE)
    assert request.raw_path == "/listing-service/listings/a%2Fb%20c%3Fd%23e"


async def test_unknown_listing_is_not_found_naming_the_system_and_path(
    listings: HttpListingService,
) -> None:
    with pytest.raises(NotFound) as caught:
        await listings.get_listing("nope")

    assert "listing service" in caught.value.message
    assert "/listings/nope" in caught.value.message


@pytest.mark.parametrize(
    "change",
    [
        {"rent": None},
        {"rent": "2400"},
        {"rent": 2400.5},
        {"bedrooms": True},
        {"bathrooms": "1.5"},
        {"title": 7},
        {"photos": "https://img.example/1.jpg"},
        {"photos": [1, 2]},
        {"description": ["x"]},
    ],
    ids=repr,
)
async def test_listing_with_a_wrongly_typed_field_is_unavailable(
    systems: ExternalSystems, listings: HttpListingService, change: dict[str, Any]
) -> None:
    systems.listings["L1"] = {**LISTING_JSON, **change}

    with pytest.raises(Unavailable, match="malformed answer") as caught:
        await listings.get_listing("L1")

    assert repr(next(iter(change))) in caught.value.message


@pytest.mark.parametrize("missing", ["id", "title", "address", "rent", "bedrooms", "bathrooms"])
async def test_listing_without_a_required_field_is_unavailable(
    systems: ExternalSystems, listings: HttpListingService, missing: str
) -> None:
    del systems.listings["L1"][missing]

    with pytest.raises(Unavailable, match=f"field '{missing}' is missing"):
        await listings.get_listing("L1")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"<html>gateway</html>", b"[1, 2]", b'"a string"', b"null", b"{"],
    ids=repr,
)
async def test_an_answer_that_is_not_a_json_object_is_unavailable(
    systems: ExternalSystems, listings: HttpListingService, body: bytes
) -> None:
    systems.malformed_next(LISTING_SERVICE, body)

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    assert "listing service" in caught.value.message
    assert caught.value.retry_after is None


# -- statuses, timeouts, connections (the shared endpoint) ---------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_and_request_timeouts_are_unavailable(
    systems: ExternalSystems, listings: HttpListingService, status: int
) -> None:
    systems.answer_next(LISTING_SERVICE, status=status, body={"error": "overloaded"})

    with pytest.raises(Unavailable, match=f"answered {status}: overloaded") as caught:
        await listings.get_listing("L1")

    assert caught.value.retry_after is None
    assert (await listings.get_listing("L1")).id == "L1"  # the script is used up


async def test_429_with_retry_after_seconds(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.answer_next(LISTING_SERVICE, status=429, headers={"Retry-After": "120"})

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    assert caught.value.retry_after == timedelta(seconds=120)


async def test_429_with_retry_after_as_an_http_date(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=90)
    systems.answer_next(
        LISTING_SERVICE, status=429, headers={"Retry-After": format_datetime(when, usegmt=True)}
    )

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    assert caught.value.retry_after is not None
    assert timedelta(seconds=85) <= caught.value.retry_after <= timedelta(seconds=90)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("9999999", timedelta(days=1)),  # capped: nobody retries further out than a day
        ("Wed, 21 Oct 2015 07:28:00 GMT", timedelta(0)),  # already past
        ("soon", None),
        ("-5", None),
    ],
)
async def test_429_retry_after_is_capped_or_ignored_when_unreadable(
    systems: ExternalSystems,
    listings: HttpListingService,
    header: str,
    expected: timedelta | None,
) -> None:
    systems.answer_next(LISTING_SERVICE, status=429, headers={"Retry-After": header})

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    assert caught.value.retry_after == expected


async def test_503_with_retry_after_carries_it(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.answer_next(LISTING_SERVICE, status=503, headers={"Retry-After": "5"})

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    assert caught.value.retry_after == timedelta(seconds=5)


@pytest.mark.parametrize("status", [400, 403, 409, 422])
async def test_other_client_errors_are_rejected_with_the_remote_text(
    systems: ExternalSystems, listings: HttpListingService, status: int
) -> None:
    systems.answer_next(
        LISTING_SERVICE, status=status, body={"error": "listing id must be numeric"}
    )

    with pytest.raises(Rejected) as caught:
        await listings.get_listing("L1")

    assert f"answered {status}" in caught.value.message
    assert "listing id must be numeric" in caught.value.message
    assert "/listings/L1" in caught.value.message


async def test_rejection_text_from_a_plain_body_is_clipped(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.answer_next(
        LISTING_SERVICE,
        status=400,
        headers={"content-type": "text/plain"},
        body="bad request: " + "x" * 5000,
    )

    with pytest.raises(Rejected) as caught:
        await listings.get_listing("L1")

    assert "bad request: xxx" in caught.value.message
    assert len(caught.value.message) < 400


# A proxy's error page as nginx and friends send it, padded to 200 KB, with a control character.
HTML_ERROR_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title><style>body { color: red }</style></head>"
    "\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\x07"
    "<script>var secret = 1;</script>\r\n" + "<p>padding</p>\n" * 12_000 + "</body></html>"
)


async def test_an_html_error_page_is_reduced_to_its_words(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.answer_next(
        LISTING_SERVICE,
        status=502,
        headers={"content-type": "text/html"},
        body=HTML_ERROR_PAGE,
    )

    with pytest.raises(Unavailable) as caught:
        await listings.get_listing("L1")

    message = caught.value.message
    assert message.startswith(
        "listing service: GET /listings/L1 answered 502: 502 Bad Gateway 502 Bad Gateway nginx "
        "padding padding"
    )
    assert message.endswith("…")
    assert len(message) < 400
    for unwanted in ("<", ">", "\x07", "\n", "secret", "color"):
        assert unwanted not in message


async def test_a_slow_answer_beyond_the_timeout_is_unavailable(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.listings["L1"] = dict(LISTING_JSON)
    listings = HttpListingService(endpoint(systems.listing_service_url, timeout_seconds=0.2))
    systems.delay_next(LISTING_SERVICE, 60.0)  # the client giving up ends the wait

    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"no answer within 0\.2 s"):
        await listings.get_listing("L1")

    assert time.monotonic() - started < 30  # its own timeout, not the 60 s answer
    assert (await listings.get_listing("L1")).id == "L1"


async def test_a_slow_answer_within_the_timeout_is_fine(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.listings["L1"] = dict(LISTING_JSON)
    listings = HttpListingService(endpoint(systems.listing_service_url, timeout_seconds=1.0))
    systems.delay_next(LISTING_SERVICE, 0.1)

    assert (await listings.get_listing("L1")).id == "L1"


async def test_a_connection_dropped_mid_answer_is_unavailable(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    systems.drop_next(LISTING_SERVICE)

    with pytest.raises(Unavailable, match="failed"):
        await listings.get_listing("L1")

    assert (await listings.get_listing("L1")).id == "L1"


async def test_a_refused_connection_is_unavailable(endpoint: EndpointFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listings = HttpListingService(endpoint(f"http://127.0.0.1:{port}", name="listing service"))

    with pytest.raises(Unavailable, match="listing service: GET /listings/L1 failed"):
        await listings.get_listing("L1")


async def test_204_and_empty_bodies_are_none(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    remote = endpoint(systems.url)
    systems.answer_next("/anything", status=204)
    systems.answer_next("/anything", status=200, body=b"  ")

    assert await remote.request_json("GET", "/anything") is None
    assert await remote.request_json("GET", "/anything") is None


async def test_a_redirect_is_not_followed_and_is_unavailable(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.answer_next("/moved", status=301, headers={"Location": "/elsewhere"})

    with pytest.raises(Unavailable, match="answered 301"):
        await endpoint(systems.url).request_json("GET", "/moved")


async def test_the_bearer_token_is_sent_when_configured(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.listings["L1"] = dict(LISTING_JSON)
    systems.require_token(LISTING_SERVICE, "s3cret")
    listings = HttpListingService(endpoint(systems.listing_service_url, token="s3cret"))

    assert (await listings.get_listing("L1")).id == "L1"

    [request] = systems.requests_to(LISTING_SERVICE)
    assert request.header("Authorization") == "Bearer s3cret"
    assert request.header("Accept") == "application/json"


@pytest.mark.parametrize("token", ["wrong", None])
async def test_a_wrong_or_missing_token_is_rejected(
    systems: ExternalSystems, endpoint: EndpointFactory, token: str | None
) -> None:
    systems.listings["L1"] = dict(LISTING_JSON)
    systems.require_token(LISTING_SERVICE, "s3cret")
    listings = HttpListingService(endpoint(systems.listing_service_url, token=token))

    with pytest.raises(Rejected, match="answered 401: invalid or missing bearer token"):
        await listings.get_listing("L1")


async def test_no_authorization_header_without_a_token(
    systems: ExternalSystems, listings: HttpListingService
) -> None:
    await listings.get_listing("L1")

    [request] = systems.requests_to(LISTING_SERVICE)
    assert request.header("Authorization") is None


# -- the application service ---------------------------------------------------------------------


@pytest.fixture
def applications(systems: ExternalSystems, endpoint: EndpointFactory) -> HttpApplicationService:
    systems.applicants["A1"] = dict(APPLICANT_JSON)
    return HttpApplicationService(
        endpoint(systems.application_service_url, name="application service")
    )


async def test_applicant_is_read_with_an_aware_expiry(
    applications: HttpApplicationService,
) -> None:
    applicant = await applications.get_applicant("A1")

    assert applicant.id == "A1"
    assert applicant.name == "Dana Doe"
    assert applicant.email == "dana@example.com"
    assert applicant.phone == "+15551234567"
    assert applicant.listing_address == "12 Main St, Springfield"
    assert applicant.status is ApplicationStatus.ACTIVE
    assert applicant.documents_complete is False
    assert applicant.expires_at == datetime(2030, 1, 31, 22, 0, tzinfo=UTC)
    assert applicant.expires_at.utcoffset() == timedelta(hours=-5)
    assert applicant.missing_documents == ("pay stub", "photo id")


async def test_applicant_changes_between_calls_are_seen(
    systems: ExternalSystems, applications: HttpApplicationService
) -> None:
    assert not (await applications.get_applicant("A1")).documents_complete

    systems.applicants["A1"] = {
        **APPLICANT_JSON,
        "documentsComplete": True,
        "missingDocuments": [],
        "email": None,
        "phone": None,
        "expiresAt": None,
        "status": "withdrawn",
    }
    applicant = await applications.get_applicant("A1")

    assert applicant.documents_complete
    assert (applicant.email, applicant.phone, applicant.expires_at) == (None, None, None)
    assert applicant.missing_documents == ()
    assert applicant.status is ApplicationStatus.WITHDRAWN


async def test_applicant_expiry_in_utc_z_form(
    systems: ExternalSystems, applications: HttpApplicationService
) -> None:
    systems.applicants["A1"] = {**APPLICANT_JSON, "expiresAt": "2030-01-31T22:00:00Z"}

    applicant = await applications.get_applicant("A1")

    assert applicant.expires_at == datetime(2030, 1, 31, 22, 0, tzinfo=UTC)
    assert applicant.expires_at.utcoffset() == timedelta(0)


async def test_unknown_applicant_is_not_found(applications: HttpApplicationService) -> None:
    with pytest.raises(NotFound, match="application service: GET /applicants/A404"):
        await applications.get_applicant("A404")


@pytest.mark.parametrize(
    "change",
    [
        {"status": "pending"},
        {"expiresAt": "2030-01-31T17:00:00"},  # no offset: not an instant
        {"expiresAt": "next tuesday"},
        {"documentsComplete": "yes"},
        {"missingDocuments": "pay stub"},
        {"email": 42},
        {"listingAddress": None},
    ],
    ids=repr,
)
async def test_applicant_with_a_malformed_field_is_unavailable(
    systems: ExternalSystems, applications: HttpApplicationService, change: dict[str, Any]
) -> None:
    systems.applicants["A1"] = {**APPLICANT_JSON, **change}

    with pytest.raises(Unavailable, match="malformed answer") as caught:
        await applications.get_applicant("A1")

    assert repr(next(iter(change))) in caught.value.message


# -- the CRM -------------------------------------------------------------------------------------


@pytest.fixture
def crm(systems: ExternalSystems, endpoint: EndpointFactory) -> HttpCrm:
    systems.crm_contacts["agent-7"] = [
        CrmContact(id="c1", name="Ann", email="ann@example.com", max_rent=3000, min_bedrooms=1),
        CrmContact(id="c2", name="Bob", max_rent=2000),  # too expensive for Bob
        CrmContact(id="c3", name="Cy", max_rent=2500, min_bedrooms=2),
        CrmContact(id="c4", name="Di", max_rent=9000, min_bedrooms=3),  # too small for Di
    ]
    return HttpCrm(endpoint(systems.crm_url, name="CRM"))


async def test_crm_matches_come_back_in_the_crms_order(
    systems: ExternalSystems, crm: HttpCrm
) -> None:
    contacts = await crm.find_matches(agent_id="agent-7", listing=LISTING)

    assert contacts == [
        Contact(id="c3", name="Cy", email=None, score=0.96),
        Contact(id="c1", name="Ann", email="ann@example.com", score=0.8),
    ]
    [request] = systems.requests_to(CRM)
    assert (request.method, request.path) == ("POST", "/crm/agents/agent-7/matches/search")
    assert request.json == {
        "listing": {
            "id": "L1",
            "title": "Sunny 2BR loft",
            "address": "12 Main St, Springfield",
            "rent": 2400,
            "bedrooms": 2,
            "bathrooms": 1.5,
        }
    }


async def test_crm_matches_are_recorded_and_replaced(
    systems: ExternalSystems, crm: HttpCrm
) -> None:
    await crm.record_matches(agent_id="agent-7", listing_id="L1", contact_ids=["c3", "c1"])
    await crm.record_matches(agent_id="agent-7", listing_id="L1", contact_ids=["c3", "c1"])
    assert systems.crm_matches == {("agent-7", "L1"): ["c3", "c1"]}

    await crm.record_matches(agent_id="agent-7", listing_id="L1", contact_ids=[])
    assert systems.crm_matches == {("agent-7", "L1"): []}

    requests = systems.requests_to(CRM)
    assert [(r.method, r.path) for r in requests] == [
        ("PUT", "/crm/agents/agent-7/listings/L1/matches")
    ] * 3
    assert requests[0].json == {"contactIds": ["c3", "c1"]}


async def test_crm_record_accepts_a_200_with_any_body(
    systems: ExternalSystems, crm: HttpCrm
) -> None:
    systems.answer_next(CRM, status=200, body="recorded")

    await crm.record_matches(agent_id="agent-7", listing_id="L1", contact_ids=["c1"])


async def test_crm_unknown_agent_is_not_found(crm: HttpCrm) -> None:
    with pytest.raises(NotFound, match="CRM"):
        await crm.find_matches(agent_id="agent-404", listing=LISTING)
    with pytest.raises(NotFound, match="CRM"):
        await crm.record_matches(agent_id="agent-404", listing_id="L1", contact_ids=["c1"])


@pytest.mark.parametrize(
    "body",
    [
        {"matches": []},
        {"contacts": {"id": "c1"}},
        {"contacts": [{"id": "c1"}]},
        {"contacts": [{"id": "c1", "name": "Ann", "score": "high"}]},
        {"contacts": ["c1"]},
    ],
    ids=repr,
)
async def test_crm_answer_of_the_wrong_shape_is_unavailable(
    systems: ExternalSystems, crm: HttpCrm, body: Any
) -> None:
    systems.malformed_next(CRM, body)

    with pytest.raises(Unavailable, match="malformed answer"):
        await crm.find_matches(agent_id="agent-7", listing=LISTING)


async def test_crm_token_and_failures(systems: ExternalSystems, endpoint: EndpointFactory) -> None:
    systems.crm_contacts["agent-7"] = []
    systems.require_token(CRM, "crm-token")
    crm = HttpCrm(endpoint(systems.crm_url, token="crm-token", name="CRM"))
    systems.answer_next(CRM, status=503)

    with pytest.raises(Unavailable, match="CRM: POST /agents/agent-7/matches/search answered 503"):
        await crm.find_matches(agent_id="agent-7", listing=LISTING)
    assert await crm.find_matches(agent_id="agent-7", listing=LISTING) == []


# -- syndication platforms -----------------------------------------------------------------------

GENERIC_DOCUMENT: dict[str, Any] = {
    "externalId": "L1",
    "title": "Sunny 2BR loft",
    "address": "12 Main St, Springfield",
    "rent": 2400,
    "bedrooms": 2,
    "bathrooms": 1.5,
    "description": "Hardwood floors, laundry in unit.",
    "photos": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
}

EXPECTED_DOCUMENTS: dict[Platform, dict[str, Any]] = {
    Platform.ZILLOW: {
        "externalId": "L1",
        "title": "Sunny 2BR loft",
        "address": "12 Main St, Springfield",
        "monthlyRent": 2400,
        "beds": 2,
        "baths": 1.5,
        "description": "Hardwood floors, laundry in unit.",
        "photos": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
    },
    Platform.CRAIGSLIST: {
        "externalId": "L1",
        "postingTitle": "Sunny 2BR loft",
        "price": 2400,
        "body": "Hardwood floors, laundry in unit.",
        "address": "12 Main St, Springfield",
        "bedrooms": 2,
        "bathrooms": 1.5,
        "images": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
    },
    Platform.FACEBOOK: {
        "externalId": "L1",
        "name": "Sunny 2BR loft",
        "price": {"amount": 2400, "currency": "USD", "period": "month"},
        "address": "12 Main St, Springfield",
        "bedrooms": 2,
        "bathrooms": 1.5,
        "description": "Hardwood floors, laundry in unit.",
        "images": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
    },
}


def _platform(
    systems: ExternalSystems, endpoint: EndpointFactory, platform: Platform, **options: Any
) -> HttpSyndicationPlatform:
    return HttpSyndicationPlatform(
        platform, endpoint(systems.platform_url(platform), name=platform.value, **options)
    )


@pytest.mark.parametrize("platform", list(Platform), ids=str)
async def test_each_platform_receives_its_own_document_shape(
    systems: ExternalSystems, endpoint: EndpointFactory, platform: Platform
) -> None:
    published = await _platform(systems, endpoint, platform).publish(
        LISTING, idempotency_key="job-1:" + platform
    )

    [stored] = systems.published(platform)
    assert published.platform is platform
    assert published.listing_id == stored.id
    assert published.url == stored.url
    assert stored.document == EXPECTED_DOCUMENTS.get(platform, GENERIC_DOCUMENT)
    [request] = systems.requests_to(platform_prefix(platform))
    assert (request.method, request.path) == ("POST", f"/platforms/{platform}/listings")
    assert request.header("Idempotency-Key") == "job-1:" + platform


async def test_a_repeated_idempotency_key_returns_the_same_listing(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    zillow = _platform(systems, endpoint, Platform.ZILLOW)

    first = await zillow.publish(LISTING, idempotency_key="job-1:zillow")
    again = await zillow.publish(LISTING, idempotency_key="job-1:zillow")
    other = await zillow.publish(LISTING, idempotency_key="job-2:zillow")

    assert again == first
    assert other.listing_id != first.listing_id
    assert [p.idempotency_key for p in systems.published(Platform.ZILLOW)] == [
        "job-1:zillow",
        "job-2:zillow",
    ]


async def test_a_listing_the_platform_finds_invalid_is_rejected_with_its_reason(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.reject_listings(Platform.CRAIGSLIST, "price must be below 100000 for housing")

    with pytest.raises(Rejected) as caught:
        await _platform(systems, endpoint, Platform.CRAIGSLIST).publish(
            LISTING, idempotency_key="k"
        )

    assert "craigslist: POST /listings answered 422" in caught.value.message
    assert "price must be below 100000 for housing" in caught.value.message
    assert systems.published(Platform.CRAIGSLIST) == []


async def test_a_platform_asking_to_come_back_later(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    facebook = _platform(systems, endpoint, Platform.FACEBOOK)
    systems.answer_next(
        platform_prefix(Platform.FACEBOOK), status=429, headers={"Retry-After": "30"}
    )

    with pytest.raises(Unavailable) as caught:
        await facebook.publish(LISTING, idempotency_key="k")

    assert caught.value.retry_after == timedelta(seconds=30)
    assert (await facebook.publish(LISTING, idempotency_key="k")).listing_id


async def test_failures_are_scripted_per_platform(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    systems.answer_next(platform_prefix(Platform.ZILLOW), status=503, times=2)

    for _ in range(2):
        with pytest.raises(Unavailable):
            await _platform(systems, endpoint, Platform.ZILLOW).publish(
                LISTING, idempotency_key="k"
            )
    apartments = await _platform(systems, endpoint, Platform.APARTMENTS).publish(
        LISTING, idempotency_key="k"
    )

    assert apartments.listing_id
    assert systems.published(Platform.ZILLOW) == []


@pytest.mark.parametrize(
    "body", [b"not json", {"url": "https://x.example"}, {"id": 7}, {"id": "z", "url": 3}], ids=repr
)
async def test_a_platform_answer_of_the_wrong_shape_is_unavailable(
    systems: ExternalSystems, endpoint: EndpointFactory, body: Any
) -> None:
    systems.malformed_next(platform_prefix(Platform.ZILLOW), body, status=201)

    with pytest.raises(Unavailable, match="zillow: POST /listings"):
        await _platform(systems, endpoint, Platform.ZILLOW).publish(LISTING, idempotency_key="k")


async def test_a_platform_timing_out(systems: ExternalSystems, endpoint: EndpointFactory) -> None:
    systems.delay_next(platform_prefix(Platform.TRULIA), 2.0)
    trulia = _platform(systems, endpoint, Platform.TRULIA, timeout_seconds=0.2)

    with pytest.raises(Unavailable, match="no answer within"):
        await trulia.publish(LISTING, idempotency_key="k")


# -- the SMS gateway -----------------------------------------------------------------------------


@pytest.fixture
def sms(systems: ExternalSystems, endpoint: EndpointFactory) -> HttpSmsGateway:
    systems.require_token(SMS_GATEWAY, "sms-token")
    return HttpSmsGateway(
        endpoint(systems.sms_gateway_url, token="sms-token", name="SMS gateway"),
        sender="+15550001111",
    )


async def test_sms_is_sent_once_per_idempotency_key(
    systems: ExternalSystems, sms: HttpSmsGateway
) -> None:
    message = SmsMessage(
        to="+15551234567", text="Your pay stub is missing.", idempotency_key="j:sms"
    )

    first = await sms.send(message)
    again = await sms.send(message)

    assert first.id == again.id
    assert first.written_to is None
    [received] = systems.sms_messages
    assert (received.id, received.to, received.sender, received.text) == (
        first.id,
        "+15551234567",
        "+15550001111",
        "Your pay stub is missing.",
    )
    requests = systems.requests_to(SMS_GATEWAY)
    assert [r.header("Idempotency-Key") for r in requests] == ["j:sms", "j:sms"]
    assert requests[0].json == {
        "to": "+15551234567",
        "from": "+15550001111",
        "text": "Your pay stub is missing.",
    }


async def test_sms_without_a_sender_leaves_from_to_the_gateway(
    systems: ExternalSystems, endpoint: EndpointFactory
) -> None:
    gateway = HttpSmsGateway(endpoint(systems.sms_gateway_url), sender=None)

    await gateway.send(SmsMessage(to="+15551234567", text="hi", idempotency_key="k"))

    [request] = systems.requests_to(SMS_GATEWAY)
    assert request.json == {"to": "+15551234567", "text": "hi"}


async def test_sms_to_an_invalid_number_is_rejected(
    systems: ExternalSystems, sms: HttpSmsGateway
) -> None:
    with pytest.raises(Rejected, match="SMS gateway: POST /messages answered 422: invalid phone"):
        await sms.send(SmsMessage(to="555-1234", text="hi", idempotency_key="k"))

    assert systems.sms_messages == []


async def test_sms_gateway_failures(systems: ExternalSystems, sms: HttpSmsGateway) -> None:
    message = SmsMessage(to="+15551234567", text="hi", idempotency_key="k")
    systems.answer_next(SMS_GATEWAY, status=502, body="<html>Bad Gateway</html>")
    systems.drop_next(SMS_GATEWAY)
    systems.malformed_next(SMS_GATEWAY, {"messageId": "m1"})

    for expected in ("answered 502: Bad Gateway", "failed", "field 'id' is missing"):
        with pytest.raises(Unavailable) as caught:
            await sms.send(message)
        assert expected in caught.value.message
    sent = await sms.send(message)

    assert [m.id for m in systems.sms_messages] == [sent.id]
