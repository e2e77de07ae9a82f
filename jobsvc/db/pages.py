"""Page sizes and opaque page tokens for keyset pagination (AIP-158).

A token holds the sort key of the last item returned and a fingerprint of the filters it was
issued for: reusing it with other filters is an error rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from jobsvc.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int | None) -> int:
    """0 or None: the default (50); above the maximum (1000): the maximum; negative: an error."""
    if requested is None or requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*filters: object) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def encode(key: list[str], filters: str) -> str:
    document = json.dumps({"k": key, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def decode(token: str, filters: str, length: int) -> list[str]:
    """The sort key in ``token``; InvalidArgument if it is malformed or was issued for other
    filters."""
    try:
        padded = token + "=" * (-len(token) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key = document["k"]
        issued_for = document["f"]
    except (ValueError, binascii.Error, KeyError, TypeError) as exc:
        raise InvalidArgument(FieldViolation("page_token", "is not a token we issued")) from exc
    if not (isinstance(key, list) and len(key) == length and all(isinstance(k, str) for k in key)):
        raise InvalidArgument(FieldViolation("page_token", "is not a token we issued"))
    if issued_for != filters:
        raise InvalidArgument(
            FieldViolation("page_token", "was issued for a request with other filters")
        )
    return key
