"""The sidecar's signature check, case by case, with the SDK's ``Receiver`` as a second opinion:
whatever our local QStash server signs both accept, and what ours rejects the SDK rejects too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from qstash import Receiver
from qstash.errors import SignatureError

from jobsvc.localqstash.signing import new_signing_key, sign
from jobsvc.webhooks.signature import InvalidSignature, SignatureVerifier

CURRENT = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"
URL = "http://127.0.0.1:8000/api/jobs/crm-match"
BODY = b'{"version":1,"type":"crm-match","payload":{"listingId":"L1","agentId":"A1"}}'


def make_token(
    key: str = CURRENT, *, signed: bytes = BODY, drop: tuple[str, ...] = (), **claims: Any
) -> str:
    """A token shaped like QStash's (as ``sign`` makes them) with ``claims`` replaced and the
    ``drop`` claims removed; the ``body`` claim is the hash of ``signed``."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": "Upstash",
        "sub": URL,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "jwt_test",
        "body": base64.urlsafe_b64encode(hashlib.sha256(signed).digest()).decode(),
    }
    values.update(claims)
    for name in drop:
        del values[name]
    return jwt.encode(values, key, algorithm="HS256", headers={"typ": "JWT"})


def verifier(**options: Any) -> SignatureVerifier:
    options.setdefault("public_url", None)
    return SignatureVerifier(CURRENT, NEXT, **options)


def rejection(token: str | None, body: bytes = BODY, url: str = URL, **options: Any) -> str:
    with pytest.raises(InvalidSignature) as info:
        verifier(**options).verify(token, body, url)
    return info.value.reason


def test_valid_with_the_current_key() -> None:
    now = int(time.time())
    claims = verifier().verify(sign(CURRENT, url=URL, body=BODY, now=now), BODY, URL)
    assert claims.key == "current"
    assert claims.subject == URL
    assert claims.expires_at.timestamp() == now + 300
    assert claims.not_before.timestamp() == now
    assert claims.issued_at is not None
    assert claims.issued_at.timestamp() == now
    assert claims.jwt_id is not None
    assert claims.jwt_id.startswith("jwt_")


def test_valid_with_the_next_key_after_a_rotation() -> None:
    claims = verifier().verify(sign(NEXT, url=URL, body=BODY), BODY, URL)
    assert claims.key == "next"


def test_only_the_current_key_when_there_is_no_next() -> None:
    only = SignatureVerifier(CURRENT, None, public_url=None)
    assert only.verify(make_token(CURRENT), BODY, URL).key == "current"
    with pytest.raises(InvalidSignature) as info:
        only.verify(make_token(NEXT), BODY, URL)
    assert info.value.reason == "BAD_SIGNATURE"


def test_wrong_key() -> None:
    assert rejection(make_token(new_signing_key())) == "BAD_SIGNATURE"


def test_tampered_body() -> None:
    assert rejection(make_token(), body=BODY.replace(b"L1", b"L2")) == "BODY_MISMATCH"
    assert rejection(make_token(), body=BODY + b" ") == "BODY_MISMATCH"


def test_wrong_subject() -> None:
    other = "http://127.0.0.1:8000/api/jobs/send-reminder"
    assert rejection(make_token(sub=other)) == "WRONG_SUBJECT"
    # The query string is part of the URL QStash called.
    assert rejection(make_token(), url=URL + "?x=1") == "WRONG_SUBJECT"


def test_expired() -> None:
    now = int(time.time())
    assert rejection(make_token(exp=now - 60, nbf=now - 360, iat=now - 360)) == "EXPIRED"


def test_clock_tolerance_admits_small_skew_only() -> None:
    now = int(time.time())
    just_expired = make_token(exp=now - 2)
    from_the_future = make_token(nbf=now + 2, iat=now + 2)
    for token in (just_expired, from_the_future):
        verifier(clock_tolerance_seconds=10).verify(token, BODY, URL)
    assert rejection(just_expired, clock_tolerance_seconds=0) == "EXPIRED"
    assert rejection(from_the_future, clock_tolerance_seconds=0) == "NOT_YET_VALID"


def test_not_before_in_the_future() -> None:
    now = int(time.time())
    assert rejection(make_token(nbf=now + 60)) == "NOT_YET_VALID"
    assert rejection(make_token(iat=now + 60)) == "NOT_YET_VALID"


