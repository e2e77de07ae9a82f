"""Fault injection: jobsvc's production layout under a steady load while its parts fail.

Runs ``jobsvc qstash-dev``, ``jobsvc sidecar`` and ``jobsvc rpc`` as separate processes on a
fresh PostgreSQL database (dropped at the end), with the systems around the service played by
real local servers: an SMTP server (aiosmtpd: install the test extras, ``scripts/setup
--test``) and one HTTP server for the listing and application services, the CRM, the
syndication platforms and the SMS gateway (``tests/standins``). This script enqueues a mix of
jobs (notifications by email and SMS, syndication to two platforms, CRM matches, document
reminders) through the typed client at ``--rate`` jobs/s for ``--seconds`` and, meanwhile, one
fault after another, each once the previous one has recovered:

  sidecar     SIGKILL ``jobsvc sidecar``, start it again at once
  rpc         SIGKILL ``jobsvc rpc``, start it again at once
  qstash-dev  SIGKILL the broker (``jobsvc qstash-dev``), start it again at once
  postgres    restart PostgreSQL (``pg_ctlcluster --skip-systemctl-redirect <version> main
              restart``), then wait until it accepts connections
  broker      SIGSTOP the broker for ``--broker-outage-seconds``, then SIGCONT

Then it waits (at most ``--settle-seconds``) for every acknowledged job (Enqueue returned) to
end, and reports, from the job log and what the stand-ins received:

  acknowledged  Enqueue calls that returned a job; the others by error reason
  completed / failed (with reasons) / lost (acknowledged, not in the job log) / stuck (not
                ended at the end)
  side effects  per kind: expected of completed jobs, missing, and sent more than once for one
                job: an email with the same Message-ID, an SMS request with the same
                idempotency key (the gateway drops the copy, but jobsvc sent it twice), a
                listing published under a second idempotency key; a listing re-sent with the
                same key and CRM matches recorded again are idempotent and only counted.
                A notification sent twice is allowed only when its first copy went out within
                ``--crash-window`` seconds before a SIGKILL of the sidecar (a crash between the
                send and its note cannot be told from a send that did not happen); any other
                is reported with the fault window it fell in.

Exit code: 0 when nothing was lost or stuck, no completed job lacks a side effect and no
notification or listing went out twice outside a sidecar crash; 1 otherwise (or if the run
itself failed); 2 for a bad command line. The table goes to stdout (``--json``: the report as
one JSON object instead), progress and the fault log to stderr; the processes' logs stay in a
temporary folder named at the start.

    .venv/bin/python bench/fault_injection.py                        # 100 jobs/s for 90 s
    .venv/bin/python bench/fault_injection.py --rate 200 --seconds 60 --json
    .venv/bin/python bench/fault_injection.py --faults sidecar,rpc --no-postgres-restart

WARNING: the ``postgres`` fault restarts the machine's PostgreSQL server, which every user of
it notices (their connections are cut). It is on by default; ``--no-postgres-restart`` leaves
it out. If this script restarted PostgreSQL, it does not end before PostgreSQL accepts
connections again, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from processes import ROOT, Ports, Service, fresh_database, migrate, start_service

from jobsvc.errors import JobServiceError
from jobsvc.payloads import (
    CrmMatch,
    NotificationType,
    Payload,
    Platform,
    ReminderType,
    SendNotification,
    SendReminder,
    SyndicateListing,
)
from jobsvc.rpc import AsyncJobClient

sys.path.insert(0, str(ROOT))  # the stand-ins live in tests/standins

from tests.standins.http import CrmContact, ExternalSystems, RecordedRequest
from tests.standins.records import applicant, listing
from tests.standins.smtp import ReceivedMail, SmtpServer

FAULTS = ("sidecar", "rpc", "qstash-dev", "postgres", "broker")
FINAL = ("completed", "failed", "cancelled")
PLATFORMS = (Platform.ZILLOW, Platform.CRAIGSLIST)
SHOWN = 10  # disallowed duplicates the table details
KINDS = ("email", "sms", *(f"listing:{p.value}" for p in PLATFORMS), "crm")
AGENTS = [f"AG{i}" for i in range(10)]
NOTICE_DATA = {
    "listing_address": "12 Garden Row, Brooklyn, NY",
    "decision_date": "2026-11-27",
    "reasons": ["Insufficient credit history"],
    "agency_name": "Example Screening Co.",
    "agency_address": "PO Box 100, Springfield",
    "agency_phone": "+1 800 555 0100",
}
MESSAGE_ID = re.compile(r"<([0-9a-f-]{36})\.email@")
LISTINGS_PATH = re.compile(r"/platforms/([a-z]+)/listings$")
CRM_MATCHES_PATH = re.compile(r"/crm/agents/([^/]+)/listings/([^/]+)/matches$")
# Ids and numbers in error texts, so that failures of one kind group together.
VARIABLE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?")


def log(message: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# -- the load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One Enqueue call of the load: its number, kind and payload."""

    n: int
    kind: str  # notification, syndication, crm, reminder-day7, reminder-day1
    payload: Payload
    deduplication_id: str | None = None


