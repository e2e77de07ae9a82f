"""The envelope a schedule's body carries: it names its schedule, and nothing else can."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from jobsvc.broker import Envelope, InvalidEnvelope
from jobsvc.jobs import JobType

PAYLOAD = {"listingId": "L1", "agentId": "A1"}


def body(**fields: Any) -> bytes:
    document = {"version": 1, "type": "crm-match", "payload": PAYLOAD, **fields}
    return json.dumps(document).encode()


def test_a_schedule_body_names_its_schedule() -> None:
    envelope = Envelope(job_type=JobType.CRM_MATCH, payload=PAYLOAD, schedule_id="nightly-crm")
    encoded = envelope.encode()
    assert json.loads(encoded)["scheduleId"] == "nightly-crm"
    assert Envelope.decode(encoded) == envelope
    # A body from before schedules named themselves still reads, naming none.
    assert Envelope.decode(body()).schedule_id is None


@pytest.mark.parametrize(
    "fields",
    [
        {"scheduleId": 7},
        {"scheduleId": ""},
        {"scheduleId": "x" * 257},
        {"scheduleId": "nightly", "jobId": str(uuid.uuid4())},
    ],
    ids=["number", "empty", "long", "with-a-job-id"],
)
def test_a_schedule_id_that_cannot_be_one_is_invalid(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidEnvelope):
        Envelope.decode(body(**fields))


def test_a_job_envelope_names_no_schedule() -> None:
    with pytest.raises(ValueError, match="names no schedule"):
        Envelope(job_type=JobType.CRM_MATCH, payload={}, job_id=uuid.uuid4(), schedule_id="s")