def test_nbf_zero_and_no_iat_are_accepted() -> None:
    # QStash has signed with nbf=0 since 2024 and iat is optional.
    claims = verifier().verify(make_token(nbf=0, drop=("iat",)), BODY, URL)
    assert claims.not_before.timestamp() == 0
    assert claims.issued_at is None


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    assert rejection(header) == "MISSING_SIGNATURE"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", make_token() + "x!"],
    ids=["word", "three-parts", "two-parts", "bad-signature-encoding"],
)
def test_garbage_token(token: str) -> None:
    assert rejection(token) == "MALFORMED_TOKEN"


def test_other_algorithms_are_refused() -> None:
    now = int(time.time())
    claims = {"iss": "Upstash", "sub": URL, "exp": now + 300, "nbf": now, "body": "x"}
    unsigned = jwt.encode(claims, None, algorithm="none")
    hs512 = jwt.encode(claims, CURRENT * 3, algorithm="HS512")  # a key long enough for it
    assert rejection(unsigned) == "MALFORMED_TOKEN"
    assert rejection(hs512) == "MALFORMED_TOKEN"


def test_wrong_issuer_missing_claims_and_audience() -> None:
    assert rejection(make_token(iss="Someone")) == "WRONG_ISSUER"
    for claim in ("iss", "sub", "exp", "nbf", "body", "jti"):
        assert rejection(make_token(drop=(claim,))) == "MISSING_CLAIM", claim
    assert rejection(make_token(aud="elsewhere")) == "WRONG_AUDIENCE"
    verifier().verify(make_token(aud=""), BODY, URL)  # the SDKs' test helpers add it


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 1e15},
        {"exp": 10**400},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"exp": "2000000000"},
        {"exp": True},
        {"exp": [1]},
        {"nbf": -1e300},
        {"nbf": float("-inf")},
        {"nbf": "0"},
        {"iat": -1e300},
        {"iat": 10**400},
        {"iat": None},
    ],
    ids=repr,
)
def test_times_that_are_not_times_are_refused_not_crashed_on(claims: dict[str, Any]) -> None:
    assert rejection(make_token(**claims)) == "MALFORMED_TOKEN"


def test_a_token_living_longer_than_an_hour_is_refused() -> None:
    now = int(time.time())
    assert rejection(make_token(exp=now + 7200)) == "LIFETIME_TOO_LONG"
    assert rejection(make_token(exp=253402300799)) == "LIFETIME_TOO_LONG"  # the year 9999
    claims = verifier().verify(make_token(exp=now + 3000), BODY, URL)
    assert claims.usable_until.timestamp() == now + 3000 + 5  # exp plus the clock tolerance


@pytest.mark.parametrize("jti", [7, "", "x" * 129], ids=["number", "empty", "long"])
def test_the_token_id_must_be_a_short_string(jti: object) -> None:
    assert rejection(make_token(jti=jti)) == "MALFORMED_TOKEN"


def test_an_oversized_or_deeply_nested_token_is_malformed() -> None:
    nested = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=").decode()
    assert rejection(f"{nested}.e30.c2ln") == "MALFORMED_TOKEN"
    assert rejection(make_token(pad="x" * 5000)) == "MALFORMED_TOKEN"


def test_an_algorithm_named_in_the_header_is_not_obeyed() -> None:
    """The header says RS256 (or lowercase hs256) over a valid HS256 MAC: still refused."""
    signed = make_token()
    for alg in ("RS256", "hs256", "HS384", "none"):
        header = base64.urlsafe_b64encode(f'{{"alg":"{alg}","typ":"JWT"}}'.encode()).rstrip(b"=")
        _, payload, _ = signed.split(".")
        mac = hmac.new(CURRENT.encode(), header + b"." + payload.encode(), hashlib.sha256)
        token = f"{header.decode()}.{payload}.{base64.urlsafe_b64encode(mac.digest()).decode()}"
        assert rejection(token.rstrip("=")) == "MALFORMED_TOKEN", alg


def test_body_hash_with_or_without_padding() -> None:
    digest = base64.urlsafe_b64encode(hashlib.sha256(BODY).digest()).decode()
    assert digest.endswith("=")
    for body_claim in (digest, digest.rstrip("=")):
        verifier().verify(make_token(body=body_claim), BODY, URL)