def call_for(n: int) -> Call:
    """The ``n``-th call: 35% notifications, 25% syndication, 15% CRM matches, 25% reminders
    (one in five of them a first step, which enqueues the next one two days later)."""
    slot = n % 20
    if slot < 7:
        payload: Payload = SendNotification(
            type=NotificationType.ADVERSE_ACTION,
            recipient_id=f"A{n}",
            template_id="adverse_action_notice",
            template_data=NOTICE_DATA,
        )
        return Call(n, "notification", payload)
    if slot < 12:
        return Call(n, "syndication", SyndicateListing(listing_id=f"L{n}", platforms=PLATFORMS))
    if slot < 15:
        return Call(n, "crm", CrmMatch(listing_id=f"L{n}", agent_id=AGENTS[n % len(AGENTS)]))
    if slot < 19:
        payload = SendReminder(applicant_id=f"A{n}", reminder_type=ReminderType.DAY7)
        return Call(n, "reminder-day7", payload)
    payload = SendReminder(applicant_id=f"A{n}", reminder_type=ReminderType.DAY1)
    return Call(n, "reminder-day1", payload, deduplication_id=f"reminder:A{n}:day1")


def seed(systems: ExternalSystems, calls: int) -> None:
    """The records the load's jobs need: listing ``L<n>`` and applicant ``A<n>`` (active,
    documents missing, a mailbox and a phone of their own) for every call, and agents with
    contacts the listings suit."""
    for n in range(calls):
        systems.listings[f"L{n}"] = listing(f"L{n}")
        systems.applicants[f"A{n}"] = applicant(
            f"A{n}", email=f"a{n}@applicants.example", phone=f"+1555{n:07d}"
        )
    for agent in AGENTS:
        systems.crm_contacts[agent] = [
            CrmContact(id=f"{agent}-C{i}", name=f"Contact {i}", max_rent=2400 + 300 * i)
            for i in range(3)
        ]


@dataclass
class Load:
    """What the load did: the acknowledged jobs (id -> call) and refused calls by reason."""

    began: float  # monotonic; every time in the report counts from here
    acknowledged: dict[uuid.UUID, Call] = field(default_factory=dict)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    calls: int = 0
    seconds: float = 0.0


async def drive(load: Load, address: str, rate: float, seconds: float, clients: int = 4) -> None:
    """Enqueue ``rate`` calls a second for ``seconds`` from ``load.began`` (open loop: a slow
    answer delays no later call), spread over ``clients`` typed clients; a refused call is
    counted, never retried."""
    made = [AsyncJobClient(address, timeout_seconds=10) for _ in range(clients)]

    async def one(call: Call) -> None:
        client = made[call.n % len(made)]
        try:
            result = await client.enqueue(call.payload, deduplication_id=call.deduplication_id)
        except JobServiceError as exc:
            load.refused[exc.reason] += 1
            return
        load.acknowledged[result.job.id] = call

    tasks = []
    try:
        for n in range(int(rate * seconds)):
            delay = load.began + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(call_for(n))))
            load.calls += 1
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for client in made:
            await client.close()
    load.seconds = time.monotonic() - load.began


# -- what the stand-ins received ------------------------------------------------------------------


