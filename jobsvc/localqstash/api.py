"""The QStash REST API (``/v2/...``) as a Starlette application.

Endpoints raise ``ApiError``s; ``_error`` turns them into QStash's ``{"error": ...}`` answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobsvc.localqstash import tables
from jobsvc.localqstash.dlq import delete_dlq, dlq_json, get_dlq, list_dlq, retry_dlq
from jobsvc.localqstash.durations import parse_bool, parse_duration, parse_int
from jobsvc.localqstash.engine import Engine
from jobsvc.localqstash.errors import ApiError, BadRequest, NotFound, PayloadTooLarge, Unauthorized
from jobsvc.localqstash.events import list_events
from jobsvc.localqstash.filters import (
    COLUMNS,
    COMMON,
    check_known,
    time_bounds,
    url_has_host,
    values,
)
from jobsvc.localqstash.gates import FlowGate, QueueGate
from jobsvc.localqstash.messages import Message
from jobsvc.localqstash.options import Options, canonical, check_name, check_url, parse_options
from jobsvc.localqstash.ratelimit import BurstLimit
from jobsvc.localqstash.schedules import Scheduler
from jobsvc.localqstash.store import StoreError
from jobsvc.localqstash.users import User

log = logging.getLogger("jobsvc.localqstash.api")
MAX_BODY = 10 * 1024 * 1024
MAX_ERROR = 1000
# The query parameters each bulk action reads; any other is refused.
CANCEL_PARAMS = COMMON | {
    "messageIds",
    "messageId",
    "queueName",
    "url",
    "scheduleId",
    "flowControlKey",
    "label",
    "topicName",
    "callerIp",
}
DLQ_PARAMS = COMMON | set(COLUMNS) | {"dlqIds", "responseStatus"}
MAX_BATCH = 1000
MAX_PARALLELISM = 1_000_000
Params = dict[str, list[str]]


class Api:
    """Routes bound to one engine and scheduler."""

    def __init__(self, engine: Engine, scheduler: Scheduler) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.burst = BurstLimit(engine.settings.burst_rate_limit)

    def app(self, *, lifespan: Any = None) -> Starlette:
        r = self._route
        routes = [
            r("/v2/publish/{rest:path}", self.publish, ["POST"]),
            r("/v2/enqueue/{queue}/{rest:path}", self.enqueue, ["POST"]),
            r("/v2/batch", self.batch, ["POST"]),
            r("/v2/messages/{message_id}", self.get_message, ["GET"]),
            r("/v2/messages/{message_id}", self.cancel_message, ["DELETE"]),
            r("/v2/messages", self.cancel_messages, ["DELETE"]),
            r("/v2/schedules", self.list_schedules, ["GET"]),
            r("/v2/schedules/{schedule_id}", self.get_schedule, ["GET"]),
            r("/v2/schedules/{schedule_id}", self.delete_schedule, ["DELETE"]),
            r("/v2/schedules/{schedule_id}/pause", self.pause_schedule, ["PATCH"]),
            r("/v2/schedules/{schedule_id}/resume", self.resume_schedule, ["PATCH"]),
            r("/v2/schedules/{rest:path}", self.create_schedule, ["POST"]),
            r("/v2/dlq", self.list_dlq, ["GET"]),
            r("/v2/dlq", self.delete_dlq_many, ["DELETE"]),
            r("/v2/dlq/retry", self.retry_dlq_many, ["POST"]),
            r("/v2/dlq/retry/{dlq_id}", self.retry_dlq_one, ["POST"]),
            r("/v2/dlq/{dlq_id}", self.get_dlq, ["GET"]),
            r("/v2/dlq/{dlq_id}", self.delete_dlq_one, ["DELETE"]),
            r("/v2/events", self.events, ["GET"]),
            r("/v2/logs", self.logs, ["GET"]),
            r("/v2/keys", self.keys, ["GET"]),
            r("/v2/keys/rotate", self.rotate_keys, ["POST"]),
            r("/v2/queues", self.upsert_queue, ["POST"]),
            r("/v2/queues", self.list_queues, ["GET"]),
            r("/v2/queues/{name}", self.get_queue, ["GET"]),
            r("/v2/queues/{name}", self.delete_queue, ["DELETE"]),
            r("/v2/queues/{name}/pause", self.pause_queue, ["POST"]),
            r("/v2/queues/{name}/resume", self.resume_queue, ["POST"]),
            r("/v2/topics", self.list_topics, ["GET"]),
            r("/v2/topics/{name}", self.get_topic, ["GET"]),
            r("/v2/topics/{name}", self.delete_topic, ["DELETE"]),
            r("/v2/topics/{name}/endpoints", self.add_endpoints, ["POST"]),
            r("/v2/topics/{name}/endpoints", self.remove_endpoints, ["DELETE"]),
            r("/v2/flowControl", self.list_flows, ["GET"]),
            r("/v2/flowControl/{key}", self.get_flow, ["GET"]),
            r("/v2/flowControl/{key}/{action}", self.flow_action, ["POST"]),
            r("/v2/globalParallelism", self.global_parallelism, ["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    def _route(
        self,
        path: str,
        handler: Callable[[Request, User], Awaitable[Response]],
        methods: list[str],
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                user = self._authenticate(request)
                self.burst.check(user.user_id)
                _check_no_nul(request)
                return await handler(request, user)
            except ApiError as exc:
                return _error(exc.status_code, exc.message, exc.headers)
            except StoreError:
                return _error(503, "storage unavailable, try again")
            except ClientDisconnect:  # nobody reads the answer; nothing was accepted
                log.info(
                    "client went away during %s %s",
                    request.method,
                    path,
                    extra={"action": "client_disconnected"},
                )
                return _error(400, "client disconnected before the request was read")
            except Exception:
                log.exception(
                    "%s %s failed", request.method, path, extra={"action": "request_failed"}
                )
                return _error(500, "internal error")

        return Route(path, endpoint, methods=methods)

    async def health(self, request: Request) -> Response:
        """Unauthenticated: 200 while the database answers, for container health checks."""
        try:
            await self.engine.store.read(lambda conn: conn.execute(select(1)).scalar())
        except Exception:  # any database failure means "not healthy"
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    def _authenticate(self, request: Request) -> User:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        if token is None:
            token = request.query_params.get("qstash_token")
        user = self.engine.authenticate(token)
        if user is None:
            raise Unauthorized("invalid token" if token else "missing bearer token")
        return user

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, request: Request, user: User) -> Response:
        destination, query_options = _destination(request, "/v2/publish/")
        return await self._publish(request, user, destination, query_options, queue=None)

    async def enqueue(self, request: Request, user: User) -> Response:
        queue = check_name(request.path_params["queue"], what="queue name")
        prefix = f"/v2/enqueue/{request.path_params['queue']}/"
        destination, query_options = _destination(request, prefix)
        return await self._publish(request, user, destination, query_options, queue=queue)

    async def _publish(
        self,
        request: Request,
        user: User,
        destination: str,
        query_options: list[tuple[str, str]],
        *,
        queue: str | None,
    ) -> Response:
        options = parse_options([*query_options, *request.headers.items()])
        body = await _body(request)
        results = await self.engine.publish(
            user, destination, options, body, caller_ip=_caller_ip(request), queue_name=queue
        )
        deduplicated = all(r.deduplicated for r in results) and bool(results)
        status = 202 if deduplicated else 200
        if destination.startswith(("http://", "https://")):
            return JSONResponse(results[0].to_json(), status_code=status)
        return JSONResponse([r.to_json() for r in results], status_code=status)

    async def batch(self, request: Request, user: User) -> Response:
        entries = await _json(request)
        if not isinstance(entries, list) or not entries:
            raise BadRequest("batch body must be a non-empty JSON array")
        if len(entries) > MAX_BATCH:
            raise BadRequest(f"a batch holds at most {MAX_BATCH} messages")
        caller_ip = _caller_ip(request)
        prepared = []
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("destination"), str):
                    raise BadRequest("destination is required")
                headers = entry.get("headers") or {}
                if not isinstance(headers, dict) or not all(
                    isinstance(v, str | int | float | bool) for v in headers.values()
                ):
                    raise BadRequest("headers must be an object of strings")
                body = entry.get("body")
                if body is not None and not isinstance(body, str):
                    raise BadRequest("body must be a string")
                queue = entry.get("queue")
                if queue is not None:
                    queue = check_name(str(queue), what="queue name")
                options = parse_options((str(k), str(v)) for k, v in headers.items())
                prepared.append(
                    self.engine.prepare(
                        user,
                        _decode_destination(entry["destination"]),
                        options,
                        (body or "").encode(),
                        caller_ip=caller_ip,
                        queue_name=queue,
                    )
                )
            except ApiError as exc:
                self.engine.discard(*prepared)
                raise type(exc)(f"batch entry {index}: {exc.message}") from None
        await self.engine.commit(*prepared)
        out: list[Any] = []
        for entry, p in zip(entries, prepared, strict=True):
            if str(entry["destination"]).startswith(("http://", "https://", "http%3A", "https%3A")):
                out.append(p.results[0].to_json())
            else:
                out.append([r.to_json() for r in p.results])
        return JSONResponse(out)

    # -- messages -------------------------------------------------------------------------------

    async def get_message(self, request: Request, user: User) -> Response:
        message_id = request.path_params["message_id"]
        message = self.engine.live.get(message_id)
        if message is None or message.user_id != user.user_id:
            table = tables.messages
            row = await self.engine.store.read(
                lambda conn: conn.execute(
                    select(table).where(
                        table.c.message_id == message_id, table.c.user_id == user.user_id
                    )
                ).first()
            )
            if row is None:
                raise NotFound(f"message {message_id} not found")
            message = Message.from_row(row)
        return JSONResponse(message.to_json())

    async def cancel_message(self, request: Request, user: User) -> Response:
        message_id = request.path_params["message_id"]
        if await self.engine.cancel(user, [message_id]) == 0:
            raise NotFound(f"message {message_id} not found")
        return JSONResponse({"cancelled": 1}, status_code=202)

    async def cancel_messages(self, request: Request, user: User) -> Response:
        """Cancel by ids (query or JSON body), or every live message the filters match: several
        values of one filter match any of them. ``count`` is accepted and ignored, as QStash
        does: a filtered cancel handles every match in one call (the JS SDK relies on it)."""
        params = _params(request)
        check_known(params, frozenset(CANCEL_PARAMS))
        ids = values(params, "messageIds") + values(params, "messageId")
        body = await request.body()
        if body.strip():
            data = _loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("messageIds", []), list):
                raise BadRequest("body must be an object with a messageIds array")
            ids.extend(str(i) for i in data.get("messageIds", []))
        if not ids:
            ids = self.engine.live_ids(user, _message_filter(params))
        return JSONResponse({"cancelled": await self.engine.cancel(user, ids)})

    # -- schedules ------------------------------------------------------------------------------

    async def create_schedule(self, request: Request, user: User) -> Response:
        destination, query_options = _destination(request, "/v2/schedules/")
        tail = destination.rsplit("/", 1)
        if len(tail) == 2 and tail[1] in ("pause", "resume") and "://" not in destination:
            paused = tail[1] == "pause"
            await self.scheduler.set_paused(user, tail[0], paused)
            return JSONResponse({})
        options = parse_options([*query_options, *request.headers.items()], schedule=True)
        schedule = await self.scheduler.create(
            user, destination, options, await _body(request), caller_ip=_caller_ip(request)
        )
        return JSONResponse({"scheduleId": schedule.schedule_id})

    async def list_schedules(self, request: Request, user: User) -> Response:
        return JSONResponse([self._schedule_json(s) for s in self.scheduler.list(user)])

    async def get_schedule(self, request: Request, user: User) -> Response:
        schedule = self.scheduler.get(user, request.path_params["schedule_id"])
        return JSONResponse(self._schedule_json(schedule))

    def _schedule_json(self, schedule: Any) -> dict[str, Any]:
        next_time = None if schedule.paused else self.scheduler.next_schedule_time_ms(schedule)
        result: dict[str, Any] = schedule.to_json(next_schedule_time=next_time)
        return result

    async def delete_schedule(self, request: Request, user: User) -> Response:
        await self.scheduler.delete(user, request.path_params["schedule_id"])
        return JSONResponse({})

    async def pause_schedule(self, request: Request, user: User) -> Response:
        await self.scheduler.set_paused(user, request.path_params["schedule_id"], True)
        return JSONResponse({})

    async def resume_schedule(self, request: Request, user: User) -> Response:
        await self.scheduler.set_paused(user, request.path_params["schedule_id"], False)
        return JSONResponse({})

    # -- dead-letter queue ----------------------------------------------------------------------

    async def list_dlq(self, request: Request, user: User) -> Response:
        return JSONResponse(await list_dlq(self.engine, user, _params(request)))

    async def get_dlq(self, request: Request, user: User) -> Response:
        return JSONResponse(
            dlq_json(await get_dlq(self.engine, user, request.path_params["dlq_id"]))
        )

    async def delete_dlq_one(self, request: Request, user: User) -> Response:
        dlq_id = request.path_params["dlq_id"]
        if (await delete_dlq(self.engine, user, [dlq_id], {}))[0] == 0:
            raise NotFound(f"dlq message {dlq_id} not found")
        return JSONResponse({"deleted": 1})

    async def delete_dlq_many(self, request: Request, user: User) -> Response:
        """Delete by ids, or the entries the filters match: at most ``count`` of them when
        given, with a ``cursor`` to continue from while more remain."""
        params = _params(request)
        check_known(params, frozenset(DLQ_PARAMS))
        ids: list[str] | None = values(params, "dlqIds") or None
        body = await request.body()
        if body.strip():
            data = _loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("dlqIds", []), list):
                raise BadRequest("body must be an object with a dlqIds array")
            ids = (ids or []) + [str(i) for i in data.get("dlqIds", [])]
        deleted, cursor = await delete_dlq(self.engine, user, ids, params)
        out: dict[str, Any] = {"deleted": deleted}
        if cursor is not None:
            out["cursor"] = cursor
        return JSONResponse(out)

    async def retry_dlq_one(self, request: Request, user: User) -> Response:
        row = await get_dlq(self.engine, user, request.path_params["dlq_id"])
        overrides, names = _overrides(request)
        results = await retry_dlq(self.engine, user, [row], overrides, names)
        return JSONResponse({"messageId": results[0].message_id}, status_code=201)

    async def retry_dlq_many(self, request: Request, user: User) -> Response:
        params = _params(request)
        check_known(params, frozenset(DLQ_PARAMS))
        page = await list_dlq(self.engine, user, params)
        ids = [m["dlqId"] for m in page["messages"]]
        rows = [await get_dlq(self.engine, user, dlq_id) for dlq_id in ids]
        overrides, names = _overrides(request)
        results = await retry_dlq(self.engine, user, rows, overrides, names)
        return JSONResponse(
            {
                "cursor": page.get("cursor", ""),
                "responses": [{"messageId": r.message_id} for r in results],
            },
            status_code=201,
        )

    # -- events ---------------------------------------------------------------------------------

    async def events(self, request: Request, user: User) -> Response:
        return JSONResponse(await list_events(self.engine, user, _params(request), key="events"))

    async def logs(self, request: Request, user: User) -> Response:
        return JSONResponse(await list_events(self.engine, user, _params(request), key="logs"))

    # -- keys -----------------------------------------------------------------------------------

    async def keys(self, request: Request, user: User) -> Response:
        current, nxt = self.engine.signing_keys(user)
        return JSONResponse({"current": current, "next": nxt})

    async def rotate_keys(self, request: Request, user: User) -> Response:
        current, nxt = await self.engine.rotate_keys(user)
        return JSONResponse({"current": current, "next": nxt})

    # -- queues ---------------------------------------------------------------------------------

    async def upsert_queue(self, request: Request, user: User) -> Response:
        data = await _json(request)
        if not isinstance(data, dict) or not isinstance(data.get("queueName"), str):
            raise BadRequest("queueName is required")
        name = check_name(data["queueName"], what="queue name")
        parallelism = data.get("parallelism")
        if parallelism is not None and (
            not isinstance(parallelism, int)
            or isinstance(parallelism, bool)
            or not 1 <= parallelism <= MAX_PARALLELISM
        ):
            raise BadRequest(f"parallelism must be an integer between 1 and {MAX_PARALLELISM}")
        paused = data.get("paused")
        if paused is not None and not isinstance(paused, bool):
            raise BadRequest("paused must be a boolean")
        await self.engine.upsert_queue(user, name, parallelism=parallelism or 1, paused=paused)
        return JSONResponse({})

    def _queue_json(self, user: User, queue: QueueGate) -> dict[str, Any]:
        return {
            "name": queue.name,
            "parallelism": queue.parallelism,
            "createdAt": queue.created_at,
            "updatedAt": queue.updated_at,
            "lag": self.engine.queue_lag(user, queue.name),
            "paused": queue.paused,
        }

    async def list_queues(self, request: Request, user: User) -> Response:
        queues = [q for (uid, _), q in self.engine.queues.items() if uid == user.user_id]
        return JSONResponse(
            [self._queue_json(user, q) for q in sorted(queues, key=lambda q: q.name)]
        )

    def _find_queue(self, user: User, name: str) -> QueueGate:
        queue = self.engine.queues.get((user.user_id, name))
        if queue is None:
            raise NotFound(f"queue {name} not found")
        return queue

    async def get_queue(self, request: Request, user: User) -> Response:
        return JSONResponse(
            self._queue_json(user, self._find_queue(user, request.path_params["name"]))
        )

    async def delete_queue(self, request: Request, user: User) -> Response:
        await self.engine.delete_queue(user, request.path_params["name"])
        return JSONResponse({})

    async def pause_queue(self, request: Request, user: User) -> Response:
        self._find_queue(user, request.path_params["name"])
        await self.engine.upsert_queue(
            user, request.path_params["name"], parallelism=None, paused=True
        )
        return JSONResponse({})

    async def resume_queue(self, request: Request, user: User) -> Response:
        self._find_queue(user, request.path_params["name"])
        await self.engine.upsert_queue(
            user, request.path_params["name"], parallelism=None, paused=False
        )
        return JSONResponse({})

    # -- URL groups -----------------------------------------------------------------------------

    async def _endpoints(self, request: Request) -> list[dict[str, str]]:
        data = await _json(request)
        endpoints = data.get("endpoints") if isinstance(data, dict) else None
        if not isinstance(endpoints, list) or not endpoints:
            raise BadRequest("endpoints must be a non-empty array")
        out = []
        for e in endpoints:
            if not isinstance(e, dict) or not (e.get("url") or e.get("name")):
                raise BadRequest("each endpoint needs a url or a name")
            item = {k: str(v) for k, v in e.items() if k in ("url", "name") and v}
            out.append(item)
        return out

    async def add_endpoints(self, request: Request, user: User) -> Response:
        name = check_name(request.path_params["name"], what="topic name")
        endpoints = await self._endpoints(request)
        for e in endpoints:
            check_url(e.get("url", ""), name="endpoint url")
        await self.engine.url_groups.add_endpoints(user, name, endpoints)
        return JSONResponse({})

    async def remove_endpoints(self, request: Request, user: User) -> Response:
        await self.engine.url_groups.remove_endpoints(
            user, request.path_params["name"], await self._endpoints(request)
        )
        return JSONResponse({})

    async def list_topics(self, request: Request, user: User) -> Response:
        return JSONResponse([g.to_json() for g in self.engine.url_groups.all_of(user)])

    async def get_topic(self, request: Request, user: User) -> Response:
        group = self.engine.url_groups.get(user, request.path_params["name"])
        return JSONResponse(group.to_json())

    async def delete_topic(self, request: Request, user: User) -> Response:
        await self.engine.url_groups.delete(user, request.path_params["name"])
        return JSONResponse({})

    # -- flow control ---------------------------------------------------------------------------

    def _flow_json(self, gate: FlowGate) -> dict[str, Any]:
        return {
            "flowControlKey": gate.key,
            "waitListSize": len(gate.waiting),
            "parallelismMax": gate.parallelism_max or 0,
            "parallelismCount": gate.active,
            "rateMax": gate.rate_max or 0,
            "rateCount": gate.window_count,
            "ratePeriod": int(gate.period),
            # window_start is on the monotonic clock; QStash reports unix seconds.
            "ratePeriodStart": (
                int(time.time() - (time.monotonic() - gate.window_start))
                if gate.window_start
                else 0
            ),
            "isPaused": gate.paused,
            "isPinnedParallelism": gate.pinned_parallelism is not None,
            "isPinnedRate": gate.pinned_rate is not None,
        }

    async def list_flows(self, request: Request, user: User) -> Response:
        search = request.query_params.get("search", "")
        gates = [
            g for (uid, k), g in self.engine.flows.items() if uid == user.user_id and search in k
        ]
        return JSONResponse([self._flow_json(g) for g in sorted(gates, key=lambda g: g.key)])

    def _find_flow(self, user: User, key: str) -> FlowGate:
        gate = self.engine.flows.get((user.user_id, key))
        if gate is None:
            raise NotFound(f"flow control key {key} not found")
        return gate

    async def get_flow(self, request: Request, user: User) -> Response:
        return JSONResponse(self._flow_json(self._find_flow(user, request.path_params["key"])))

    async def flow_action(self, request: Request, user: User) -> Response:
        key, action = request.path_params["key"], request.path_params["action"]
        gate = self._find_flow(user, key)
        params = request.query_params
        if action in ("pause", "resume"):
            gate.paused = action == "pause"
        elif action == "pin":
            if "parallelism" in params:
                gate.pinned_parallelism = parse_int(
                    params["parallelism"], name="parallelism", minimum=1, maximum=MAX_PARALLELISM
                )
            if "rate" in params:
                gate.pinned_rate = parse_int(
                    params["rate"], name="rate", minimum=1, maximum=2**31 - 1
                )
            if "period" in params:
                period = int(parse_duration(params["period"], name="period"))
                if not 1 <= period <= 7 * 86400:
                    raise BadRequest("invalid period: must be between 1s and 1 week")
                gate.pinned_period = period
        elif action == "unpin":
            if parse_bool(params.get("parallelism")):
                gate.pinned_parallelism = None
            if parse_bool(params.get("rate")):
                gate.pinned_rate = None
                gate.pinned_period = None
        elif action in ("resetRate", "reset"):
            gate.window_start, gate.window_count = 0.0, 0
            if action == "reset":
                gate.paused = False
                gate.pinned_parallelism = gate.pinned_rate = gate.pinned_period = None
        else:
            raise NotFound(f"unknown flow control action {action}")
        await self.engine.save_flow(user, key)
        return JSONResponse({})

    async def global_parallelism(self, request: Request, user: User) -> Response:
        return JSONResponse(
            {
                "parallelismMax": self.engine.settings.max_concurrent_deliveries,
                "parallelismCount": self.engine.capacity.active,
            }
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > MAX_ERROR:  # it may repeat an id or a name as long as the request allows
        message = message[:MAX_ERROR] + "..."
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _params(request: Request) -> Params:
    params: Params = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def _decode_destination(raw: str) -> str:
    if raw[:7].lower() in ("http%3a", "https%3"):
        raw = unquote(raw)
    if "\x00" in raw:
        raise BadRequest("invalid destination: it holds a NUL character")
    return raw


def _check_no_nul(request: Request) -> None:
    """NUL is in no id, name, URL or filter, and PostgreSQL refuses it in text: refuse it here,
    the same on every database."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"invalid {name[:50]!r}: it holds a NUL character")


