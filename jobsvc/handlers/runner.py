"""Runs one attempt of a job: validate the stored payload, call the handler under a deadline,
and turn whatever happens into an ``Outcome``.

Log records carry the context's job fields and a stable ``action``: ``handler_not_registered``,
``handler_payload_invalid``, ``handler_started``, ``handler_completed``, ``handler_skipped``,
``handler_retry_requested``, ``handler_failed``, ``handler_timed_out``, ``handler_crashed``,
``handler_result_invalid``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

from jobsvc.errors import InvalidArgument
from jobsvc.handlers.context import HandlerContext
from jobsvc.handlers.outcomes import HandlerResult, Outcome, PermanentFailure, RetryLater
from jobsvc.handlers.registry import HandlerRegistry
from jobsvc.jobs import JobType
from jobsvc.payloads.checks import json_copy


async def run(
    registry: HandlerRegistry,
    job_type: JobType,
    payload: Mapping[str, Any],
    ctx: HandlerContext,
    # The deadline bounds the handler alone and its expiry is an outcome, not an exception.
    timeout: timedelta,  # noqa: ASYNC109
) -> Outcome:
    """Run the handler of ``job_type`` on the stored wire ``payload`` for attempt ``ctx``.

    - completed: the handler returned; its result (a JSON object) is in the outcome.
    - retry: it raised ``RetryLater`` (with its ``after``), overran ``timeout``, or raised any
      other exception (``error`` is the exception's type and message; the traceback is logged).
    - failed: it raised ``PermanentFailure``; or the payload is invalid, no handler serves the
      job type, or the handler returned something that is not a JSON object. Enqueue validated
      the payload already, so a bad stored one, like a bad result, would fail again on retry.

    Cancellation of the caller (shutdown) is not an outcome: ``CancelledError`` propagates.
    """
    if timeout <= timedelta(0):
        raise ValueError(f"timeout must be positive, got {timeout}")
    log = ctx.logger
    registration = registry.get(job_type)
    if registration is None:
        log.error("no handler serves %s", job_type, extra={"action": "handler_not_registered"})
        return Outcome.failed(f"no handler is registered for job type {job_type}")
    try:
        typed_payload = registration.payload_type.from_dict(payload)
    except InvalidArgument as exc:
        log.error("invalid stored payload: %s", exc, extra={"action": "handler_payload_invalid"})
        return Outcome.failed(f"invalid payload: {exc.message}")

    log.debug("handler started", extra={"action": "handler_started"})
    started = time.perf_counter()
    deadline = asyncio.timeout(timeout.total_seconds())
    try:
        async with deadline:
            returned = await registration.handler(typed_payload, ctx)
    except RetryLater as exc:
        log.warning(
            "handler asked to retry: %s", exc.reason, extra={"action": "handler_retry_requested"}
        )
        return Outcome.retry(exc.reason, exc.after)
    except PermanentFailure as exc:
        log.error("handler failed permanently: %s", exc.reason, extra={"action": "handler_failed"})
        return Outcome.failed(exc.reason)
    except TimeoutError as exc:
        if not deadline.expired():
            # The handler's own TimeoutError (an HTTP client's, say), not our deadline.
            return _crashed(ctx, exc)
        error = f"handler timed out after {timeout.total_seconds():g} s"
        log.warning("%s", error, extra={"action": "handler_timed_out"})
        return Outcome.retry(error)
    except Exception as exc:
        return _crashed(ctx, exc)
    return _completed(ctx, returned, time.perf_counter() - started)


def _crashed(ctx: HandlerContext, exc: Exception) -> Outcome:
    ctx.logger.exception(
        "handler raised %s", type(exc).__name__, extra={"action": "handler_crashed"}
    )
    message = str(exc)
    return Outcome.retry(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _completed(ctx: HandlerContext, returned: object, seconds: float) -> Outcome:
    if isinstance(returned, HandlerResult):
        result, skipped = returned.to_dict(), returned.skipped
    elif isinstance(returned, Mapping):
        result, skipped = dict(returned), False
    else:
        error = f"handler returned {type(returned).__name__}, not a HandlerResult or dict"
        ctx.logger.error("%s", error, extra={"action": "handler_result_invalid"})
        return Outcome.failed(error)
    try:
        result = cast(dict[str, Any], json_copy(result))
    except ValueError as exc:
        # The result goes into a JSON column; a handler that returns, say, a datetime is a bug
        # that would recur on every retry, so it fails (and is retried by an operator once fixed).
        error = f"handler result {exc}"
        ctx.logger.error("%s", error, extra={"action": "handler_result_invalid"})
        return Outcome.failed(error)
    action = "handler_skipped" if skipped else "handler_completed"
    ctx.logger.info(
        "handler %s in %.1f ms",
        "skipped" if skipped else "completed",
        seconds * 1000,
        extra={"action": action, "duration_ms": round(seconds * 1000, 1)},
    )
    return Outcome.completed(result, skipped=skipped)
