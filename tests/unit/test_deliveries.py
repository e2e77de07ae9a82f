"""What the sidecar reads from QStash's failure callback, and how a delivery's result becomes
an HTTP answer: pure functions, no I/O."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from jobsvc.handlers import MAX_ERROR_LENGTH
from jobsvc.service.deliveries import (
    DeliveryResult,
    FailureReport,
    InvalidFailureCallback,
    firing_job_id,
)
from jobsvc.webhooks import answer, status_code


def callback(**fields: Any) -> bytes:
    document: dict[str, Any] = {
        "status": 503,
        "body": base64.b64encode(b'{"reason": "HANDLER_RETRY", "message": "CRM down"}').decode(),
        "retried": 3,
        "maxRetries": 3,
        "sourceMessageId": "msg_1",
        "sourceBody": base64.b64encode(b'{"version": 1}').decode(),
        "dlqId": "dlq_1",
        "scheduleId": "nightly",
    }
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def test_a_failure_callback_is_read_field_by_field() -> None:
    report = FailureReport.parse(callback())

    assert report == FailureReport(
        source_message_id="msg_1",
        dlq_id="dlq_1",
        source_body=b'{"version": 1}',
        status=503,
        body=b'{"reason": "HANDLER_RETRY", "message": "CRM down"}',
        retried=3,
        max_retries=3,
        schedule_id="nightly",
    )
    # The sidecar's own report of the failed attempt: its error stays the job's error.
    assert report.describe() == "CRM down"


@pytest.mark.parametrize(
    ("fields", "described"),
    [
        (
            {"status": 401, "body": base64.b64encode(b'{"reason": "BAD_SIGNATURE"}').decode()},
            'QStash gave up after 4 deliveries; the last one got HTTP 401: {"reason": '
            '"BAD_SIGNATURE"}',
        ),
        (
            {"status": 502, "body": ""},
            "QStash gave up after 4 deliveries; the last one got HTTP 502",
        ),
        (
            {"status": 0, "body": "", "error": "timeout", "retried": None},
            "QStash gave up; the last one got timeout",
        ),
    ],
)
def test_other_last_answers_are_described(fields: dict[str, Any], described: str) -> None:
    assert FailureReport.parse(callback(**fields)).describe() == described


def test_a_long_last_answer_is_clipped() -> None:
    body = base64.b64encode(b"x" * 5000).decode()
    described = FailureReport.parse(callback(status=500, body=body)).describe()
    assert len(described) < MAX_ERROR_LENGTH
    assert described.startswith("QStash gave up after 4 deliveries; the last one got HTTP 500: xxx")
    assert described.endswith("…")


def test_an_html_error_page_as_last_answer_keeps_only_its_words() -> None:
    page = (
        "<html>\r\n<head><title>502 Bad Gateway</title><style>body { color: red }</style>"
        "</head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx"
        "</center>\x00\x1b[31m<script>alert(1)</script>\r\n" + "<!-- padding -->" * 5000
    ) + "</body></html>"
    body = base64.b64encode(page.encode()).decode()
    described = FailureReport.parse(callback(status=502, body=body)).describe()
    assert described == (
        "QStash gave up after 4 deliveries; the last one got HTTP 502: "
        "502 Bad Gateway 502 Bad Gateway nginx [31m"
    )


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "body is not JSON"),
        (b"[]", "body is not a JSON object"),
        (callback(dlqId=None), "dlqId is missing"),
        (callback(sourceMessageId=7), "sourceMessageId is not a string"),
        (callback(sourceBody="!!!"), "sourceBody is not base64"),
        (callback(status="500"), "status is not an integer"),
    ],
)
def test_a_body_that_is_no_failure_callback_is_refused(body: bytes, complaint: str) -> None:
    with pytest.raises(InvalidFailureCallback, match=complaint):
        FailureReport.parse(body)


def test_a_firing_job_id_is_stable_per_message() -> None:
    assert firing_job_id("msg_1") == firing_job_id("msg_1")
    assert firing_job_id("msg_1") != firing_job_id("msg_2")
    assert firing_job_id("msg_1").version == 5


def test_results_become_answers_whose_status_steers_qstash() -> None:
    job_id = uuid.uuid4()
    done = answer(DeliveryResult.done("COMPLETED", "job completed", job_id))
    retry = answer(DeliveryResult.retry("HANDLER_RETRY", "later", job_id, timedelta(seconds=1.2)))
    permanent = answer(DeliveryResult.permanent("INVALID_ENVELOPE", "not JSON"))

    assert (done.status_code, json.loads(done.body)) == (
        200,
        {"reason": "COMPLETED", "message": "job completed", "jobId": str(job_id)},
    )
    assert "retry-after" not in done.headers
    assert (retry.status_code, retry.headers["retry-after"]) == (503, "2")  # rounded up
    assert (permanent.status_code, permanent.headers["upstash-nonretryable-error"]) == (
        489,
        "true",
    )
    assert json.loads(permanent.body) == {"reason": "INVALID_ENVELOPE", "message": "not JSON"}
    assert status_code(DeliveryResult.permanent("X", "y")) == 489
