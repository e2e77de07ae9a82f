"""The API contract: the generated modules, the JSON that callers and the README send with grpcurl,
the service's shape, and the grpcurl binary the integration tests rely on."""

import json
import subprocess
import sysconfig
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from jobsvc import jobs
from jobsvc.v1 import job_service_pb2, job_service_pb2_grpc, jobs_pb2, payloads_pb2, schedules_pb2

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sysconfig.get_path("scripts")) / "grpcurl"

# name: (request, response, server streaming). No RPC streams from the client.
RPCS = {
    "Enqueue": ("EnqueueRequest", "EnqueueResponse", False),
    "EnqueueBatch": ("EnqueueBatchRequest", "EnqueueBatchResponse", False),
    "GetStatus": ("GetStatusRequest", "GetStatusResponse", False),
    "WatchJob": ("WatchJobRequest", "WatchJobResponse", True),
    "ListJobs": ("ListJobsRequest", "ListJobsResponse", False),
    "CancelJob": ("CancelJobRequest", "CancelJobResponse", False),
    "RetryJob": ("RetryJobRequest", "RetryJobResponse", False),
    "Schedule": ("ScheduleRequest", "ScheduleResponse", False),
    "GetSchedule": ("GetScheduleRequest", "GetScheduleResponse", False),
    "ListSchedules": ("ListSchedulesRequest", "ListSchedulesResponse", False),
    "PauseSchedule": ("PauseScheduleRequest", "PauseScheduleResponse", False),
    "ResumeSchedule": ("ResumeScheduleRequest", "ResumeScheduleResponse", False),
    "DeleteSchedule": ("DeleteScheduleRequest", "DeleteScheduleResponse", False),
}

PAYLOADS = ["syndicate_listing", "send_reminder", "crm_match", "send_notification"]


def test_readme_enqueue_call_parses() -> None:
    request = json_format.Parse(
        '{"syndicateListing": {"listingId": "L1", "platforms": ["zillow"]}}',
        job_service_pb2.EnqueueRequest(),
    )
    assert request.WhichOneof("payload") == "syndicate_listing"
    assert request.syndicate_listing.listing_id == "L1"
    assert list(request.syndicate_listing.platforms) == ["zillow"]
    # Unset options stay distinguishable from zero, so the server can apply its defaults.
    assert not request.HasField("retries")
    assert request.WhichOneof("start") is None
    assert not request.HasField("handler_timeout")
    assert request.deduplication_id == ""


def test_readme_get_status_call_parses() -> None:
    job_id = str(uuid.uuid4())
    request = json_format.Parse(json.dumps({"jobId": job_id}), job_service_pb2.GetStatusRequest())
    assert request.job_id == job_id


def test_readme_schedule_call_parses() -> None:
    request = json_format.Parse(
        '{"cron": "0 9 * * *", "crmMatch": {"listingId": "L1", "agentId": "A1"}}',
        job_service_pb2.ScheduleRequest(),
    )
    assert request.WhichOneof("timing") == "cron"
    assert request.cron == "0 9 * * *"
    assert request.WhichOneof("payload") == "crm_match"
    assert (request.crm_match.listing_id, request.crm_match.agent_id) == ("L1", "A1")
    assert request.time_zone == ""
    assert request.schedule_id == ""


def test_enqueue_options_in_json() -> None:
    request = json_format.Parse(
        json.dumps(
            {
                "sendReminder": {
                    "applicantId": "APP1",
                    "reminderType": "REMINDER_TYPE_DAY3",
                    "missingDocs": ["pay_stub", "id_card"],
                },
                "delay": "172800s",
                "retries": 0,
                "deduplicationId": "reminder-APP1-day3",
                "handlerTimeout": "30s",
            }
        ),
        job_service_pb2.EnqueueRequest(),
    )
    assert request.send_reminder.reminder_type == payloads_pb2.REMINDER_TYPE_DAY3
    assert list(request.send_reminder.missing_docs) == ["pay_stub", "id_card"]
    assert request.WhichOneof("start") == "delay"
    assert request.delay == Duration(seconds=2 * 24 * 3600)
    # retries is `optional`: an explicit 0 (no retry) is not the same as unset (default 3).
    assert request.HasField("retries")
    assert request.retries == 0
    assert request.deduplication_id == "reminder-APP1-day3"
    assert request.handler_timeout == Duration(seconds=30)


def test_send_notification_template_data_is_free_form() -> None:
    request = json_format.Parse(
        json.dumps(
            {
                "sendNotification": {
                    "type": "NOTIFICATION_TYPE_ADVERSE_ACTION",
                    "recipientId": "R1",
                    "templateId": "adverse-action-v2",
                    "templateData": {"reasons": ["credit"], "score": 512, "nested": {"a": None}},
                }
            }
        ),
        job_service_pb2.EnqueueRequest(),
    )
    notification = request.send_notification
    assert notification.type == payloads_pb2.NOTIFICATION_TYPE_ADVERSE_ACTION
    assert json_format.MessageToDict(notification.template_data) == {
        "reasons": ["credit"],
        "score": 512,
        "nested": {"a": None},
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # The ADR's wire names are not the gRPC enum names: grpcurl callers write the enum name.
        (
            '{"sendReminder": {"applicantId": "A", "reminderType": "day1"}}',
            "Invalid enum value day1",
        ),
        (
            '{"syndicateListing": {"listingId": "L1", "platform": ["zillow"]}}',
            'no field named "platform"',
        ),
        (
            '{"syndicateListing": {"listingId": "L1"}, "crmMatch": {"listingId": "L1"}}',
            'multiple "payload" oneof fields',
        ),
        (
            '{"syndicateListing": {"listingId": "L1"}, "delay": "5s",'
            ' "notBeforeTime": "2030-01-01T00:00:00Z"}',
            'multiple "start" oneof fields',
        ),
    ],
    ids=["adr-enum-name", "unknown-field", "two-payloads", "delay-and-not-before"],
)
def test_malformed_json_is_rejected_at_the_edge(body: str, error: str) -> None:
    with pytest.raises(json_format.ParseError, match=error):
        json_format.Parse(body, job_service_pb2.EnqueueRequest())