class Receipts:
    """Every request the HTTP stand-in and every message the SMTP stand-in received, each with
    the (monotonic) time it was first seen: a thread looks every 50 ms."""

    def __init__(self, systems: ExternalSystems, smtp: SmtpServer) -> None:
        self.systems, self.smtp = systems, smtp
        self.requests: list[tuple[float, RecordedRequest]] = []
        self.mails: list[tuple[float, ReceivedMail]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one look at a time, or an item would be taken twice
        self._thread = threading.Thread(target=self._watch, name="receipts", daemon=True)

    def __enter__(self) -> Receipts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.look()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.look()

    def look(self) -> None:
        with self._lock:
            now = time.monotonic()
            with self.systems.lock:
                new_requests = self.systems.requests[len(self.requests) :]
            self.requests += [(now, r) for r in new_requests]
            new_mails = self.smtp.messages[len(self.mails) :]
            self.mails += [(now, m) for m in new_mails]


@dataclass(frozen=True)
class Effect:
    """One side effect: its kind, the job it belongs to, its identity (a second effect with
    the same identity is a copy), and when it was seen."""

    kind: str
    job_id: uuid.UUID | None
    identity: str
    at: float


def effects(receipts: Receipts) -> list[Effect]:
    found = []
    for at, mail in receipts.mails:
        message_id = str(mail.message.get("Message-ID", ""))
        match = MESSAGE_ID.search(message_id)
        job = uuid.UUID(match.group(1)) if match else None
        found.append(Effect("email", job, message_id, at))
    for at, request in receipts.requests:
        key = request.header("idempotency-key") or ""
        if request.method == "POST" and request.path.endswith("/sms-gateway/messages"):
            job = _job_of(key.removesuffix(".sms"))
            found.append(Effect("sms", job, key, at))
        elif request.method == "POST" and (match := LISTINGS_PATH.search(request.path)):
            job = _job_of(key.rsplit(":", 1)[0])
            found.append(Effect(f"listing:{match.group(1)}", job, key, at))
        elif request.method == "PUT" and (match := CRM_MATCHES_PATH.search(request.path)):
            found.append(Effect("crm", None, f"{match.group(1)}/{match.group(2)}", at))
    return found


def _job_of(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


# -- the faults -----------------------------------------------------------------------------------


@dataclass
class FaultEvent:
    name: str
    started: float  # monotonic
    ended: float
    detail: str


class Faults:
    """Injects the faults, one at a time, in its own threads (the load goes on meanwhile)."""

    def __init__(
        self,
        service: Service,
        *,
        admin_url: str,
        postgres_cluster: tuple[str, str],
        broker_outage: float,
        stopping: threading.Event,
    ) -> None:
        self.service = service
        self.admin_url = admin_url
        self.postgres_cluster = postgres_cluster
        self.broker_outage = broker_outage
        self.stopping = stopping
        self.events: list[FaultEvent] = []
        self.restarted_postgres = False

    def inject(self, name: str) -> FaultEvent:
        started = time.monotonic()
        action: Callable[[], str] = {
            "sidecar": lambda: self._kill_and_restart("sidecar"),
            "rpc": lambda: self._kill_and_restart("rpc"),
            "qstash-dev": lambda: self._kill_and_restart("qstash-dev"),
            "postgres": self._restart_postgres,
            "broker": self._stop_broker,
        }[name]
        detail = action()
        event = FaultEvent(name, started, time.monotonic(), detail)
        self.events.append(event)
        return event

    def _kill_and_restart(self, name: str) -> str:
        old = self.service.processes[name].pid
        self.service.kill(name)
        killed = time.monotonic()
        new = self.service.start(name).pid
        return (
            f"SIGKILL pid {old}, serving again as pid {new} after {time.monotonic() - killed:.1f} s"
        )

    def _restart_postgres(self) -> str:
        version, cluster = self.postgres_cluster
        self.restarted_postgres = True
        began = time.monotonic()
        # Its own session: a Ctrl-C must not interrupt it half-way and leave PostgreSQL down.
        proc = subprocess.Popen(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctlcluster restart failed: {output.decode(errors='replace')}")
        wait_for_postgres(self.admin_url, timeout=120)
        return f"restarted; accepting connections after {time.monotonic() - began:.1f} s"

    def ensure_postgres(self) -> None:
        """If this run restarted PostgreSQL, return only once it accepts connections again:
        start it should it still be down a minute later."""
        if not self.restarted_postgres:
            return
        try:
            wait_for_postgres(self.admin_url, timeout=60)
        except RuntimeError:
            version, cluster = self.postgres_cluster
            log("PostgreSQL is still down: starting it")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
                start_new_session=True,
                check=False,
            )
            wait_for_postgres(self.admin_url, timeout=120)

    def _stop_broker(self) -> str:
        self.service.signal("qstash-dev", signal.SIGSTOP)
        try:
            self.stopping.wait(self.broker_outage)
        finally:
            self.service.signal("qstash-dev", signal.SIGCONT)
        return f"SIGSTOP, SIGCONT {self.broker_outage:g} s later"


def wait_for_postgres(admin_url: str, timeout: float) -> None:
    """Return once PostgreSQL accepts connections; ``RuntimeError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(admin_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready after {timeout:g} s") from None
            time.sleep(0.2)


def postgres_cluster(spec: str | None) -> tuple[str, str]:
    """(version, cluster name) for pg_ctlcluster: ``spec`` (``15/main``), or the one version
    installed under /etc/postgresql and ``main``."""
    if spec:
        version, _, name = spec.partition("/")
        return version, name or "main"
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if len(versions) != 1:
        raise SystemExit(
            f"cannot tell which PostgreSQL cluster to restart (found {versions or 'none'}): "
            "give --postgres-cluster VERSION/NAME or --no-postgres-restart"
        )
    return versions[0], "main"


async def inject_faults(
    faults: Faults, names: list[str], seconds: float, began: float, min_gap: float
) -> None:
    """Fault ``i`` of ``k`` at ``seconds * (i + 1) / (k + 1)`` after ``began``, or ``min_gap``
    after the previous one recovered if that is later."""
    for index, name in enumerate(names):
        due = began + seconds * (index + 1) / (len(names) + 1)
        if faults.events:
            due = max(due, faults.events[-1].ended + min_gap)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        log(f"+{time.monotonic() - began:.1f} s fault {name} ...")
        event = await asyncio.to_thread(faults.inject, name)
        log(
            f"+{event.started - began:.1f} s fault {name}: {event.detail} "
            f"(recovered in {event.ended - event.started:.1f} s)"
        )


async def report_progress(load: Load, receipts: Receipts, began: float) -> None:
    while True:
        await asyncio.sleep(10)
        refused = sum(load.refused.values())
        log(
            f"+{time.monotonic() - began:.0f} s: {load.calls} calls, "
            f"{len(load.acknowledged)} acknowledged, {refused} refused; received "
            f"{len(receipts.mails)} emails, {len(receipts.requests)} HTTP requests"
        )


# -- settling and counting ------------------------------------------------------------------------


def unfinished(dsn: str, ids: list[uuid.UUID]) -> int | None:
    """How many of ``ids`` are not ended (missing ones included); None if the database is
    unreachable."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM job_logs WHERE id = ANY(%s) AND state = ANY(%s)",
                (ids, list(FINAL)),
            ).fetchone()
    except psycopg.OperationalError:
        return None
    return len(ids) - (row[0] if row else 0)


def settle(dsn: str, ids: list[uuid.UUID], timeout: float) -> float:
    """Wait until every job of ``ids`` has ended, at most ``timeout`` seconds; seconds waited."""
    began = time.monotonic()
    last_report = began
    while True:
        left = unfinished(dsn, ids)
        waited = time.monotonic() - began
        if left == 0 or waited > timeout:
            return waited
        if time.monotonic() - last_report >= 15:
            log(f"waiting for {left} jobs to end ({waited:.0f} s so far)")
            last_report = time.monotonic()
        time.sleep(1)


def error_kind(error: str | None) -> str:
    return VARIABLE.sub("#", (error or "no error recorded").splitlines()[0])[:160]


def window_of(at: float, events: list[FaultEvent], crash_window: float) -> tuple[str, bool]:
    """Where a side effect seen at ``at`` falls, and whether that is a sidecar crash:
    ``crash_window`` seconds before a SIGKILL of the sidecar, up to 1 s after it (the time
    the watcher may take to see it). Otherwise the latest fault it followed, within 30 s of
    its recovery (QStash's first retry comes 12 s after a failed attempt), or no fault."""
    for event in events:
        if event.name == "sidecar" and event.started - crash_window <= at <= event.started + 1:
            return "sidecar crash", True
    began = [event for event in events if event.started - 2 <= at]
    if began and at <= began[-1].ended + 30:
        return f"{began[-1].name} fault", False
    return "no fault", False


@dataclass(frozen=True)
class JobRow:
    state: str
    error: str | None
    payload: dict[str, Any]
    deduplication_id: str | None
    published: bool


def read_job_log(dsn: str) -> tuple[dict[uuid.UUID, JobRow], dict[uuid.UUID, list[str]]]:
    """Every job, and every job's attempts as ``number:outcome:error``."""
    attempts: dict[uuid.UUID, list[str]] = collections.defaultdict(list)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, state, error, payload, deduplication_id, published_at IS NOT NULL "
            "FROM job_logs"
        ).fetchall()
        for job_id, number, outcome, error in conn.execute(
            "SELECT job_id, number, outcome, error FROM job_attempts ORDER BY job_id, number"
        ):
            outcome = outcome or "unfinished"
            attempts[job_id].append(f"{number}:{outcome}" + (f": {error[:200]}" if error else ""))
    jobs = {row[0]: JobRow(*row[1:]) for row in rows}
    return jobs, attempts


