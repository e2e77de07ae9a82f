"""Checking QStash's ``Upstash-Signature``: an HS256 JWT over the called URL and the SHA-256 of
the raw body, signed with the current signing key (or, around a rotation, the next one).

Done with PyJWT directly rather than the SDK's ``Receiver``: that one needs the body as ``str``
(so no non-UTF-8 body verifies), ignores its ``clock_tolerance``, and reports the next key's
error instead of the real reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt

ISSUER = "Upstash"
# ``nbf`` and ``iat`` are set to the signing time, so a receiver whose clock is a little behind
# QStash's would reject fresh tokens without some tolerance.
DEFAULT_CLOCK_TOLERANCE_SECONDS = 5.0
# QStash's tokens live 5 minutes. A longer-lived one is refused: its ``jti`` would have to be
# remembered for as long, and no real delivery needs it.
MAX_TOKEN_LIFETIME_SECONDS = 3600.0
# QStash's token ids are ``jwt_`` and some 28 characters; the job log keeps up to this many.
MAX_TOKEN_ID_LENGTH = 128
# QStash's tokens are some 400 characters; parsing a huge one (JSON nested thousands deep)
# would only cost time and risk ``RecursionError``.
MAX_TOKEN_LENGTH = 4096
# The last second of year 9999: any time beyond cannot be a datetime.
_LAST_INSTANT = 253402300799.0
_TIME_CLAIMS = ("exp", "nbf", "iat")


class InvalidSignature(Exception):
    """The delivery is not provably from QStash for this URL and body. ``reason`` is stable:

    ``MISSING_SIGNATURE``, ``MALFORMED_TOKEN``, ``BAD_SIGNATURE`` (neither key signed it),
    ``WRONG_ISSUER``, ``MISSING_CLAIM``, ``EXPIRED``, ``NOT_YET_VALID``, ``LIFETIME_TOO_LONG``
    (expires more than an hour ahead), ``WRONG_AUDIENCE``, ``WRONG_SUBJECT`` (signed for another
    URL), ``BODY_MISMATCH``. (A token used before is ``jobsvc.errors.TokenReused``: only the
    job log knows.)
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What a verified token says; ``key`` tells which signing key verified it (``next``
    means QStash has rotated and the configuration should follow)."""

    subject: str
    body_hash: str
    expires_at: datetime
    not_before: datetime
    issued_at: datetime | None
    jwt_id: str
    key: Literal["current", "next"]
    # Until when the token passes ``verify`` (its ``exp`` plus the clock tolerance): how long
    # a token memory must remember ``jwt_id``.
    usable_until: datetime


class SignatureVerifier:
    """Verifies deliveries against the current and next signing keys.

    ``public_url``: the sidecar's base URL as QStash calls it (``https://jobs.example.com``,
    perhaps with a path prefix a proxy strips). When set, the expected ``sub`` is that base plus
    the path and query of the URL the request arrived at, so a proxy in front may change scheme,
    host and port. When None, the URL the request arrived at must be the one QStash called.
    """

    def __init__(
        self,
        current_key: str,
        next_key: str | None,
        *,
        public_url: str | None,
        clock_tolerance_seconds: float = DEFAULT_CLOCK_TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not current_key:
            raise ValueError("the current signing key must not be empty")
        if clock_tolerance_seconds < 0:
            raise ValueError("clock_tolerance_seconds must not be negative")
        if public_url is not None and not public_url.startswith(("http://", "https://")):
            raise ValueError(f"public_url must be an http(s) URL, not {public_url!r}")
        keys: list[tuple[Literal["current", "next"], str]] = [("current", current_key)]
        if next_key and next_key != current_key:
            keys.append(("next", next_key))
        self._keys = tuple(keys)
        self._public_url = public_url.rstrip("/") if public_url is not None else None
        self._leeway = clock_tolerance_seconds
        self._clock = clock

    def expected_subject(self, url: str) -> str:
        """The ``sub`` a delivery to ``url`` (as the request arrived) must carry."""
        if self._public_url is None:
            return url
        parts = urlsplit(url)
        return self._public_url + parts.path + (f"?{parts.query}" if parts.query else "")

    def verify(self, signature_header: str | None, raw_body: bytes, url: str) -> Claims:
        """Check the ``Upstash-Signature`` header of a request to ``url`` carrying ``raw_body``
        (the bytes as received, before any parsing); ``InvalidSignature`` if anything is off."""
        token = (signature_header or "").strip()
        if not token:
            raise InvalidSignature("MISSING_SIGNATURE", "no Upstash-Signature header")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidSignature("MALFORMED_TOKEN", f"longer than {MAX_TOKEN_LENGTH} characters")
        claims, key = self._decode(token)
        times = self._check_times(claims)
        jwt_id = claims["jti"]
        if not isinstance(jwt_id, str) or not 0 < len(jwt_id) <= MAX_TOKEN_ID_LENGTH:
            raise InvalidSignature(
                "MALFORMED_TOKEN", f"jti is not a string of 1 to {MAX_TOKEN_ID_LENGTH} characters"
            )
        subject = self.expected_subject(url)
        if claims["sub"] != subject:
            raise InvalidSignature(
                "WRONG_SUBJECT", f"signed for {claims['sub']!r}, received at {subject!r}"
            )
        signed_hash = claims["body"]
        if not isinstance(signed_hash, str):
            raise InvalidSignature("MALFORMED_TOKEN", "the body claim is not a string")
        actual = base64.urlsafe_b64encode(hashlib.sha256(raw_body).digest()).decode()
        # QStash's example pads the hash and the SDKs' helpers do not: compare without padding.
        if not hmac.compare_digest(signed_hash.rstrip("="), actual.rstrip("=")):
            raise InvalidSignature("BODY_MISMATCH", "the body is not the one that was signed")
        return Claims(
            subject=claims["sub"],
            body_hash=signed_hash,
            expires_at=_instant(times["exp"]),
            not_before=_instant(times["nbf"]),
            issued_at=_instant(times["iat"]) if "iat" in times else None,
            jwt_id=jwt_id,
            key=key,
            usable_until=_instant(min(times["exp"] + self._leeway, _LAST_INSTANT)),
        )

    def _check_times(self, claims: dict[str, Any]) -> dict[str, float]:
        """``exp``, ``nbf`` and (if present) ``iat`` as numbers, judged against now. Done here
        rather than by PyJWT, which lets a huge, infinite or string time through to whoever
        turns it into a datetime."""
        times: dict[str, float] = {}
        for name in _TIME_CLAIMS:
            if name not in claims:
                continue
            value = claims[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                # Compared before any float(): an int of 400 digits has none. NaN fails too.
                or not 0 <= value <= _LAST_INSTANT
            ):
                raise InvalidSignature("MALFORMED_TOKEN", f"{name} is not a time in unix seconds")
            times[name] = float(value)
        now = self._clock()
        if times["exp"] <= now - self._leeway:
            raise InvalidSignature("EXPIRED", "the token has expired")
        if times["nbf"] > now + self._leeway:
            raise InvalidSignature("NOT_YET_VALID", "the token is not yet valid (nbf)")
        if times.get("iat", 0.0) > now + self._leeway:
            raise InvalidSignature("NOT_YET_VALID", "the token was issued in the future (iat)")
        if times["exp"] > now + MAX_TOKEN_LIFETIME_SECONDS + self._leeway:
            raise InvalidSignature(
                "LIFETIME_TOO_LONG",
                f"the token expires more than {MAX_TOKEN_LIFETIME_SECONDS:g} s from now",
            )
        return times

    def _decode(self, token: str) -> tuple[dict[str, Any], Literal["current", "next"]]:
        # Find the key whose HMAC matches first, then judge the claims once with it: trying the
        # next key after, say, an expiry would only report a signature mismatch.
        for name, key in self._keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    issuer=ISSUER,
                    options={
                        "require": ["iss", "sub", "exp", "nbf", "body", "jti"],
                        # The times are checked by ``_check_times``.
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidIssuerError as exc:
                raise InvalidSignature("WRONG_ISSUER", str(exc)) from exc
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidSignature("MISSING_CLAIM", str(exc)) from exc
            except jwt.InvalidAudienceError as exc:
                raise InvalidSignature("WRONG_AUDIENCE", str(exc)) from exc
            except (jwt.InvalidTokenError, ValueError, TypeError, RecursionError) as exc:
                # PyJWT parses the header before it checks anything; what it does not wrap
                # (a header nested too deep for ``json``) is malformed all the same.
                raise InvalidSignature("MALFORMED_TOKEN", f"{type(exc).__name__}: {exc}") from exc
            return claims, name
        raise InvalidSignature("BAD_SIGNATURE", "not signed with the current or the next key")


def _instant(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
