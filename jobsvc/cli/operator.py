"""Operator commands over the gRPC API (``jobsvc.rpc.JobClient``): ``enqueue``, ``status``,
``jobs``, ``cancel``, ``retry`` and ``schedule create|list|get|pause|resume|delete``.

Each takes ``--target`` (else ``JOBSVC_TARGET``, else localhost:50051), ``--token`` (else
``JOBSVC_AUTH_TOKEN``), ``--tls-ca-file`` (else ``JOBSVC_TLS_CA_FILE``: TLS, verified with these
roots) and ``--json`` (print the RPC's response as the API's JSON, as grpcurl does). Exit codes: 0
done; 1 the service refused the request or could not be reached, said in one line with the
error's reason (``jobsvc status: JOB_NOT_FOUND job ... not found``); 2 a command line that cannot
be used (bad JSON, an unknown payload field, a bad duration or time); with ``--wait``, 3 the job
ended failed and 4 it ended cancelled (its status is printed all the same).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobsvc.cli.process import fail
from jobsvc.errors import JobServiceError
from jobsvc.jobs import Job, JobState, JobType, Schedule
from jobsvc.payloads import PAYLOAD_TYPES, Payload

if TYPE_CHECKING:  # grpc is imported only when a command runs, not for every `jobsvc --help`
    from jobsvc.rpc import EnqueueResult, JobClient

DEFAULT_TARGET = "localhost:50051"  # jobsvc.rpc.client.DEFAULT_TARGET, without importing grpc
JOB_TYPES = [job_type.value for job_type in JobType]
STATES = [state.value for state in JobState]
_SPAN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A command line that cannot be turned into a request (exit code 2)."""


# How a waited-for job ended, as the exit code of `--wait` (0: completed).
EXIT_FAILED = 3
EXIT_CANCELLED = 4
_ENDED_CODES = {JobState.FAILED: EXIT_FAILED, JobState.CANCELLED: EXIT_CANCELLED}
WAIT_HELP = (
    f"wait for the job to end; exit 0 completed, {EXIT_FAILED} failed, {EXIT_CANCELLED} cancelled"
)


# -- argument types -------------------------------------------------------------------------------