def count(
    jobs: dict[uuid.UUID, JobRow],
    attempts: dict[uuid.UUID, list[str]],
    load: Load,
    receipts: Receipts,
    events: list[FaultEvent],
    crash_window: float,
) -> dict[str, Any]:
    """The report (see the module docstring), as a JSON-ready dict."""
    acked = load.acknowledged

    def state(job_id: uuid.UUID) -> str:
        row = jobs.get(job_id)
        return row.state if row is not None else "lost"

    def since(at: float) -> float:
        return round(at - load.began, 1)

    states = collections.Counter(state(j) for j in acked)
    failed = collections.Counter(error_kind(jobs[j].error) for j in acked if state(j) == "failed")
    stuck_ids = [j for j in acked if state(j) not in (*FINAL, "lost")]
    stuck = collections.Counter(
        f"{jobs[j].state}{'' if jobs[j].published else ' (never published)'}: "
        f"{error_kind(jobs[j].error)}"
        for j in stuck_ids
    )
    # The day-1 reminders' follow-ups (day 3, two days later) are not the load's own jobs.
    follow_ups = {
        row.deduplication_id
        for row in jobs.values()
        if (row.deduplication_id or "").endswith(":day3")
    }
    unacknowledged = sum(
        1
        for job_id, row in jobs.items()
        if job_id not in acked and row.deduplication_id not in follow_ups
    )
    day1_completed = [
        j for j, call in acked.items() if call.kind == "reminder-day1" and state(j) == "completed"
    ]
    follow_ups_missing = sum(
        1 for j in day1_completed if f"reminder:A{acked[j].n}:day3" not in follow_ups
    )

    found = effects(receipts)
    by_identity: dict[tuple[str, str], list[Effect]] = collections.defaultdict(list)
    for effect in found:
        by_identity[(effect.kind, effect.identity)].append(effect)
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for kind, identity in by_identity:
        seen[kind].add(identity)

    # What each completed job must have done, by kind and identity.
    expected: dict[str, set[str]] = collections.defaultdict(set)
    for job_id, call in acked.items():
        if state(job_id) != "completed":
            continue
        payload = call.payload
        if isinstance(payload, SendNotification | SendReminder):
            expected["email"].add(f"<{job_id}.email@jobsvc.invalid>")
            expected["sms"].add(f"{job_id}.sms")
        elif isinstance(payload, SyndicateListing):
            for platform in PLATFORMS:
                expected[f"listing:{platform.value}"].add(f"{job_id}:{platform.value}")
        elif isinstance(payload, CrmMatch):
            expected["crm"].add(f"{payload.agent_id}/{payload.listing_id}")

    side_effects: dict[str, dict[str, Any]] = {}
    duplicates: list[dict[str, Any]] = []
    for kind in KINDS:
        # Listings and CRM matches repeated under the same key are idempotent: only counted.
        idempotent = kind != "email" and kind != "sms"
        repeated = {
            i: group for (k, i), group in by_identity.items() if k == kind and len(group) > 1
        }
        allowed = 0
        windows: collections.Counter[str] = collections.Counter()
        for identity, group in repeated.items():
            first = min(e.at for e in group)
            window, crash = window_of(first, events, crash_window)
            allowed += idempotent or crash
            windows[window] += 1
            if idempotent:
                continue
            job = group[0].job_id
            duplicates.append(
                {
                    "kind": kind,
                    "identity": identity,
                    "job_id": str(job) if job else None,
                    "copies": len(group),
                    "seen_at_s": [since(e.at) for e in group],
                    "window": window,
                    "allowed": crash,
                    "job_state": state(job) if job else None,
                    "attempts": attempts.get(job, []) if job else [],
                }
            )
        side_effects[kind] = {
            "expected": len(expected[kind]),
            "missing": len(expected[kind] - seen[kind]),
            "sent": sum(len(group) for (k, _), group in by_identity.items() if k == kind),
            "repeated": len(repeated),
            "allowed": allowed,
            "not_allowed": len(repeated) - allowed,
            "windows": dict(windows),
        }
    # A listing published under two idempotency keys: two jobs for one listing id and
    # platform (the load never enqueues a listing twice, so only a duplicated job could).
    keys: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for effect in found:
        if effect.kind.startswith("listing") and effect.job_id in jobs:
            listing_id = str(jobs[effect.job_id].payload.get("listingId"))
            keys[(listing_id, effect.kind)].add(effect.identity)
    listed_twice = sum(1 for k in keys.values() if len(k) > 1)

    return {
        "calls": load.calls,
        "seconds": round(load.seconds, 1),
        "acknowledged": len(acked),
        "refused": dict(load.refused.most_common()),
        "created_unacknowledged": unacknowledged,
        "jobs": {
            "completed": states["completed"],
            "failed": states["failed"],
            "cancelled": states["cancelled"],
            "lost": states["lost"],
            "stuck": len(stuck_ids),
        },
        "failed_reasons": dict(failed.most_common()),
        "stuck_reasons": dict(stuck.most_common()),
        "lost_ids": sorted(str(j) for j in acked if state(j) == "lost"),
        "stuck_ids": sorted(str(j) for j in stuck_ids),
        "follow_ups": {"day1_completed": len(day1_completed), "missing": follow_ups_missing},
        "side_effects": side_effects,
        "listings_published_twice": listed_twice,
        "duplicates": duplicates,
        "faults": [
            {
                "fault": e.name,
                "at_s": since(e.started),
                "recovered_s": round(e.ended - e.started, 1),
                "detail": e.detail,
            }
            for e in events
        ],
    }


