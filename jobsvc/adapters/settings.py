"""Where the systems around the service are, read from the environment once. A system whose
URL (or, for email, host) is not set is played by a development adapter that writes what
would have been sent to ``outbox_dir``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jobsvc.environment import Environment
from jobsvc.payloads import Platform

DEFAULT_OUTBOX_DIR = "jobsvc-outbox"
DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, kw_only=True)
class HttpSystem:
    """An HTTP service: base URL, bearer token (None: none sent), per-request timeout."""

    url: str
    token: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True, kw_only=True)
class SmtpServer:
    """The mail server: STARTTLS on 587 by default (``implicit_tls`` for SMTPS on 465); login
    when ``username`` is set; mail comes from ``from_address``."""

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = None
    starttls: bool = True
    implicit_tls: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True, kw_only=True)
class AdapterSettings:
    listing_service: HttpSystem | None = None
    application_service: HttpSystem | None = None
    crm: HttpSystem | None = None
    platforms: Mapping[Platform, HttpSystem] = field(default_factory=dict)
    smtp: SmtpServer | None = None
    sms_gateway: HttpSystem | None = None
    sms_sender: str | None = None
    email_from: str = "jobsvc <no-reply@jobsvc.invalid>"
    outbox_dir: Path = Path(DEFAULT_OUTBOX_DIR)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdapterSettings:
        """``JOBSVC_<SYSTEM>_URL``, ``_TOKEN`` and ``_TIMEOUT_SECONDS`` for each HTTP system
        (``LISTING_SERVICE``, ``APPLICATION_SERVICE``, ``CRM``, ``SMS_GATEWAY``,
        ``PLATFORM_<NAME>``), ``JOBSVC_SMTP_*``, ``JOBSVC_EMAIL_FROM``, ``JOBSVC_SMS_FROM``,
        ``JOBSVC_OUTBOX_DIR``. ``ValueError`` names the variable that cannot be used."""
        env = Environment(environ)
        get, number, flag = env.text, env.number, env.flag

        def http(prefix: str) -> HttpSystem | None:
            url = get(f"JOBSVC_{prefix}_URL")
            if url is None:
                return None
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"JOBSVC_{prefix}_URL must be an http(s) URL, not {url!r}")
            return HttpSystem(
                url=url.rstrip("/"),
                token=get(f"JOBSVC_{prefix}_TOKEN"),
                timeout_seconds=number(
                    f"JOBSVC_{prefix}_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, positive=True
                ),
            )

        platforms = {
            platform: system
            for platform in Platform
            if (system := http(f"PLATFORM_{platform.value.upper()}")) is not None
        }
        smtp: SmtpServer | None = None
        if (host := get("JOBSVC_SMTP_HOST")) is not None:
            implicit_tls = flag("JOBSVC_SMTP_IMPLICIT_TLS", False)
            smtp = SmtpServer(
                host=host,
                port=int(number("JOBSVC_SMTP_PORT", 465 if implicit_tls else 587, positive=True)),
                username=get("JOBSVC_SMTP_USERNAME"),
                password=get("JOBSVC_SMTP_PASSWORD"),
                starttls=flag("JOBSVC_SMTP_STARTTLS", not implicit_tls),
                implicit_tls=implicit_tls,
                timeout_seconds=number(
                    "JOBSVC_SMTP_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, positive=True
                ),
            )
            if (smtp.username is None) != (smtp.password is None):
                raise ValueError("JOBSVC_SMTP_USERNAME and JOBSVC_SMTP_PASSWORD go together")
            if smtp.username is not None and not (smtp.starttls or smtp.implicit_tls):
                raise ValueError(
                    "JOBSVC_SMTP_USERNAME needs JOBSVC_SMTP_STARTTLS or JOBSVC_SMTP_IMPLICIT_TLS: "
                    "credentials are never sent in clear"
                )
        return cls(
            listing_service=http("LISTING_SERVICE"),
            application_service=http("APPLICATION_SERVICE"),
            crm=http("CRM"),
            platforms=platforms,
            smtp=smtp,
            sms_gateway=http("SMS_GATEWAY"),
            sms_sender=get("JOBSVC_SMS_FROM"),
            email_from=get("JOBSVC_EMAIL_FROM") or cls.email_from,
            outbox_dir=Path(get("JOBSVC_OUTBOX_DIR") or DEFAULT_OUTBOX_DIR),
        )
