"""The ``Upstash-Signature`` JWT: HS256 over the delivered URL and the SHA-256 of the body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
TOKEN_LIFETIME_SECONDS = 300


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def body_hash(body: bytes) -> str:
    """base64url of SHA-256(body), padded as in QStash's documented example."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()


def sign(key: str, *, url: str, body: bytes, now: float | None = None) -> str:
    """A token that QStash receivers accept for ``body`` delivered to ``url``.

    Integer times, a string ``jti`` and no ``aud``: the official receivers reject anything else.
    """
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": "Upstash",
        "sub": url,
        "exp": issued + TOKEN_LIFETIME_SECONDS,
        "nbf": issued,
        "iat": issued,
        "jti": "jwt_" + secrets.token_hex(12),
        "body": body_hash(body),
    }
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _HEADER + b"." + payload
    signature = _b64(hmac.new(key.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def new_signing_key() -> str:
    """A fresh key in QStash's shape: ``sig_`` and 28 base58 characters."""
    return "sig_" + "".join(secrets.choice(_BASE58) for _ in range(28))