def test_non_utf8_body() -> None:
    raw = b"\xff\xfe\x00\x80binary"
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # so the SDK's Receiver could not check it
    verifier().verify(sign(CURRENT, url=URL, body=raw), raw, URL)
    assert rejection(sign(CURRENT, url=URL, body=raw), body=raw[:-1] + b"\x81") == "BODY_MISMATCH"


def test_empty_body() -> None:
    verifier().verify(sign(CURRENT, url=URL, body=b""), b"", URL)


def test_public_url_behind_a_proxy() -> None:
    public = "https://jobs.example.com/jobsvc"
    token = sign(CURRENT, url=public + "/api/jobs/crm-match", body=BODY)
    behind = SignatureVerifier(CURRENT, NEXT, public_url=public + "/")
    assert behind.expected_subject("http://10.0.0.5:8000/api/jobs/crm-match") == (
        public + "/api/jobs/crm-match"
    )
    behind.verify(token, BODY, "http://10.0.0.5:8000/api/jobs/crm-match")
    behind.verify(token, BODY, "/api/jobs/crm-match")
    with pytest.raises(InvalidSignature) as info:
        behind.verify(token, BODY, "http://10.0.0.5:8000/api/jobs/send-reminder")
    assert info.value.reason == "WRONG_SUBJECT"
    # Without the public URL the internal address is what it compares with, and that differs.
    assert rejection(token, url="http://10.0.0.5:8000/api/jobs/crm-match") == "WRONG_SUBJECT"


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="current signing key"):
        SignatureVerifier("", NEXT, public_url=None)
    with pytest.raises(ValueError, match="public_url"):
        SignatureVerifier(CURRENT, NEXT, public_url="jobs.example.com")
    with pytest.raises(ValueError, match="clock_tolerance"):
        SignatureVerifier(CURRENT, NEXT, public_url=None, clock_tolerance_seconds=-1)


# -- second opinion: the official SDK's Receiver ---------------------------------------------

SDK = Receiver(current_signing_key=CURRENT, next_signing_key=NEXT)
SIGNED = [
    (URL, BODY),
    (URL, b""),
    ("http://127.0.0.1:8000/api/jobs/_failed", b'{"dlqId":"1725323658779-0"}'),
    ("https://jobs.example.com/api/jobs/send-notification?x=1&y=2", '{"name":"Zoë ✓"}'.encode()),
]


@pytest.mark.parametrize("key", [CURRENT, NEXT], ids=["current", "next"])
@pytest.mark.parametrize(("url", "body"), SIGNED)
def test_every_token_of_our_signer_is_accepted_by_both(key: str, url: str, body: bytes) -> None:
    token = sign(key, url=url, body=body)
    verifier().verify(token, body, url)
    SDK.verify(signature=token, body=body.decode(), url=url)


def _in(seconds: int) -> int:
    return int(time.time()) + seconds


# Tokens are made when the test runs (not at collection): their times are relative to now.
REJECTED: list[tuple[str, Callable[[], str], bytes]] = [
    ("BAD_SIGNATURE", lambda: make_token(new_signing_key()), BODY),
    ("BODY_MISMATCH", lambda: make_token(), BODY.replace(b"A1", b"A2")),
    ("WRONG_SUBJECT", lambda: make_token(sub=URL + "x"), BODY),
    ("EXPIRED", lambda: make_token(exp=_in(-120)), BODY),
    ("NOT_YET_VALID", lambda: make_token(nbf=_in(120)), BODY),
    ("NOT_YET_VALID", lambda: make_token(iat=_in(120)), BODY),
    ("MALFORMED_TOKEN", lambda: "garbage", BODY),
    ("WRONG_ISSUER", lambda: make_token(iss="Someone"), BODY),
    ("MISSING_CLAIM", lambda: make_token(drop=("nbf",)), BODY),
    ("WRONG_AUDIENCE", lambda: make_token(aud="elsewhere"), BODY),
]


@pytest.mark.parametrize(
    ("reason", "make", "body"), REJECTED, ids=[f"{i}-{r[0]}" for i, r in enumerate(REJECTED)]
)
def test_what_we_reject_the_sdk_rejects_too(
    reason: str, make: Callable[[], str], body: bytes
) -> None:
    token = make()
    assert rejection(token, body=body) == reason
    with pytest.raises(SignatureError):
        SDK.verify(signature=token, body=body.decode(), url=URL)
