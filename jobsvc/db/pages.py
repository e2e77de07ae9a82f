"""Page sizes and opaque page tokens for keyset pagination (AIP-158).

A token holds the sort key of the last item returned and a fingerprint of the filters it was
issued for: reusing it with other filters is an error rather than a silently wrong page. Tokens
are signed (HMAC-SHA256 with a server-side key), so a caller cannot forge a position, and one
that was tampered with is refused before any of it is read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from jobsvc.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Ours are under 200 characters; a longer one is refused unread.
MAX_TOKEN_CHARS = 1024
MAC_BYTES = 16


def page_size(requested: int | None) -> int:
    """0 or None: the default (50); above the maximum (1000): the maximum; negative: an error."""
    if requested is None or requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*filters: object) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def derived_key(database_url: str) -> bytes:
    """The signing key when none is configured: the same for every replica on one database
    (and secret as far as its URL is, password included), so tokens survive restarts."""
    return hashlib.sha256(b"jobsvc page tokens\0" + database_url.encode()).digest()


def _mac(key: bytes, document: bytes) -> bytes:
    return hmac.new(key, document, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(position: list[str], filters: str, key: bytes) -> str:
    """A token for the page after ``position`` (the sort key of the last item returned), for a
    request with these ``filters``, signed with ``key``."""
    document = json.dumps({"k": position, "f": filters}, separators=(",", ":")).encode()
    return f"{_b64(document)}.{_b64(_mac(key, document))}"


def aware_time(text: str) -> datetime:
    """An ISO 8601 time with its offset, as a token holds it; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive time")
    return moment


def decode(
    token: str, filters: str, key: bytes, parsers: Sequence[Callable[[str], Any]]
) -> list[Any]:
    """The position in ``token``, each part read by its parser; InvalidArgument on
    ``page_token`` if it is not a token signed with ``key``, cannot be read, or was issued for
    other filters. Nothing of a token is parsed before its signature is checked."""
    not_ours = InvalidArgument(FieldViolation("page_token", "is not a token we issued"))
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise not_ours
    body, signature = token.split(".")
    try:
        document = _unb64(body)
        valid = hmac.compare_digest(_unb64(signature), _mac(key, document))
    except (ValueError, binascii.Error):
        raise not_ours from None
    if not valid:
        raise not_ours
    try:
        parsed = json.loads(document)
        position, issued_for = parsed["k"], parsed["f"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise not_ours from None
    if issued_for != filters:
        raise InvalidArgument(
            FieldViolation("page_token", "was issued for a request with other filters")
        )
    if not (
        isinstance(position, list)
        and len(position) == len(parsers)
        and all(isinstance(part, str) for part in position)
    ):
        raise not_ours
    try:
        return [parse(part) for parse, part in zip(parsers, position, strict=True)]
    except (ValueError, TypeError, OverflowError):
        raise not_ours from None
