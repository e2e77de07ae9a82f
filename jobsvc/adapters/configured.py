"""The adapters the settings ask for: a real one for every system that is configured, a
development one (writing to the outbox folder) for every system that is not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

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
from jobsvc.adapters.http import (
    HttpApplicationService,
    HttpCrm,
    HttpEndpoint,
    HttpListingService,
    HttpSmsGateway,
    HttpSyndicationPlatform,
)
from jobsvc.adapters.settings import AdapterSettings, HttpSystem
from jobsvc.adapters.smtp import SmtpEmailSender
from jobsvc.payloads import Platform
from jobsvc.ports import (
    ApplicationService,
    Crm,
    EmailSender,
    ListingService,
    SmsSender,
    SyndicationPlatform,
)

# The most HTTP requests one handler has in flight at once: syndication publishes to every
# platform a job names together; the other handlers make one call at a time.
CALLS_PER_HANDLER = len(Platform)


def http_limits(max_concurrent_handlers: int) -> httpx.Limits:
    """The shared pool's size for that many handlers at once: room for every request they can
    make together, so none waits for a connection (and times out waiting) under load."""
    return httpx.Limits(
        max_connections=max_concurrent_handlers * CALLS_PER_HANDLER,
        max_keepalive_connections=max_concurrent_handlers,
    )


@dataclass(kw_only=True)
class ConfiguredAdapters:
    """One adapter per port; ``aclose`` releases the shared HTTP connection pool."""

    listings: ListingService
    applications: ApplicationService
    crm: Crm
    platforms: Mapping[Platform, SyndicationPlatform]
    email: EmailSender
    sms: SmsSender
    http_client: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.http_client.aclose()


def configured_adapters(
    settings: AdapterSettings, *, max_concurrent_handlers: int
) -> ConfiguredAdapters:
    """Build the adapters for at most ``max_concurrent_handlers`` handlers running at once
    (it sizes the shared HTTP pool); development adapters log, once each, which setting would
    replace them."""
    client = httpx.AsyncClient(limits=http_limits(max_concurrent_handlers), follow_redirects=False)
    outbox = DevOutbox(settings.outbox_dir)

    def endpoint(system: HttpSystem, name: str) -> HttpEndpoint:
        return HttpEndpoint(
            system.url,
            token=system.token,
            timeout_seconds=system.timeout_seconds,
            client=client,
            name=name,
        )

    listings: ListingService = (
        HttpListingService(endpoint(settings.listing_service, "listing service"))
        if settings.listing_service is not None
        else DevListingService(outbox)
    )
    applications: ApplicationService = (
        HttpApplicationService(endpoint(settings.application_service, "application service"))
        if settings.application_service is not None
        else DevApplicationService(outbox)
    )
    crm: Crm = (
        HttpCrm(endpoint(settings.crm, "CRM")) if settings.crm is not None else DevCrm(outbox)
    )
    platforms: dict[Platform, SyndicationPlatform] = {}
    for platform in Platform:
        system = settings.platforms.get(platform)
        platforms[platform] = (
            HttpSyndicationPlatform(platform, endpoint(system, platform.value))
            if system is not None
            else DevSyndicationPlatform(platform, outbox, announce=False)
        )
    announce_platforms([p for p in Platform if p not in settings.platforms], outbox)
    email: EmailSender
    if settings.smtp is not None:
        smtp = settings.smtp
        email = SmtpEmailSender(
            host=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            starttls=smtp.starttls,
            implicit_tls=smtp.implicit_tls,
            from_address=settings.email_from,
            timeout_seconds=smtp.timeout_seconds,
        )
    else:
        email = DevEmailSender(outbox, from_address=settings.email_from)
    sms: SmsSender = (
        HttpSmsGateway(endpoint(settings.sms_gateway, "SMS gateway"), sender=settings.sms_sender)
        if settings.sms_gateway is not None
        else DevSmsSender(outbox)
    )
    return ConfiguredAdapters(
        listings=listings,
        applications=applications,
        crm=crm,
        platforms=platforms,
        email=email,
        sms=sms,
        http_client=client,
    )