def test_enqueue_response_json_has_the_readme_shape() -> None:
    job_id = str(uuid.uuid4())
    response = job_service_pb2.EnqueueResponse(
        job=jobs_pb2.Job(
            id=job_id,
            type=jobs_pb2.JOB_TYPE_SYNDICATE_LISTING,
            state=jobs_pb2.JOB_STATE_PENDING,
            max_retries=3,
            syndicate_listing=payloads_pb2.SyndicateListing(listing_id="L1", platforms=["zillow"]),
        )
    )
    document = json.loads(json_format.MessageToJson(response))
    assert document["job"]["id"] == job_id
    assert document["job"]["state"] == "JOB_STATE_PENDING"
    assert document["job"]["type"] == "JOB_TYPE_SYNDICATE_LISTING"
    assert document["job"]["syndicateListing"] == {"listingId": "L1", "platforms": ["zillow"]}


def test_job_state_names() -> None:
    names = [value.name for value in jobs_pb2.JobState.DESCRIPTOR.values]
    assert names == [
        "JOB_STATE_UNSPECIFIED",
        "JOB_STATE_PENDING",
        "JOB_STATE_PROCESSING",
        "JOB_STATE_RETRYING",
        "JOB_STATE_COMPLETED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
    ]
    assert jobs_pb2.JobState.Value("JOB_STATE_UNSPECIFIED") == 0


def test_proto_enums_cover_the_domain_vocabulary() -> None:
    # Conversion at the edge maps JOB_STATE_<NAME> <-> jobs.JobState.<NAME>, same for JobType.
    states = {v.name for v in jobs_pb2.JobState.DESCRIPTOR.values} - {"JOB_STATE_UNSPECIFIED"}
    assert states == {f"JOB_STATE_{state.name}" for state in jobs.JobState}
    types = {v.name for v in jobs_pb2.JobType.DESCRIPTOR.values} - {"JOB_TYPE_UNSPECIFIED"}
    assert types == {f"JOB_TYPE_{job_type.name}" for job_type in jobs.JobType}


def test_payload_oneof_is_the_same_everywhere() -> None:
    for message in (
        job_service_pb2.EnqueueRequest,
        job_service_pb2.ScheduleRequest,
        jobs_pb2.Job,
        schedules_pb2.Schedule,
    ):
        oneof = message.DESCRIPTOR.oneofs_by_name["payload"]
        assert [field.name for field in oneof.fields] == PAYLOADS, message.DESCRIPTOR.name
        assert [field.message_type.name for field in oneof.fields] == [
            "SyndicateListing",
            "SendReminder",
            "CrmMatch",
            "SendNotification",
        ]


def test_job_type_order_matches_payload_order() -> None:
    # JOB_TYPE_<X> is the type of the payload field <x>: the conversion relies on the pairing.
    types = [v.name for v in jobs_pb2.JobType.DESCRIPTOR.values][1:]
    assert types == [f"JOB_TYPE_{name.upper()}" for name in PAYLOADS]


def test_service_has_every_rpc_with_its_streaming_flags() -> None:
    service = job_service_pb2.DESCRIPTOR.services_by_name["JobService"]
    assert service.full_name == "jobsvc.v1.JobService"
    assert {method.name for method in service.methods} == set(RPCS)
    for name, (request, response, server_streaming) in RPCS.items():
        method = service.methods_by_name[name]
        assert method.input_type.full_name == f"jobsvc.v1.{request}", name
        assert method.output_type.full_name == f"jobsvc.v1.{response}", name
        assert method.client_streaming is False, name
        assert method.server_streaming is server_streaming, name


def test_generated_servicer_and_stub_cover_every_rpc() -> None:
    for name in RPCS:
        assert callable(getattr(job_service_pb2_grpc.JobServiceServicer, name)), name
    assert callable(job_service_pb2_grpc.add_JobServiceServicer_to_server)


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_grpcurl_binary_runs() -> None:
    result = _grpcurl("--version")
    assert result.returncode == 0, result.stderr
    # grpcurl prints its version on stderr.
    assert result.stderr.strip() == "grpcurl v1.8.6"


def test_grpcurl_reads_the_protos_and_lists_every_rpc() -> None:
    proto_args = ["-import-path", str(ROOT / "protos"), "-proto", "jobsvc/v1/job_service.proto"]
    listed = _grpcurl(*proto_args, "list", "jobsvc.v1.JobService")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {f"jobsvc.v1.JobService.{name}" for name in RPCS}
    described = _grpcurl(*proto_args, "describe", "jobsvc.v1.JobService.WatchJob")
    assert described.returncode == 0, described.stderr
    assert "returns ( stream .jobsvc.v1.WatchJobResponse )" in described.stdout
