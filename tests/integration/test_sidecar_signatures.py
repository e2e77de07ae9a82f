"""The sidecar's signature matrix, on a real port over SQLite and PostgreSQL: every way a
delivery can fail to be QStash's own (forged, tampered, misaddressed, expired, not yet valid,
replayed, oversized, another algorithm, malformed) is refused and writes nothing, while tokens
signed with the current or the next key are accepted. The SDK's ``Receiver`` is the second
opinion wherever it judges the same thing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from qstash import Receiver
from qstash.errors import SignatureError
from sqlalchemy import Engine, func, select

from jobsvc.db import JobLog
from jobsvc.db.tables import job_delivery_tokens
from jobsvc.jobs import JobState, JobType, Schedule
from jobsvc.localqstash.signing import new_signing_key, sign
from jobsvc.service.deliveries import firing_job_id
from tests.integration import test_sidecar
from tests.integration.test_sidecar import (
    CRM,
    CRM_PATH,
    FAILED_PATH,
    PAYLOAD,
    Script,
    Sidecar,
    SidecarFactory,
    envelope,
    failure_callback,
    new_message_id,
    reason,
    stored_job,
)

make_sidecar = test_sidecar.make_sidecar  # the fixture, shared

# -- tokens made by hand -----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class From:
    """A time ``seconds`` from when the token is made (not when the module is imported)."""

    seconds: int
    text: bool = False

    def at(self, now: int) -> int | str:
        return str(now + self.seconds) if self.text else now + self.seconds


def claims_for(url: str, body: bytes, **changes: Any) -> dict[str, Any]:
    """QStash's claims for ``body`` delivered to ``url``, with ``changes`` (None drops one)."""
    now = int(time.time())
    changes = {k: v.at(now) if isinstance(v, From) else v for k, v in changes.items()}
    claims: dict[str, Any] = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "jwt_" + secrets.token_hex(12),
        "body": base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode(),
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def hs_token(
    key: str,
    claims: dict[str, Any],
    *,
    alg: str = "HS256",
    digest: Callable[[], Any] = hashlib.sha256,
) -> str:
    """An HMAC token whose header names ``alg`` (whatever MAC ``digest`` computes); the claims
    go through ``json`` as PyJWT's would, so ``inf`` becomes ``Infinity``."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    mac = hmac.new(key.encode(), f"{header}.{payload}".encode(), digest).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def tampered(token: str, **changes: Any) -> str:
    """``token`` with claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- what "nothing written" means -------------------------------------------------------------


def written(job_log: JobLog, engine: Engine) -> tuple[object, ...]:
    """Everything a delivery could have written: the jobs (with their histories), the
    schedules, every job's progress notes and the number of spent tokens."""
    jobs, _ = job_log.list(page_size=1000)
    schedules, _ = job_log.schedules.list(page_size=1000)
    progress = {job.id: job_log.progress.all(job.id) for job in jobs}
    with engine.connect() as connection:
        tokens = connection.execute(
            select(func.count()).select_from(job_delivery_tokens)
        ).scalar_one()
    return (jobs, schedules, progress, tokens)


def sdk(sidecar: Sidecar) -> Receiver:
    return Receiver(current_signing_key=sidecar.keys[0], next_signing_key=sidecar.keys[1])


def sdk_accepts(sidecar: Sidecar, token: str, body: bytes, url: str) -> bool:
    try:
        sdk(sidecar).verify(signature=token, body=body.decode(), url=url)
    except SignatureError:
        return False
    return True


def save_schedule(job_log: JobLog, schedule_id: str, **payload: Any) -> None:
    now = datetime.now(UTC)
    job_log.schedules.save(
        Schedule(
            id=schedule_id,
            cron="0 9 * * *",
            type=CRM,
            payload=payload or dict(PAYLOAD),
            retries=5,
            created_at=now,
            updated_at=now,
        )
    )


