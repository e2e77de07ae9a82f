"""The body of every message jobsvc hands to QStash, and how the sidecar reads it back.

One JSON object, the same for all brokers::

    {"version": 1, "jobId": "<uuid>", "type": "crm-match", "payload": {...}, "timeoutSeconds": 30}

``jobId`` is absent in the body of a cron schedule: that body is fixed while every firing is a
job of its own, so the sidecar creates the job row when the firing arrives. A schedule's body
names its schedule instead (``"scheduleId": "<id>"``): being signed, unlike QStash's
``Upstash-Schedule-Id`` header, it is what the sidecar attaches the firing to. ``type`` repeats
the job type of the URL so a body can never run under another type's handler.
``timeoutSeconds`` (optional) bounds one handler run.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobsvc.jobs import JobType

ENVELOPE_VERSION = 1
_JOB_TYPES = frozenset(t.value for t in JobType)
CONTENT_TYPE = "application/json"
MAX_SCHEDULE_ID_LENGTH = 256


class InvalidEnvelope(ValueError):
    """A body that is not a job envelope this version of jobsvc understands; delivering it
    again cannot help, so the sidecar should treat it as a permanent failure."""


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A job as it travels through the broker: its type, payload and the id of its row in
    the job log; or, as a cron schedule's body, no job id and the id of its schedule (None in
    the bodies of schedules created before schedules named themselves)."""

    job_type: JobType
    payload: dict[str, Any]
    job_id: uuid.UUID | None = None
    timeout: timedelta | None = None
    schedule_id: str | None = None

    def __post_init__(self) -> None:
        if self.job_id is not None and self.schedule_id is not None:
            raise ValueError("a job's envelope names no schedule")

    def encode(self) -> bytes:
        document: dict[str, Any] = {"version": ENVELOPE_VERSION}
        if self.job_id is not None:
            document["jobId"] = str(self.job_id)
        if self.schedule_id is not None:
            document["scheduleId"] = self.schedule_id
        document["type"] = self.job_type.value
        document["payload"] = self.payload
        if self.timeout is not None:
            document["timeoutSeconds"] = self.timeout.total_seconds()
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, body: bytes) -> Envelope:
        """Parse a delivered body; ``InvalidEnvelope`` names the first thing wrong with it."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidEnvelope(f"body is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidEnvelope("body is not a JSON object")
        if document.get("version") != ENVELOPE_VERSION:
            raise InvalidEnvelope(f"unsupported envelope version {document.get('version')!r}")
        raw_type = document.get("type")
        if not isinstance(raw_type, str) or raw_type not in _JOB_TYPES:
            raise InvalidEnvelope(f"unknown job type {raw_type!r}")
        job_type = JobType(raw_type)
        payload = document.get("payload")
        if not isinstance(payload, dict):
            raise InvalidEnvelope("payload is not a JSON object")
        job_id = None
        if "jobId" in document:
            try:
                job_id = uuid.UUID(str(document["jobId"]))
            except ValueError:
                raise InvalidEnvelope(f"jobId {document['jobId']!r} is not a UUID") from None
        timeout = None
        if "timeoutSeconds" in document:
            seconds = document["timeoutSeconds"]
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise InvalidEnvelope(f"timeoutSeconds {seconds!r} is not a positive number")
            timeout = timedelta(seconds=seconds)
        schedule_id = document.get("scheduleId")
        if "scheduleId" in document and (
            not isinstance(schedule_id, str)
            or not 0 < len(schedule_id) <= MAX_SCHEDULE_ID_LENGTH
            or job_id is not None
        ):
            raise InvalidEnvelope(
                f"scheduleId {schedule_id!r} is not a schedule id, or comes with a jobId"
            )
        return cls(
            job_type=job_type,
            payload=payload,
            job_id=job_id,
            timeout=timeout,
            schedule_id=schedule_id,
        )