def verdict(report: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passes)."""
    problems = []
    jobs = report["jobs"]
    if jobs["lost"]:
        problems.append(f"{jobs['lost']} acknowledged jobs lost")
    if jobs["stuck"]:
        problems.append(f"{jobs['stuck']} acknowledged jobs stuck")
    for kind, numbers in report["side_effects"].items():
        if numbers["missing"]:
            problems.append(f"{numbers['missing']} completed jobs without their {kind}")
        if numbers["not_allowed"]:
            problems.append(f"{numbers['not_allowed']} {kind} sent twice outside a sidecar crash")
    if report["listings_published_twice"]:
        problems.append(f"{report['listings_published_twice']} listings published twice")
    if report["follow_ups"]["missing"]:
        problems.append(f"{report['follow_ups']['missing']} reminder follow-ups missing")
    return problems


def table(report: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        f"fault injection: {report['calls']} Enqueue calls at {settings['rate']:g}/s for "
        f"{settings['seconds']:g} s ({report['seconds']:g} s), settled in "
        f"{settings['settled_s']:.0f} s",
        "",
        "faults (seconds after the load began):",
    ]
    for fault in report["faults"]:
        lines.append(
            f"  +{fault['at_s']:6.1f}  {fault['fault']:<11} {fault['detail']} "
            f"(recovered in {fault['recovered_s']:g} s)"
        )
    refused = ", ".join(f"{reason} {n}" for reason, n in report["refused"].items()) or "none"
    jobs = report["jobs"]
    lines += [
        "",
        f"acknowledged  {report['acknowledged']:>7}   refused: {refused}",
        f"  created although Enqueue failed: {report['created_unacknowledged']}",
        f"completed     {jobs['completed']:>7}",
        f"failed        {jobs['failed']:>7}",
    ]
    lines += [f"    {n:>6}  {reason}" for reason, n in report["failed_reasons"].items()]
    if jobs["cancelled"]:
        lines.append(f"cancelled     {jobs['cancelled']:>7}")
    lines.append(f"lost          {jobs['lost']:>7}")
    lines.append(f"stuck         {jobs['stuck']:>7}")
    lines += [f"    {n:>6}  {reason}" for reason, n in report["stuck_reasons"].items()]
    follow = report["follow_ups"]
    lines.append(f"reminder follow-ups missing: {follow['missing']} of {follow['day1_completed']}")
    lines += ["", "side effects:"]
    header = ("kind", "expected", "missing", "sent", "repeated", "sidecar-crash", "elsewhere")
    rows = [header]
    for kind, n in report["side_effects"].items():
        idempotent = kind not in ("email", "sms")
        rows.append(
            (
                kind + (" (idempotent)" if idempotent else ""),
                n["expected"],
                n["missing"],
                n["sent"],
                n["repeated"],
                "-" if idempotent else n["allowed"],
                "-" if idempotent else n["not_allowed"],
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells))
    lines.append(
        f"  listings published under two idempotency keys: {report['listings_published_twice']}"
    )
    windows: collections.Counter[tuple[str, str]] = collections.Counter(
        (d["kind"], d["window"]) for d in report["duplicates"]
    )
    if windows:
        lines.append("  notifications sent twice, by where their first copy fell:")
        lines += [
            f"    {n:>6}  {kind} in {window}" for (kind, window), n in sorted(windows.items())
        ]
    disallowed = [d for d in report["duplicates"] if not d["allowed"]]
    for d in disallowed[:SHOWN]:
        lines.append(
            f"    {d['kind']} of job {d['job_id']} ({d['job_state']}) seen at "
            f"{', '.join(f'+{t:g} s' for t in d['seen_at_s'])}; attempts: "
            + " | ".join(d["attempts"])
        )
    if len(disallowed) > SHOWN:
        lines.append(f"    ... {len(disallowed) - SHOWN} more in the JSON report (--json)")
    problems = verdict(report)
    lines += ["", "FAIL: " + "; ".join(problems) if problems else "PASS"]
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------------


def adapter_env(systems: ExternalSystems, smtp: SmtpServer) -> dict[str, str]:
    """The sidecar's configuration of the systems around it: the stand-ins."""
    env = {
        "JOBSVC_LISTING_SERVICE_URL": systems.listing_service_url,
        "JOBSVC_APPLICATION_SERVICE_URL": systems.application_service_url,
        "JOBSVC_CRM_URL": systems.crm_url,
        "JOBSVC_SMS_GATEWAY_URL": systems.sms_gateway_url,
        "JOBSVC_SMS_FROM": "+15550000000",
        "JOBSVC_SMTP_HOST": "127.0.0.1",
        "JOBSVC_SMTP_PORT": str(smtp.port),
        "JOBSVC_SMTP_STARTTLS": "false",
        "JOBSVC_EMAIL_FROM": "Leasing <leasing@example.com>",
    }
    for platform in Platform:
        env[f"JOBSVC_PLATFORM_{platform.value.upper()}_URL"] = systems.platform_url(platform)
    return env


