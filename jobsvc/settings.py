"""The service's settings, read from the environment once, in the composition root.

Everything has an embedded default, so ``jobsvc serve`` runs on a fresh machine with no
configuration at all: SQLite, the built-in local QStash server, loopback ports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from jobsvc.adapters.settings import AdapterSettings
from jobsvc.environment import Environment
from jobsvc.localqstash.settings import LocalQStashSettings
from jobsvc.service.handler_slots import (
    DEFAULT_MAX_CONCURRENT_HANDLERS,
    DEFAULT_OVERLOAD_RETRY_AFTER,
)
from jobsvc.webhooks.bodies import DEFAULT_MAX_BODY_BYTES


class BrokerKind(StrEnum):
    """Where jobs go: Upstash QStash, the built-in QStash-compatible server, or run inline."""

    QSTASH = "qstash"
    LOCAL = "local"
    INLINE = "inline"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of the service; see the README's configuration table."""

    database_url: str = "sqlite:///jobsvc.sqlite3"
    broker: BrokerKind = BrokerKind.LOCAL
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = 8000
    # The sidecar's URL as QStash calls it (behind a proxy: the proxy's); None derives it from
    # the sidecar's own address.
    public_url: str | None = None
    # Larger request bodies are refused (413) before they are read to their end.
    sidecar_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    qstash_url: str | None = None
    qstash_token: str | None = None
    qstash_current_signing_key: str | None = None
    qstash_next_signing_key: str | None = None
    auth_token: str | None = None
    # Signs ListJobs/ListSchedules page tokens; None derives a key from database_url.
    page_token_key: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    handler_timeout: timedelta = timedelta(seconds=60)
    # Handlers one sidecar (or inline broker) runs at once; beyond it deliveries are answered
    # 503 with Retry-After. The adapters' HTTP pool is sized from it.
    max_concurrent_handlers: int = DEFAULT_MAX_CONCURRENT_HANDLERS
    overload_retry_after: timedelta = DEFAULT_OVERLOAD_RETRY_AFTER
    # Deliveries QStash keeps in flight at once to the sidecars (its flow control); None: the
    # handlers one sidecar runs at once. Several sidecar replicas: replicas x that bound.
    # 0: no flow control.
    delivery_parallelism: int | None = None
    relay_interval: timedelta = timedelta(seconds=1)
    # The time between two steps of a document-reminder sequence.
    reminder_interval: timedelta = timedelta(days=2)
    local_qstash: LocalQStashSettings = field(default_factory=LocalQStashSettings)
    adapters: AdapterSettings = field(default_factory=AdapterSettings)

    @property
    def flow_control_parallelism(self) -> int | None:
        """The parallelism the brokers ask QStash for; None for no flow control."""
        if self.delivery_parallelism is None:
            return self.max_concurrent_handlers
        return self.delivery_parallelism or None

    @property
    def sidecar_url(self) -> str:
        return (self.public_url or f"http://{self.sidecar_host}:{self.sidecar_port}").rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``JOBSVC_*`` and the QStash SDK's own ``QSTASH_*`` variables; ``ValueError``
        names the variable that cannot be used."""
        env = os.environ if environ is None else environ
        reader = Environment(env)
        get, number = reader.text, reader.number

        broker_name = get("JOBSVC_BROKER") or BrokerKind.LOCAL.value
        try:
            broker = BrokerKind(broker_name)
        except ValueError:
            choices = ", ".join(k.value for k in BrokerKind)
            raise ValueError(
                f"JOBSVC_BROKER must be one of {choices}, not {broker_name!r}"
            ) from None
        settings = cls(
            database_url=get("JOBSVC_DATABASE_URL") or cls.database_url,
            broker=broker,
            grpc_host=get("JOBSVC_GRPC_HOST") or cls.grpc_host,
            grpc_port=int(number("JOBSVC_GRPC_PORT", cls.grpc_port)),
            sidecar_host=get("JOBSVC_SIDECAR_HOST") or cls.sidecar_host,
            sidecar_port=int(number("JOBSVC_SIDECAR_PORT", cls.sidecar_port)),
            public_url=get("JOBSVC_PUBLIC_URL"),
            sidecar_max_body_bytes=int(
                number("JOBSVC_SIDECAR_MAX_BODY_BYTES", cls.sidecar_max_body_bytes)
            ),
            qstash_url=get("QSTASH_URL"),
            qstash_token=get("QSTASH_TOKEN"),
            qstash_current_signing_key=get("QSTASH_CURRENT_SIGNING_KEY"),
            qstash_next_signing_key=get("QSTASH_NEXT_SIGNING_KEY"),
            auth_token=get("JOBSVC_AUTH_TOKEN"),
            page_token_key=get("JOBSVC_PAGE_TOKEN_KEY"),
            tls_cert_file=get("JOBSVC_TLS_CERT_FILE"),
            tls_key_file=get("JOBSVC_TLS_KEY_FILE"),
            handler_timeout=timedelta(
                seconds=number(
                    "JOBSVC_HANDLER_TIMEOUT_SECONDS", cls.handler_timeout.total_seconds()
                )
            ),
            max_concurrent_handlers=int(
                number("JOBSVC_SIDECAR_MAX_CONCURRENT_HANDLERS", cls.max_concurrent_handlers)
            ),
            overload_retry_after=timedelta(
                seconds=number(
                    "JOBSVC_SIDECAR_OVERLOAD_RETRY_AFTER_SECONDS",
                    cls.overload_retry_after.total_seconds(),
                )
            ),
            delivery_parallelism=(
                None
                if get("JOBSVC_DELIVERY_PARALLELISM") is None
                else int(number("JOBSVC_DELIVERY_PARALLELISM", 0))
            ),
            relay_interval=timedelta(
                seconds=number("JOBSVC_RELAY_INTERVAL_SECONDS", cls.relay_interval.total_seconds())
            ),
            reminder_interval=timedelta(
                seconds=number(
                    "JOBSVC_REMINDER_INTERVAL_SECONDS", cls.reminder_interval.total_seconds()
                )
            ),
            local_qstash=LocalQStashSettings.from_env(env),
            adapters=AdapterSettings.from_env(env),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        for name, port in (
            ("JOBSVC_GRPC_PORT", self.grpc_port),
            ("JOBSVC_SIDECAR_PORT", self.sidecar_port),
        ):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535, not {port}")
        if self.broker is BrokerKind.QSTASH:
            missing = [
                name
                for name, value in (
                    ("QSTASH_TOKEN", self.qstash_token),
                    ("QSTASH_CURRENT_SIGNING_KEY", self.qstash_current_signing_key),
                    ("QSTASH_NEXT_SIGNING_KEY", self.qstash_next_signing_key),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"JOBSVC_BROKER=qstash needs {', '.join(missing)}")
        if self.sidecar_max_body_bytes <= 0:
            raise ValueError("JOBSVC_SIDECAR_MAX_BODY_BYTES must be positive")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("JOBSVC_TLS_CERT_FILE and JOBSVC_TLS_KEY_FILE go together")
        if self.handler_timeout <= timedelta(0):
            raise ValueError("JOBSVC_HANDLER_TIMEOUT_SECONDS must be positive")
        if self.max_concurrent_handlers < 1:
            raise ValueError("JOBSVC_SIDECAR_MAX_CONCURRENT_HANDLERS must be at least 1")
        if self.delivery_parallelism is not None and self.delivery_parallelism < 0:
            raise ValueError("JOBSVC_DELIVERY_PARALLELISM must not be negative")
        if not timedelta(0) < self.overload_retry_after <= timedelta(days=1):
            raise ValueError(
                "JOBSVC_SIDECAR_OVERLOAD_RETRY_AFTER_SECONDS must be positive, at most a day"
            )
        if self.relay_interval <= timedelta(0):
            raise ValueError("JOBSVC_RELAY_INTERVAL_SECONDS must be positive")
        if self.reminder_interval <= timedelta(0):
            raise ValueError("JOBSVC_REMINDER_INTERVAL_SECONDS must be positive")