def duration(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` or plain seconds (``90``, ``1.5``)."""
    value = text.strip()
    parts = _SPAN.findall(value)
    if parts and "".join(number + unit for number, unit in parts) == value:
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    elif re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m, 2d or a number of seconds"
        )
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"duration {text!r} is too long") from None


def moment(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``2026-06-01T09:00:00Z``, ``...+02:00``)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601, e.g. 2026-06-01T09:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"time {text!r} has no UTC offset: add Z or one such as +02:00"
        )
    return value


def parse_payload(job_type: JobType, text: str) -> Payload:
    """The payload of ``job_type`` from its JSON (the API's camelCase names; snake_case works
    too). Unknown fields are refused, so a misspelt one is not silently dropped."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the payload is not valid JSON: {exc}") from None
    payload_type = PAYLOAD_TYPES[job_type]
    wire_names = payload_type.wire_names
    if not isinstance(data, dict):
        example = json.dumps({name: "..." for name in wire_names.values()})
        raise UsageError(f"the payload must be a JSON object, e.g. '{example}'")
    unknown = sorted(set(data) - set(wire_names) - set(wire_names.values()))
    if unknown:
        raise UsageError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in a "
            f"{job_type} payload; its fields are {', '.join(wire_names.values())}"
        )
    return payload_type.from_dict(data)  # InvalidArgument names each bad field


# -- the parsers ----------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        help=f"gRPC host:port of jobsvc (default: $JOBSVC_TARGET, else {DEFAULT_TARGET})",
    )
    group.add_argument("--token", help="bearer token (default: $JOBSVC_AUTH_TOKEN)")
    group.add_argument(
        "--tls-ca-file",
        metavar="PEM",
        help="use TLS, trusting these root certificates (default: $JOBSVC_TLS_CA_FILE)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the response as JSON (as grpcurl does)"
    )
    return common


def _payload_epilog() -> str:
    lines = ["job types and their payload fields (a JSON object; camelCase as in the API):"]
    for job_type, payload_type in PAYLOAD_TYPES.items():
        lines.append(f"  {job_type:<18} {', '.join(payload_type.wire_names.values())}")
    lines.append("""example: jobsvc enqueue crm-match '{"listingId":"L1","agentId":"A1"}'""")
    return "\n".join(lines)


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", choices=JOB_TYPES, help="the job type (below)")
    parser.add_argument("payload", metavar="PAYLOAD", help="the payload as a JSON object")
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retries after a failed attempt (default 3, at most 20)",
    )
    parser.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        help="handler timeout, e.g. 30s (default: the service's)",
    )


def add_parser(commands: Any) -> None:
    common = _connection_options()

    def command(name: str, help_text: str, parent: Any = commands) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser

    enqueue = command("enqueue", "create a job")
    enqueue.epilog = _payload_epilog()
    _job_arguments(enqueue)
    start = enqueue.add_mutually_exclusive_group()
    start.add_argument(
        "--delay", type=duration, metavar="DURATION", help="run no sooner than this, e.g. 10s, 1h"
    )
    start.add_argument(
        "--at", type=moment, metavar="TIME", help="run no sooner than this ISO 8601 time"
    )
    enqueue.add_argument("--dedup", metavar="ID", help="deduplication id (idempotency key)")
    enqueue.add_argument("--wait", action="store_true", help=WAIT_HELP)

    status = command("status", "show a job: state, attempts, times, result, errors, history")
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument("--wait", action="store_true", help=WAIT_HELP)

    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--state", action="append", choices=STATES, help="repeat for several")
    jobs.add_argument("--type", action="append", choices=JOB_TYPES, help="repeat for several")
    jobs.add_argument("--schedule", metavar="ID", help="only jobs fired by this schedule")
    jobs.add_argument("--created-after", type=moment, metavar="TIME")
    jobs.add_argument("--created-before", type=moment, metavar="TIME")
    jobs.add_argument(
        "--limit", type=int, default=20, metavar="N", help="jobs per page (default 20)"
    )
    jobs.add_argument(
        "--page-token", metavar="TOKEN", help="the token printed under the previous page"
    )

    for name, help_text in (
        ("cancel", "cancel a pending or retrying job"),
        ("retry", "re-drive a failed job from the dead-letter queue"),
    ):
        command(name, help_text).add_argument("job_id", metavar="JOB_ID")

    schedule = commands.add_parser(
        "schedule",
        help="create, list and change schedules",
        description="Recurring (cron) schedules, and jobs run once at a later time.",
    )
    actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = command(
        "create", "create or replace a cron schedule, or schedule a one-off job", actions
    )
    create.epilog = _payload_epilog().replace("jobsvc enqueue", "jobsvc schedule create") + (
        " --cron '0 9 * * *' --tz Europe/Berlin"
    )
    _job_arguments(create)
    timing = create.add_mutually_exclusive_group(required=True)
    timing.add_argument(
        "--cron", metavar="EXPR", help="five-field cron expression, e.g. '0 9 * * *'"
    )
    timing.add_argument(
        "--in", dest="delay", type=duration, metavar="DURATION", help="one-off: run after this"
    )
    timing.add_argument(
        "--at", type=moment, metavar="TIME", help="one-off: run at this ISO 8601 time"
    )
    create.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron (default UTC)")
    create.add_argument("--id", help="schedule id; an existing schedule with it is replaced")
    listing = command("list", "list the cron schedules", actions)
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="schedules per page (default 50)"
    )
    listing.add_argument(
        "--page-token", metavar="TOKEN", help="the token printed under the previous page"
    )
    for name in ("get", "pause", "resume", "delete"):
        command(name, f"{name} a cron schedule", actions).add_argument(
            "schedule_id", metavar="SCHEDULE_ID"
        )


# -- running --------------------------------------------------------------------------------------

Output = str | dict[str, Any]  # text for people, or the response as JSON (--json)


@dataclass(frozen=True)
class Ended:
    """What a command that waited for a job prints, and the exit code of how the job ended."""

    output: Output
    code: int

    @classmethod
    def of(cls, job: Job, output: Output) -> Ended:
        return cls(output, _ENDED_CODES.get(job.state, 0))


def run(args: argparse.Namespace) -> int:
    name = args.command if args.command != "schedule" else f"schedule {args.action}"
    try:
        payload = parse_payload(JobType(args.type), args.payload) if "payload" in args else None
        roots = _tls_roots(args.tls_ca_file or os.environ.get("JOBSVC_TLS_CA_FILE"))
        from jobsvc.rpc import JobClient

        with JobClient(
            args.target or os.environ.get("JOBSVC_TARGET") or DEFAULT_TARGET,
            token=args.token or os.environ.get("JOBSVC_AUTH_TOKEN"),
            tls_root_certificates=roots,
        ) as client:
            output = _COMMANDS[name](client, args, payload)
    except UsageError as exc:
        return fail(name, str(exc), 2)
    except JobServiceError as exc:
        return fail(name, f"{exc.reason} {exc.message}")
    except KeyboardInterrupt:
        return 130
    ended = output if isinstance(output, Ended) else Ended(output, 0)
    code, shown = ended.code, ended.output
    text = shown if isinstance(shown, str) else json.dumps(shown, indent=2, ensure_ascii=False)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `jobsvc jobs | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _tls_roots(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"cannot read the TLS CA file {path}: {exc.strerror or exc}") from None


def _enqueue(client: JobClient, args: argparse.Namespace, payload: Any) -> Output | Ended:
    result = client.enqueue(
        payload,
        delay=args.delay,
        not_before=args.at,
        retries=args.retries,
        deduplication_id=args.dedup,
        handler_timeout=args.timeout,
    )
    job = client.wait(result.job.id) if args.wait else result.job
    if args.wait:
        return Ended.of(job, _enqueued(result, job, args))
    return _enqueued(result, job, args)


def _enqueued(result: EnqueueResult, job: Job, args: argparse.Namespace) -> Output:
    if args.json:
        return {"job": _json(job), "deduplicated": result.deduplicated}
    if result.deduplicated:
        line = f"job {job.id} already exists with deduplication id {job.deduplication_id}"
    else:
        line = f"job {job.id} enqueued"
    line += f": {result.job.type}, {result.job.state}"
    if result.job.not_before and result.job.state is JobState.PENDING:
        line += f", not before {_time(result.job.not_before)}"
    return f"{line}\n\n{_status_text(job)}" if args.wait else line


def _status(client: JobClient, args: argparse.Namespace, payload: Any) -> Output | Ended:
    job = client.wait(args.job_id) if args.wait else client.get_status(args.job_id)
    output = {"job": _json(job)} if args.json else _status_text(job)
    return Ended.of(job, output) if args.wait else output


def _jobs(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    jobs, token = client.list_jobs(
        states=[JobState(state) for state in args.state or ()],
        types=[JobType(job_type) for job_type in args.type or ()],
        schedule_id=args.schedule,
        created_after=args.created_after,
        created_before=args.created_before,
        page_size=args.limit,
        page_token=args.page_token,
    )
    if args.json:
        return {"jobs": [_json(job) for job in jobs], "nextPageToken": token or ""}
    rows = [
        [str(j.id), j.type, j.state, str(j.attempts), _time(j.created_at), _clip(j.error)]
        for j in jobs
    ]
    text = _table(["ID", "TYPE", "STATE", "ATTEMPTS", "CREATED", "LAST ERROR"], rows)
    return _paged(text if jobs else "no jobs match", token)


def _cancel(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    job = client.cancel(args.job_id)
    return {"job": _json(job)} if args.json else f"job {job.id} {job.state}"


def _retry(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    job = client.retry(args.job_id)
    if args.json:
        return {"job": _json(job)}
    return f"job {job.id} re-driven from the dead-letter queue: {job.state}"


def _schedule_create(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    created = client.schedule(
        payload,
        cron=args.cron,
        time_zone=args.tz,
        schedule_id=args.id,
        run_time=args.at,
        delay=args.delay,
        retries=args.retries,
        handler_timeout=args.timeout,
    )
    if isinstance(created, Job):
        if args.json:
            return {"job": _json(created)}
        when = _time(created.not_before) if created.not_before else "as soon as possible"
        return f"job {created.id} scheduled to run {when}: {created.type}, {created.state}"
    if args.json:
        return {"schedule": _json(created)}
    return f"schedule {created.id} saved\n\n{_schedule_text(created)}"


def _schedule_list(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    schedules, token = client.list_schedules(page_size=args.limit, page_token=args.page_token)
    if args.json:
        return {"schedules": [_json(s) for s in schedules], "nextPageToken": token or ""}
    rows = [
        [
            s.id,
            s.type,
            s.cron,
            s.time_zone or "UTC",
            _paused(s.paused),
            _time(_next_run(s)),
            _time(s.last_run_at),
        ]
        for s in schedules
    ]
    headers = ["ID", "TYPE", "CRON", "TIME ZONE", "STATE", "NEXT RUN", "LAST RUN"]
    return _paged(_table(headers, rows) if schedules else "no schedules", token)


def _schedule_one(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    change = {
        "get": client.get_schedule,
        "pause": client.pause_schedule,
        "resume": client.resume_schedule,
    }[args.action]
    schedule = change(args.schedule_id)
    return {"schedule": _json(schedule)} if args.json else _schedule_text(schedule)


def _schedule_delete(client: JobClient, args: argparse.Namespace, payload: Any) -> Output:
    client.delete_schedule(args.schedule_id)
    return {} if args.json else f"schedule {args.schedule_id} deleted"


_COMMANDS: dict[str, Callable[[JobClient, argparse.Namespace, Any], Output | Ended]] = {
    "enqueue": _enqueue,
    "status": _status,
    "jobs": _jobs,
    "cancel": _cancel,
    "retry": _retry,
    "schedule create": _schedule_create,
    "schedule list": _schedule_list,
    "schedule get": _schedule_one,
    "schedule pause": _schedule_one,
    "schedule resume": _schedule_one,
    "schedule delete": _schedule_delete,
}


# -- text for people ------------------------------------------------------------------------------


def _json(value: Job | Schedule) -> dict[str, Any]:
    from jobsvc.rpc.client import to_json

    return to_json(value)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds").replace("+00:00", "Z")


def _span(span: timedelta | None) -> str:
    if span is None:
        return "service default"
    seconds = span.total_seconds()
    return f"{seconds:g}s" if seconds < 60 or seconds % 60 else f"{seconds / 60:g}m"


def _compact(value: Any) -> str:
    return "-" if value is None else json.dumps(value, ensure_ascii=False)


def _clip(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _paused(paused: bool) -> str:
    return "paused" if paused else "active"


def _next_run(schedule: Schedule) -> datetime | None:
    from jobsvc.crons import next_run_time

    if schedule.paused:
        return None
    return next_run_time(schedule.cron, schedule.time_zone, datetime.now(UTC))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def _fields(pairs: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs)


def _paged(text: str, token: str | None) -> str:
    return f"{text}\n\nmore: --page-token {token}" if token else text


def _status_text(job: Job) -> str:
    fields = _fields(
        [
            ("job", str(job.id)),
            ("type", job.type),
            ("state", job.state),
            ("attempts", f"{job.attempts} (retries allowed: {job.max_retries})"),
            ("created", _time(job.created_at)),
            ("not before", _time(job.not_before)),
            ("started", _time(job.started_at)),
            ("finished", _time(job.finished_at)),
            ("timeout", _span(job.timeout)),
            ("payload", _compact(job.payload)),
            ("result", _compact(job.result)),
            ("last error", job.error or "-"),
            ("dlq id", job.dlq_id or "-"),
            ("qstash id", job.qstash_message_id or "-"),
            ("dedup id", job.deduplication_id or "-"),
            ("schedule", job.schedule_id or "-"),
        ]
    )
    if not job.history:
        return f"{fields}\n\nno attempts yet"
    rows = [
        [
            str(a.number),
            _time(a.started_at),
            _time(a.finished_at),
            a.outcome or "running",
            _clip(a.error),
        ]
        for a in job.history
    ]
    return f"{fields}\n\n{_table(['ATTEMPT', 'STARTED', 'FINISHED', 'OUTCOME', 'ERROR'], rows)}"


def _schedule_text(schedule: Schedule) -> str:
    return _fields(
        [
            ("schedule", schedule.id),
            ("type", schedule.type),
            ("cron", schedule.cron),
            ("time zone", schedule.time_zone or "UTC"),
            ("state", _paused(schedule.paused)),
            ("next run", _time(_next_run(schedule))),
            ("last run", _time(schedule.last_run_at)),
            ("created", _time(schedule.created_at)),
            ("retries", str(schedule.retries)),
            ("timeout", _span(schedule.timeout)),
            ("payload", _compact(schedule.payload)),
        ]
    )
