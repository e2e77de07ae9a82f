"""Settings of the local QStash-compatible server, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///jobsvc-qstash.sqlite3"


@dataclass(frozen=True, kw_only=True)
class LocalQStashSettings:
    """How the local QStash server listens, stores and times its deliveries.

    ``time_scale`` multiplies every wait the server computes (delays, not-before gaps, retry
    backoff, ``Retry-After``, the gap to a schedule's next cron time, the deduplication window);
    tests set it below 1 to make hours pass in milliseconds. Per-attempt HTTP timeouts are not
    scaled.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    token: str | None = None
    current_signing_key: str | None = None
    next_signing_key: str | None = None
    time_scale: float = 1.0
    max_concurrent_deliveries: int = 512
    default_timeout_seconds: float = 900.0
    dedup_window_seconds: float = 600.0
    message_retention_seconds: float = 3600.0
    event_retention_seconds: float = 7 * 86400.0
    # Plan limits, answered with 412 as QStash does: retries per message, delay ahead.
    max_retries: int = 20
    max_delay_seconds: float = 365 * 86400.0
    # Requests per second per user before 429 with Burst-RateLimit-* headers; 0 for no limit.
    burst_rate_limit: int = 0

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> LocalQStashSettings:
        """Settings from ``JOBSVC_QSTASH_DEV_*`` variables; ``overrides`` win unless None."""
        env = os.environ if environ is None else environ
        prefix = "JOBSVC_QSTASH_DEV_"

        def get(name: str) -> str | None:
            value = env.get(prefix + name)
            return value if value not in (None, "") else None

        values: dict[str, object] = {}
        for name, conv in (
            ("host", str),
            ("port", int),
            ("database_url", str),
            ("token", str),
            ("current_signing_key", str),
            ("next_signing_key", str),
            ("time_scale", float),
            ("max_concurrent_deliveries", int),
            ("default_timeout_seconds", float),
            ("dedup_window_seconds", float),
            ("message_retention_seconds", float),
            ("event_retention_seconds", float),
            ("max_retries", int),
            ("max_delay_seconds", float),
            ("burst_rate_limit", int),
        ):
            raw = get(name.upper())
            if raw is not None:
                try:
                    values[name] = conv(raw)
                except ValueError as exc:
                    raise ValueError(
                        f"{prefix}{name.upper()} must be a {conv.__name__}: {raw!r}"
                    ) from exc
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, not {self.time_scale}")
        if self.max_concurrent_deliveries < 1:
            raise ValueError("max_concurrent_deliveries must be at least 1")
        if self.token is not None and not (self.current_signing_key and self.next_signing_key):
            raise ValueError(
                "a configured token needs both current_signing_key and next_signing_key"
            )