def _check_strings(value: Any, *, depth: int = 0) -> None:
    """Refuse NUL in every string of a JSON document but message bodies (bytes when stored)."""
    if depth > 64:
        raise BadRequest("body is nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest("body holds a NUL character")
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth=depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, depth=depth + 1)
            if key != "body":
                _check_strings(item, depth=depth + 1)


def _destination(request: Request, prefix: str) -> tuple[str, list[tuple[str, str]]]:
    """The destination exactly as sent (query string re-attached, ``//`` kept), and the
    ``upstash-*`` query parameters that configure the message instead."""
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    path = raw_path.decode("latin-1").split("?", 1)[0]
    rest = path[len(prefix) :] if path.startswith(prefix) else request.path_params.get("rest", "")
    destination = _decode_destination(rest)
    kept: list[str] = []
    options: list[tuple[str, str]] = []
    query = request.scope.get("query_string", b"").decode("latin-1")
    for part in query.split("&") if query else []:
        name = unquote(part.split("=", 1)[0]).lower()
        if name == "qstash_token":
            continue
        if name.startswith("upstash-"):
            options.extend((canonical(k), v) for k, v in parse_qsl(part, keep_blank_values=True))
            continue
        kept.append(part)
    if kept:
        destination += ("&" if "?" in destination else "?") + "&".join(kept)
    if not destination:
        raise BadRequest("destination is required")
    return destination, options


