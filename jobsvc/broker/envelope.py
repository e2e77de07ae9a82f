"""The body of every message jobsvc hands to QStash, and how the sidecar reads it back.

One JSON object, the same for all brokers::

    {"version": 1, "jobId": "<uuid>", "type": "crm-match", "payload": {...}, "timeoutSeconds": 30}

``jobId`` is absent in the body of a cron schedule: that body is fixed while every firing is a
job of its own, so the sidecar creates the job row when the firing arrives. ``type`` repeats the
job type of the URL so a body can never run under another type's handler. ``timeoutSeconds``
(optional) bounds one handler run.
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


class InvalidEnvelope(ValueError):
    """A body that is not a job envelope this version of jobsvc understands; delivering it
    again cannot help, so the sidecar should treat it as a permanent failure."""


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A job as it travels through the broker: its type, payload and (unless it is a cron
    schedule's body) the id of its row in the job log."""

    job_type: JobType
    payload: dict[str, Any]
    job_id: uuid.UUID | None = None
    timeout: timedelta | None = None

    def encode(self) -> bytes:
        document: dict[str, Any] = {"version": ENVELOPE_VERSION}
        if self.job_id is not None:
            document["jobId"] = str(self.job_id)
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
        return cls(job_type=job_type, payload=payload, job_id=job_id, timeout=timeout)