# -- the matrix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One refused request: POSTed to ``path`` with ``body`` and the token ``make`` returns
    (given the sidecar and the URL it is sent to); ``sdk_refuses``: whether the SDK's
    ``Receiver`` refuses that token too (it does not judge what only the sidecar checks)."""

    name: str
    reason: str
    make: Callable[[Sidecar, str, bytes], str | None]
    sdk_refuses: bool = True
    path: str = CRM_PATH
    status: int = 401


def _claims(**changes: Any) -> Callable[[Sidecar, str, bytes], str]:
    return lambda sidecar, url, body: hs_token(sidecar.keys[0], claims_for(url, body, **changes))


ROWS = [
    Row("forged", "BAD_SIGNATURE", lambda s, u, b: sign(new_signing_key(), url=u, body=b)),
    Row(
        "forged failure callback",
        "BAD_SIGNATURE",
        lambda s, u, b: sign(new_signing_key(), url=u, body=b),
        path=FAILED_PATH,
    ),
    Row(
        "tampered body",
        "BODY_MISMATCH",
        lambda s, u, b: sign(s.keys[0], url=u, body=b.replace(b"L1", b"L2")),
    ),
    Row(
        "tampered claims: exp",
        "BAD_SIGNATURE",
        lambda s, u, b: tampered(sign(s.keys[0], url=u, body=b), exp=int(time.time()) + 900),
    ),
    Row(
        "tampered claims: body",
        "BAD_SIGNATURE",
        lambda s, u, b: tampered(sign(s.keys[0], url=u, body=b"{}"), body=claims_for(u, b)["body"]),
    ),
    Row(
        "misaddressed: another job type",
        "WRONG_SUBJECT",
        lambda s, u, b: sign(s.keys[0], url=s.url + "/api/jobs/send-reminder", body=b),
    ),
    Row(
        "misaddressed: another host",
        "WRONG_SUBJECT",
        lambda s, u, b: sign(s.keys[0], url="https://jobs.example.com" + CRM_PATH, body=b),
    ),
    Row(
        "misaddressed: the failure callback's",
        "WRONG_SUBJECT",
        lambda s, u, b: sign(s.keys[0], url=s.url + FAILED_PATH, body=b),
    ),
    Row(
        "expired",
        "EXPIRED",
        lambda s, u, b: sign(s.keys[0], url=u, body=b, now=time.time() - 900),
    ),
    Row("not yet valid: nbf", "NOT_YET_VALID", _claims(nbf=From(600))),
    Row("not yet valid: iat", "NOT_YET_VALID", _claims(iat=From(600))),
    Row(
        "alg none",
        "MALFORMED_TOKEN",
        lambda s, u, b: jwt.encode(claims_for(u, b), None, algorithm="none"),
    ),
    Row(
        "HS384",
        "MALFORMED_TOKEN",
        lambda s, u, b: hs_token(s.keys[0], claims_for(u, b), alg="HS384", digest=hashlib.sha384),
    ),
    Row(
        "HS512",
        "MALFORMED_TOKEN",
        lambda s, u, b: hs_token(s.keys[0], claims_for(u, b), alg="HS512", digest=hashlib.sha512),
    ),
    Row(
        "RS256 over the key's HMAC",
        "MALFORMED_TOKEN",
        lambda s, u, b: hs_token(s.keys[0], claims_for(u, b), alg="RS256"),
    ),
    Row(
        "RS256, genuinely",
        "MALFORMED_TOKEN",
        lambda s, u, b: jwt.encode(claims_for(u, b), _RSA_KEY, algorithm="RS256"),
    ),
    Row("missing signature", "MISSING_SIGNATURE", lambda s, u, b: None),
    Row("empty signature", "MISSING_SIGNATURE", lambda s, u, b: ""),
    Row("malformed: a word", "MALFORMED_TOKEN", lambda s, u, b: "garbage"),
    Row("malformed: three parts", "MALFORMED_TOKEN", lambda s, u, b: "a.b.c"),
    Row(
        "malformed: a header nested deep",
        "MALFORMED_TOKEN",
        lambda s, u, b: f"{_b64(b'[' * 3000)}.e30.c2ln",
    ),
    Row("huge exp", "MALFORMED_TOKEN", _claims(exp=1e15), sdk_refuses=False),
    Row("exp of 400 digits", "MALFORMED_TOKEN", _claims(exp=10**400), sdk_refuses=False),
    Row("infinite exp", "MALFORMED_TOKEN", _claims(exp=float("inf"))),
    Row(
        "exp as text",
        "MALFORMED_TOKEN",
        _claims(exp=From(300, text=True)),
        sdk_refuses=False,
    ),
    Row("nbf far in the past", "MALFORMED_TOKEN", _claims(nbf=-1e300), sdk_refuses=False),
    Row(
        "a day long",
        "LIFETIME_TOO_LONG",
        _claims(exp=From(86400)),
        sdk_refuses=False,
    ),
    Row("no jti", "MISSING_CLAIM", _claims(jti=None), sdk_refuses=False),
    Row("no nbf", "MISSING_CLAIM", _claims(nbf=None)),
    Row("another issuer", "WRONG_ISSUER", _claims(iss="Someone")),
]


def test_every_refused_token_gets_its_status_and_writes_nothing(
    job_log: JobLog, engine: Engine, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    bodies = {CRM_PATH: envelope(job.id), FAILED_PATH: failure_callback(job.id, envelope(job.id))}
    before = written(job_log, engine)

    wrong: list[str] = []
    for row in ROWS:
        url, body = sidecar.url + row.path, bodies[row.path]
        token = row.make(sidecar, url, body)
        if token is None:  # post() would sign it: send it without the header
            sent = sidecar.http.post(url, content=body, headers={"Upstash-Message-Id": "msg_1"})
        else:
            sent = sidecar.post(row.path, body, headers={"Upstash-Signature": token})
        got = (sent.status_code, reason(sent))
        if got != (row.status, row.reason):
            wrong.append(f"{row.name}: {got}, not {(row.status, row.reason)}")
        if written(job_log, engine) != before:
            wrong.append(f"{row.name}: wrote to the job log")
            before = written(job_log, engine)
        if row.sdk_refuses and token is not None and sdk_accepts(sidecar, token, body, url):
            wrong.append(f"{row.name}: the SDK's Receiver accepts it")
    assert wrong == []
    assert script.calls == []
    assert job_log.get(job.id).state is JobState.PENDING


def test_tokens_of_the_current_and_the_next_key_are_accepted(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    for key in sidecar.keys:
        job = stored_job(job_log)
        url, body = sidecar.url + CRM_PATH, envelope(job.id)
        token = sign(key, url=url, body=body)
        sdk(sidecar).verify(signature=token, body=body.decode(), url=url)

        accepted = sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": token})

        assert (accepted.status_code, reason(accepted)) == (200, "COMPLETED")
        assert job_log.get(job.id).state is JobState.COMPLETED
    assert len(script.calls) == 2


# -- replays -----------------------------------------------------------------------------------


def test_a_replayed_token_is_refused_whatever_its_headers_and_writes_nothing(
    job_log: JobLog, engine: Engine, make_sidecar: SidecarFactory
) -> None:
    script = Script([RuntimeError("flaky"), {"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    url, body, message_id = sidecar.url + CRM_PATH, envelope(job.id), new_message_id()
    token = sign(sidecar.keys[0], url=url, body=body)
    first = sidecar.post(
        CRM_PATH, body, message_id=message_id, headers={"Upstash-Signature": token}
    )
    assert (first.status_code, reason(first)) == (503, "HANDLER_RETRY")
    after_first = written(job_log, engine)

    # The job waits for its retry: a replay that got through would run it now.
    replays = [
        {"Upstash-Message-Id": message_id},
        {"Upstash-Message-Id": new_message_id()},
        {"Upstash-Message-Id": message_id, "Upstash-Retried": "1"},
    ]
    for headers in replays:
        replayed = sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": token, **headers})
        assert (replayed.status_code, reason(replayed)) == (401, "TOKEN_REUSED"), headers
        assert written(job_log, engine) == after_first, headers
    assert len(script.calls) == 1
    sdk(sidecar).verify(signature=token, body=body.decode(), url=url)  # the SDK cannot tell

    # QStash's own retry is signed anew, and runs.
    retry = sidecar.post(CRM_PATH, body, message_id=message_id, retried=1)
    assert (retry.status_code, reason(retry)) == (200, "COMPLETED")

    # The failure callback's tokens are used once too.
    callback = failure_callback(job.id, body)
    callback_token = sign(sidecar.keys[0], url=sidecar.url + FAILED_PATH, body=callback)
    for expected in ((200, "RECORDED"), (401, "TOKEN_REUSED")):
        before = written(job_log, engine)
        answer = sidecar.post(FAILED_PATH, callback, headers={"Upstash-Signature": callback_token})
        assert (answer.status_code, reason(answer)) == expected
    assert written(job_log, engine) == before


def test_a_token_whose_claim_was_refused_stays_spent(
    job_log: JobLog, engine: Engine, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    job = stored_job(job_log)
    assert job_log.claim(job.id, qstash_message_id=None, retried=0, lease_seconds=60)
    url, body = sidecar.url + CRM_PATH, envelope(job.id)
    token = sign(sidecar.keys[0], url=url, body=body)
    busy = sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": token})
    assert (busy.status_code, reason(busy)) == (503, "JOB_BUSY")

    # The job is free again: its token, had the refused claim not spent it, would run it now.
    assert job_log.attempt_failed(job.id, "worker lost", final=False, attempt=1)
    before = written(job_log, engine)
    replayed = sidecar.post(CRM_PATH, body, headers={"Upstash-Signature": token})
    assert (replayed.status_code, reason(replayed)) == (401, "TOKEN_REUSED")
    assert written(job_log, engine) == before
    assert script.calls == []


def test_a_replayed_firing_creates_no_job_and_touches_no_schedule(
    job_log: JobLog, engine: Engine, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    save_schedule(job_log, "nightly-crm")
    save_schedule(job_log, "other", listingId="L9", agentId="A9")
    url, body, message_id = sidecar.url + CRM_PATH, envelope(None, schedule_id="nightly-crm"), "m1"
    token = sign(sidecar.keys[0], url=url, body=body)
    headers = {"Upstash-Signature": token, "Upstash-Schedule-Id": "nightly-crm"}
    fired = sidecar.post(CRM_PATH, body, message_id=message_id, headers=headers)
    assert (fired.status_code, reason(fired)) == (200, "COMPLETED")
    assert fired.json()["jobId"] == str(firing_job_id(message_id))
    after_first = written(job_log, engine)

    # As observed before: a new message id made a new firing, another schedule id moved it.
    for changed in (
        {"Upstash-Message-Id": "m2"},
        {"Upstash-Message-Id": "m2", "Upstash-Schedule-Id": "other"},
        {"Upstash-Message-Id": message_id, "Upstash-Schedule-Id": "other"},
    ):
        replayed = sidecar.post(CRM_PATH, body, headers={**headers, **changed})
        assert (replayed.status_code, reason(replayed)) == (401, "TOKEN_REUSED"), changed
        assert written(job_log, engine) == after_first, changed
    assert len(script.calls) == 1
    assert job_log.schedules.get("other").last_run_at is None


def test_a_firing_belongs_to_the_schedule_its_signed_body_names(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    script = Script([{"ran": True}])
    sidecar = make_sidecar(registry=script.registry())
    save_schedule(job_log, "nightly-crm")
    save_schedule(job_log, "other", listingId="L9", agentId="A9")
    named = envelope(None, schedule_id="nightly-crm")
    legacy = envelope(None)  # the body of a schedule created before bodies named it

    def fire(body: bytes, header: str | None) -> tuple[str | None, int]:
        headers = {"Upstash-Schedule-Id": header} if header is not None else {}
        answer = sidecar.post(CRM_PATH, body, headers=headers)
        assert (answer.status_code, reason(answer)) == (200, "COMPLETED")
        job = job_log.get(uuid.UUID(answer.json()["jobId"]))
        return job.schedule_id, job.max_retries

    # The header is not what decides: the signed body is.
    assert fire(named, "other") == ("nightly-crm", 5)
    assert fire(named, None) == ("nightly-crm", 5)
    # A body from before: the header counts if its schedule was created with this body...
    assert fire(legacy, "nightly-crm") == ("nightly-crm", 5)
    # ...and not if it names a schedule of another body, or one jobsvc does not know.
    assert fire(legacy, "other") == (None, 3)
    assert fire(legacy, "scd_elsewhere") == (None, 3)
    assert job_log.schedules.get("other").last_run_at is None
    assert job_log.schedules.get("nightly-crm").last_run_at is not None


# -- oversized bodies ---------------------------------------------------------------------------


def _raw_request(sidecar: Sidecar, head: str, body: bytes) -> bytes:
    """Send a request by hand; the answer's first bytes. The socket's timeout only turns a
    sidecar that waits for the rest of the body (as it did) into a failure."""
    address = urlsplit(sidecar.url)
    assert address.hostname is not None
    assert address.port is not None
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            received = connection.recv(65536)
            if not received:
                break
            answer += received
    return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_an_oversized_body_gets_413_before_it_is_read(
    job_log: JobLog, engine: Engine, make_sidecar: SidecarFactory
) -> None:
    sidecar = make_sidecar(max_body_bytes=1024)
    job = stored_job(job_log)
    before = written(job_log, engine)
    request = f"POST {CRM_PATH} HTTP/1.1\r\nHost: sidecar\r\nUpstash-Signature: x\r\n"

    # Announced: refused at once, with the promised terabyte never sent.
    declared = _raw_request(sidecar, request + "Content-Length: 1000000000000\r\n", b"{}")
    # Chunked: refused once it passes the cap, before its last chunk (never sent) arrives.
    chunk = b"3e8\r\n" + b"x" * 1000 + b"\r\n"
    chunked = _raw_request(sidecar, request + "Transfer-Encoding: chunked\r\n", chunk * 2)

    for answer in (declared, chunked):
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert b'"reason":"BODY_TOO_LARGE"' in answer
    assert written(job_log, engine) == before

    # A validly signed body over the cap is refused all the same; one under it is taken.
    big = envelope(job.id, listingId="L1" * 600, agentId="A1")
    refused = sidecar.post(CRM_PATH, big)
    assert (refused.status_code, reason(refused)) == (413, "BODY_TOO_LARGE")
    callback = sidecar.post(FAILED_PATH, failure_callback(job.id, big))
    assert (callback.status_code, reason(callback)) == (413, "BODY_TOO_LARGE")
    assert written(job_log, engine) == before
    taken = sidecar.post(CRM_PATH, envelope(job.id))
    assert (taken.status_code, reason(taken)) == (200, "COMPLETED")


def test_the_failure_callback_of_a_firing_is_recorded_under_its_signed_schedule(
    job_log: JobLog, make_sidecar: SidecarFactory
) -> None:
    sidecar = make_sidecar()
    save_schedule(job_log, "nightly-crm")
    body = envelope(None, schedule_id="nightly-crm")
    answer = sidecar.post(FAILED_PATH, failure_callback(None, body, message_id="msg_lost"))
    assert (answer.status_code, reason(answer)) == (200, "RECORDED")
    job = job_log.get(firing_job_id("msg_lost"))
    assert (job.state, job.schedule_id, job.type) == (
        JobState.FAILED,
        "nightly-crm",
        JobType.CRM_MATCH,
    )