def _caller_ip(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        first = forwarded.split(",")[0].strip()
        if 0 < len(first) <= 64:  # an address; anything longer is not one
            return first
    return request.client.host if request.client else None


def _message_filter(params: Params) -> Callable[[Message], bool]:
    """The live messages a bulk cancel's filters match, as the listings' filters match rows."""
    wanted = {
        name: set(values(params, name))
        for name in ("queueName", "url", "scheduleId", "flowControlKey", "topicName", "callerIp")
    }
    wanted = {k: v for k, v in wanted.items() if v}
    labels = set(values(params, "label"))
    hosts = values(params, "host")
    paths = values(params, "path")
    since, until = time_bounds(params)

    def matches(m: Message) -> bool:
        fields = {
            "queueName": m.queue_name,
            "url": m.url,
            "scheduleId": m.schedule_id,
            "flowControlKey": m.flow_control.key if m.flow_control else None,
            "topicName": m.topic_name,
            "callerIp": m.caller_ip,
        }
        return (
            all(fields[k] in v for k, v in wanted.items())
            and (not labels or any(label in labels for label in m.labels))
            and (not hosts or any(url_has_host(m.url, h) for h in hosts))
            and (not paths or any(p in m.url for p in paths))
            and (since is None or m.created_at >= since)
            and (until is None or m.created_at <= until)
        )

    return matches


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise PayloadTooLarge(f"message body is larger than {MAX_BODY} bytes")
    return body


async def _json(request: Request) -> Any:
    return _loads(await request.body())


def _loads(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    _check_strings(data)
    return data


def _overrides(request: Request) -> tuple[Options, set[str]]:
    """Config headers on a DLQ retry request, which win over the original message's."""
    options = parse_options(request.headers.items())
    names = set()
    headers = {k.lower() for k in request.headers}
    mapping = {
        "upstash-retries": "retries",
        "upstash-retry-delay": "retry_delay_expression",
        "upstash-callback": "callback",
        "upstash-failure-callback": "failure_callback",
        "upstash-timeout": "timeout_seconds",
        "upstash-method": "method",
        "upstash-delay": "delay_seconds",
        "upstash-not-before": "not_before",
    }
    for header, name in mapping.items():
        if header in headers:
            names.add(name)
    if any(h.startswith("upstash-forward-") for h in headers):
        names.add("forward")
    if "upstash-flow-control-key" in headers:
        names.add("flow_control")
    return options, names
