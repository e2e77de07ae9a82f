import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import jwt
import pytest
from qstash import Receiver
from qstash.errors import SignatureError

from jobsvc.localqstash.cron import load_zone, never_fires
from jobsvc.localqstash.errors import BadRequest
from jobsvc.localqstash.schedules import next_fire_time, parse_cron
from jobsvc.localqstash.signing import new_signing_key, sign

CURRENT = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


def test_signature_verifies_with_the_sdk_receiver() -> None:
    token = sign(CURRENT, url="http://127.0.0.1:9/a?x=1", body=b'{"n":1}')
    Receiver(CURRENT, NEXT).verify(signature=token, body='{"n":1}', url="http://127.0.0.1:9/a?x=1")
    claims = jwt.decode(token, CURRENT, algorithms=["HS256"], options={"verify_sub": False})
    assert claims["iss"] == "Upstash"
    assert "aud" not in claims
    assert isinstance(claims["jti"], str)
    assert claims["nbf"] <= time.time()


@pytest.mark.parametrize(
    ("body", "url"), [(b"tampered", "http://127.0.0.1:9/a"), (b"original", "http://other/a")]
)
def test_signature_rejects_other_body_or_url(body: bytes, url: str) -> None:
    token = sign(CURRENT, url="http://127.0.0.1:9/a", body=b"original")
    with pytest.raises(SignatureError):
        Receiver(CURRENT, NEXT).verify(signature=token, body=body.decode(), url=url)


def test_new_keys_look_like_qstash_keys() -> None:
    key = new_signing_key()
    assert key.startswith("sig_")
    assert len(key) == 32
    assert key != new_signing_key()


def test_cron_in_utc_and_with_time_zone() -> None:
    after = datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(next_fire_time("0 9 * * *", after), UTC) == datetime(
        2026, 3, 2, 9, 0, tzinfo=UTC
    )
    ny = next_fire_time("CRON_TZ=America/New_York 0 9 * * *", after)
    assert datetime.fromtimestamp(ny, ZoneInfo("America/New_York")).hour == 9
    assert parse_cron("CRON_TZ=Europe/Berlin */5 * * * *")[1] == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    "cron",
    [
        "",
        "* * * *",
        "61 * * * *",
        "* * * * * *",
        "CRON_TZ=Mars/Base 0 9 * * *",
        "0 0 31 2 *",  # February never has a 31st
        "0 0 30 2 *",
        "CRON_TZ=America 0 9 * * *",  # a directory of zones, not a zone
        "CRON_TZ=" + "A" * 300 + " 0 9 * * *",
        "CRON_TZ=../../etc/passwd 0 9 * * *",
    ],
)
def test_bad_cron_expressions(cron: str) -> None:
    with pytest.raises(BadRequest):
        parse_cron(cron)


def test_whether_a_cron_ever_fires_is_answered_without_raising() -> None:
    assert never_fires("0 0 31 2 *")
    assert never_fires("0 0 31 4,6,9,11 *", ZoneInfo("Europe/Berlin"))
    assert not never_fires("0 0 29 2 *")  # a leap day comes every four years
    assert not never_fires("0 0 31 2 1")  # day of month or day of week: Mondays in February
    assert load_zone("America") is None
    assert load_zone("A" * 300) is None
    assert load_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
