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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt

ISSUER = "Upstash"
# ``nbf`` and ``iat`` are set to the signing time, so a receiver whose clock is a little behind
# QStash's would reject fresh tokens without some tolerance.
DEFAULT_CLOCK_TOLERANCE_SECONDS = 5.0


class InvalidSignature(Exception):
    """The delivery is not provably from QStash for this URL and body. ``reason`` is stable:

    ``MISSING_SIGNATURE``, ``MALFORMED_TOKEN``, ``BAD_SIGNATURE`` (neither key signed it),
    ``WRONG_ISSUER``, ``MISSING_CLAIM``, ``EXPIRED``, ``NOT_YET_VALID``, ``WRONG_AUDIENCE``,
    ``WRONG_SUBJECT`` (signed for another URL), ``BODY_MISMATCH``.
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
    jwt_id: str | None
    key: Literal["current", "next"]


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
        claims, key = self._decode(token)
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
            expires_at=_instant(claims["exp"]),
            not_before=_instant(claims["nbf"]),
            issued_at=_instant(claims["iat"]) if "iat" in claims else None,
            jwt_id=str(claims["jti"]) if claims.get("jti") is not None else None,
            key=key,
        )

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
                    leeway=self._leeway,
                    options={"require": ["iss", "sub", "exp", "nbf", "body"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError as exc:
                raise InvalidSignature("EXPIRED", str(exc)) from exc
            except jwt.ImmatureSignatureError as exc:
                raise InvalidSignature("NOT_YET_VALID", str(exc)) from exc
            except jwt.InvalidIssuerError as exc:
                raise InvalidSignature("WRONG_ISSUER", str(exc)) from exc
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidSignature("MISSING_CLAIM", str(exc)) from exc
            except jwt.InvalidAudienceError as exc:
                raise InvalidSignature("WRONG_AUDIENCE", str(exc)) from exc
            except jwt.InvalidTokenError as exc:
                raise InvalidSignature("MALFORMED_TOKEN", f"{type(exc).__name__}: {exc}") from exc
            return claims, name
        raise InvalidSignature("BAD_SIGNATURE", "not signed with the current or the next key")


def _instant(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)
