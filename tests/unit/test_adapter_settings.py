"""Where the systems around the service are: read from the environment, errors name the
variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsvc.adapters.settings import AdapterSettings, HttpSystem, SmtpServer
from jobsvc.payloads import Platform
from jobsvc.settings import Settings


def test_nothing_configured_means_development_adapters_everywhere() -> None:
    settings = AdapterSettings.from_env({})
    assert settings == AdapterSettings()
    assert (settings.listing_service, settings.smtp, settings.sms_gateway) == (None, None, None)
    assert settings.platforms == {}
    assert settings.outbox_dir == Path("jobsvc-outbox")


def test_every_system_is_read() -> None:
    settings = AdapterSettings.from_env(
        {
            "JOBSVC_LISTING_SERVICE_URL": "https://listings.internal/",
            "JOBSVC_LISTING_SERVICE_TOKEN": "lt",
            "JOBSVC_LISTING_SERVICE_TIMEOUT_SECONDS": "2.5",
            "JOBSVC_APPLICATION_SERVICE_URL": "http://applications:8080",
            "JOBSVC_CRM_URL": "http://crm",
            "JOBSVC_PLATFORM_ZILLOW_URL": "https://zillow.example/api",
            "JOBSVC_PLATFORM_ZILLOW_TOKEN": "zt",
            "JOBSVC_SMS_GATEWAY_URL": "https://sms.example",
            "JOBSVC_SMS_FROM": "+15550000000",
            "JOBSVC_SMTP_HOST": "mail.example",
            "JOBSVC_SMTP_USERNAME": "jobs",
            "JOBSVC_SMTP_PASSWORD": "secret",
            "JOBSVC_EMAIL_FROM": "Leasing <leasing@example.com>",
            "JOBSVC_OUTBOX_DIR": "/tmp/out",
        }
    )
    assert settings.listing_service == HttpSystem(
        url="https://listings.internal", token="lt", timeout_seconds=2.5
    )
    assert settings.application_service == HttpSystem(url="http://applications:8080")
    assert settings.platforms == {
        Platform.ZILLOW: HttpSystem(url="https://zillow.example/api", token="zt")
    }
    assert settings.smtp == SmtpServer(
        host="mail.example", port=587, username="jobs", password="secret", starttls=True
    )
    assert settings.sms_sender == "+15550000000"
    assert settings.email_from == "Leasing <leasing@example.com>"
    assert settings.outbox_dir == Path("/tmp/out")


def test_implicit_tls_defaults_to_smtps() -> None:
    smtp = AdapterSettings.from_env(
        {"JOBSVC_SMTP_HOST": "mail.example", "JOBSVC_SMTP_IMPLICIT_TLS": "true"}
    ).smtp
    assert smtp is not None
    assert (smtp.port, smtp.implicit_tls, smtp.starttls) == (465, True, False)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"JOBSVC_CRM_URL": "crm:80"}, "JOBSVC_CRM_URL"),
        ({"JOBSVC_CRM_URL": "http://crm", "JOBSVC_CRM_TIMEOUT_SECONDS": "soon"}, "JOBSVC_CRM"),
        ({"JOBSVC_CRM_URL": "http://crm", "JOBSVC_CRM_TIMEOUT_SECONDS": "0"}, "positive"),
        ({"JOBSVC_SMTP_HOST": "m", "JOBSVC_SMTP_STARTTLS": "maybe"}, "JOBSVC_SMTP_STARTTLS"),
        ({"JOBSVC_SMTP_HOST": "m", "JOBSVC_SMTP_USERNAME": "u"}, "JOBSVC_SMTP_PASSWORD"),
        (
            {
                "JOBSVC_SMTP_HOST": "m",
                "JOBSVC_SMTP_USERNAME": "u",
                "JOBSVC_SMTP_PASSWORD": "p",
                "JOBSVC_SMTP_STARTTLS": "false",
            },
            "never sent in clear",
        ),
        ({"JOBSVC_REMINDER_INTERVAL_SECONDS": "-1"}, "JOBSVC_REMINDER_INTERVAL_SECONDS"),
        ({"JOBSVC_SIDECAR_MAX_BODY_BYTES": "0"}, "JOBSVC_SIDECAR_MAX_BODY_BYTES"),
        ({"JOBSVC_SIDECAR_MAX_BODY_BYTES": "big"}, "JOBSVC_SIDECAR_MAX_BODY_BYTES"),
        ({"JOBSVC_DELIVERY_PARALLELISM": "-1"}, "JOBSVC_DELIVERY_PARALLELISM"),
        ({"JOBSVC_DELIVERY_PARALLELISM": "many"}, "JOBSVC_DELIVERY_PARALLELISM"),
    ],
)
def test_unusable_settings_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env(environ)


def test_the_service_settings_carry_them() -> None:
    settings = Settings.from_env(
        {"JOBSVC_CRM_URL": "http://crm", "JOBSVC_REMINDER_INTERVAL_SECONDS": "5"}
    )
    assert settings.adapters.crm == HttpSystem(url="http://crm")
    assert settings.reminder_interval.total_seconds() == 5


@pytest.mark.parametrize(
    ("environ", "parallelism"),
    [
        ({}, 64),
        ({"JOBSVC_SIDECAR_MAX_CONCURRENT_HANDLERS": "8"}, 8),
        ({"JOBSVC_SIDECAR_MAX_CONCURRENT_HANDLERS": "8", "JOBSVC_DELIVERY_PARALLELISM": "24"}, 24),
        ({"JOBSVC_DELIVERY_PARALLELISM": "0"}, None),
    ],
)
def test_flow_control_follows_the_handler_bound_unless_set(
    environ: dict[str, str], parallelism: int | None
) -> None:
    assert Settings.from_env(environ).flow_control_parallelism == parallelism