def check_ports_free(ports: Ports) -> None:
    for port in (ports.grpc, ports.sidecar, ports.qstash):
        with socket.socket() as sock:
            # As the servers bind: connections of an earlier run in TIME_WAIT do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SystemExit(
                    f"port {port} is not free ({exc.strerror}): use --base-port"
                ) from None


async def under_load(
    load: Load, service: Service, faults: Faults, receipts: Receipts, args: argparse.Namespace
) -> None:
    """The load, and the faults meanwhile; ends when both have (the first error ends both)."""
    progress = asyncio.create_task(report_progress(load, receipts, load.began))
    tasks = {
        asyncio.create_task(drive(load, service.grpc_address, args.rate, args.seconds)),
        asyncio.create_task(
            inject_faults(faults, args.faults, args.seconds, load.began, args.min_gap)
        ),
    }
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await asyncio.gather(*pending)
    finally:
        faults.stopping.set()  # cuts a broker outage short when the run is interrupted
        progress.cancel()
        for task in tasks:
            task.cancel()


def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = postgres_cluster(args.postgres_cluster) if "postgres" in args.faults else ("", "")
    ports = Ports(grpc=args.base_port, sidecar=args.base_port + 1, qstash=args.base_port + 2)
    check_ports_free(ports)
    workdir = Path(tempfile.mkdtemp(prefix="jobsvc-faults-"))
    log(f"faults {','.join(args.faults)}; logs in {workdir}")
    calls = int(args.rate * args.seconds)
    faults: Faults | None = None
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(fresh_database(args.postgres_admin_url, "jobsvc_faults"))
        qstash_url = None
        if args.broker_database == "postgresql":
            qstash_url = stack.enter_context(
                fresh_database(args.postgres_admin_url, "jobsvc_faults_qstash")
            )

        def postgres_back() -> None:  # before the databases are dropped
            if faults is not None:
                faults.ensure_postgres()

        stack.callback(postgres_back)
        # The broker's state goes, the logs stay.
        stack.callback(lambda: [path.unlink() for path in workdir.glob("qstash.sqlite3*")])
        migrate(dsn)
        systems = stack.enter_context(ExternalSystems())
        seed(systems, calls)
        smtp = stack.enter_context(SmtpServer())
        env = adapter_env(systems, smtp)
        env.update(args.env)
        service = start_service(
            "split",
            "local",
            dsn,
            workdir,
            ports=ports,
            extra_env=env,
            qstash_database_url=qstash_url,
        )
        stack.callback(service.stop)
        log(f"serving: {service.pids}; gRPC on {service.grpc_address}")
        faults = Faults(
            service,
            admin_url=args.postgres_admin_url,
            postgres_cluster=cluster,
            broker_outage=args.broker_outage_seconds,
            stopping=threading.Event(),
        )
        receipts = stack.enter_context(Receipts(systems, smtp))
        load = Load(began=time.monotonic())
        asyncio.run(under_load(load, service, faults, receipts, args))
        log(f"load done: {len(load.acknowledged)} of {load.calls} calls acknowledged")
        settled = settle(dsn, list(load.acknowledged), args.settle_seconds)
        time.sleep(1)  # the last answers reach the stand-ins
        receipts.look()
        jobs, attempts = read_job_log(dsn)
        report = count(jobs, attempts, load, receipts, faults.events, args.crash_window)
    report["settings"] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "settled_s": round(settled, 1),
        "crash_window_s": args.crash_window,
        "broker_database": args.broker_database,
        "env": args.env,
        "logs": str(workdir),
    }
    return report


