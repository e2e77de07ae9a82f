"""The handlers' ports on development adapters (writing to a folder), for tests that run the
default handlers without the systems around the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobsvc.adapters.dev import (
    DevApplicationService,
    DevCrm,
    DevEmailSender,
    DevListingService,
    DevOutbox,
    DevSmsSender,
    DevSyndicationPlatform,
)
from jobsvc.handlers import HandlerPorts
from jobsvc.handlers.notifier import Notifier
from jobsvc.payloads import Platform
from jobsvc.templates import default_catalog


def dev_ports(folder: Path, **overrides: Any) -> HandlerPorts:
    """``HandlerPorts`` on development adapters writing to ``folder``; ``overrides`` replace
    single ports."""
    outbox = DevOutbox(folder)
    values: dict[str, Any] = {
        "listings": DevListingService(outbox),
        "applications": DevApplicationService(outbox),
        "crm": DevCrm(outbox),
        "platforms": {p: DevSyndicationPlatform(p, outbox) for p in Platform},
        "notifier": Notifier(
            templates=default_catalog(),
            email=DevEmailSender(outbox, from_address="jobs@example.com"),
            sms=DevSmsSender(outbox),
        ),
    }
    values.update(overrides)
    return HandlerPorts(**values)