def environment_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="Enqueue calls per second")
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the load lasts")
    parser.add_argument(
        "--faults",
        default=list(FAULTS),
        type=lambda s: [f for f in s.split(",") if f],
        help=f"comma-separated, in order (default {','.join(FAULTS)}); spread over the load",
    )
    parser.add_argument(
        "--no-postgres-restart",
        action="store_true",
        help="leave out the postgres fault (it restarts the machine's PostgreSQL for everyone)",
    )
    parser.add_argument(
        "--postgres-cluster",
        metavar="VERSION/NAME",
        help="the cluster pg_ctlcluster restarts (default: the one under /etc/postgresql, main)",
    )
    parser.add_argument("--broker-outage-seconds", type=float, default=10.0, metavar="S")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="longest wait after the load for the acknowledged jobs to end",
    )
    parser.add_argument(
        "--crash-window",
        type=float,
        default=10.0,
        metavar="S",
        help="a notification first sent this long before a sidecar SIGKILL may go out twice",
    )
    parser.add_argument(
        "--min-gap", type=float, default=5.0, metavar="S", help="least time between two faults"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=18600,
        help="gRPC on this port, the sidecar on the next, the broker on the one after (fixed, "
        "so that a restarted process gets its port back)",
    )
    parser.add_argument(
        "--broker-database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="where the broker keeps its state: its own SQLite file (like Upstash, the "
        "PostgreSQL restart does not touch it), or a database of its own on the PostgreSQL server",
    )
    parser.add_argument(
        "--env",
        type=environment_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of every jobsvc process (e.g. JOBSVC_HANDLER_TIMEOUT_SECONDS=20)",
    )
    parser.add_argument("--postgres-admin-url", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    unknown = [f for f in args.faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    if args.no_postgres_restart:
        args.faults = [f for f in args.faults if f != "postgres"]
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    args.env = dict(args.env)

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C

    signal.signal(signal.SIGTERM, terminated)
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted; the processes are stopped and the databases dropped")
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report, report["settings"]))
    return 1 if verdict(report) else 0


if __name__ == "__main__":
    sys.exit(main())
