"""Parsing of the duration, boolean, flow-control and retry-delay values QStash headers carry."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from jobsvc.localqstash.errors import BadRequest

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
ONE_DAY_SECONDS = 86400.0
# QStash caps every retry delay (backoff, expression, Retry-After) at one day.
MAX_RETRY_DELAY_SECONDS = ONE_DAY_SECONDS
# A longer Upstash-Retry-Delay is refused before it is parsed (real ones are a few dozen).
MAX_EXPRESSION_LENGTH = 1000
# The furthest any duration header may reach (delays are further bounded by the plan's
# maximum, timeouts by the attempt timeout); beyond it the value is refused, not overflowed.
MAX_DURATION_SECONDS = 100 * 365 * ONE_DAY_SECONDS
# The latest instant the server computes or stores, in ms (the year 9999; fits BIGINT).
MAX_TIME_MS = 253_402_300_799_000


def later_ms(now_ms: int, seconds: float, *, scale: float = 1.0) -> int:
    """``now_ms`` plus ``seconds`` (times ``scale``), bounded to ``[now_ms, MAX_TIME_MS]``: every
    due time and not-before the server computes goes through here, so none can overflow a
    database column or the clock. NaN counts as no wait."""
    wait = seconds * scale * 1000.0
    if not wait > 0:  # also NaN
        return now_ms
    return int(min(float(MAX_TIME_MS), now_ms + wait))


def bounded_retry_delay(seconds: float) -> float:
    """A retry delay within ``[0, MAX_RETRY_DELAY_SECONDS]``, as QStash bounds it."""
    if math.isnan(seconds) or seconds <= 0:
        return 0.0
    return min(seconds, MAX_RETRY_DELAY_SECONDS)


def parse_duration(value: str, *, name: str) -> float:
    """Seconds in ``50s``, ``1d10h30m`` or a bare integer (seconds); ``BadRequest`` otherwise."""
    text = value.strip()
    match = None if len(text) > 64 else _DURATION.match(text)
    if not text or (not text.isdigit() and match is None):
        raise BadRequest(
            f"invalid {name}: {value[:100]!r}, expected a duration like 50s or 1d10h30m"
        )
    if text.isdigit():
        total = int(text)
    else:
        assert match is not None
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION_SECONDS:
        raise BadRequest(f"invalid {name}: {value[:100]!r} is longer than 100 years")
    return float(total)


def parse_bool(value: str | None) -> bool:
    """QStash booleans are case-insensitive (the Python SDK sends ``True``)."""
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def parse_int(value: str, *, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    text = value.strip()
    try:
        # 19 digits hold any 64-bit value; longer ones only make int() slow.
        number = int(text) if len(text) <= 20 else None
    except ValueError:
        number = None
    if number is None:
        raise BadRequest(f"invalid {name}: {value[:100]!r}, expected an integer")
    if maximum is None:
        maximum = 2**63 - 1  # what a database column holds
    if number < minimum or number > maximum:
        raise BadRequest(f"invalid {name}: {number}, must be between {minimum} and {maximum}")
    return number


@dataclass(frozen=True)
class FlowControl:
    """A flow-control key with its limits: concurrent deliveries, and starts per period."""

    key: str
    parallelism: int | None = None
    rate: int | None = None
    period_seconds: int = 1


def parse_flow_control(key: str, value: str | None) -> FlowControl:
    """Parse ``parallelism=2, rate=5, period=1m`` (``,`` or ``, `` separated)."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-:]{1,256}", key):
        raise BadRequest(f"invalid flow control key: {key!r}")
    limits: dict[str, str] = {}
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("parallelism", "rate", "period"):
            raise BadRequest(f"invalid flow control value part: {part!r}")
        limits[name] = raw.strip()
    parallelism = (
        parse_int(limits["parallelism"], name="flow control parallelism", minimum=1)
        if "parallelism" in limits
        else None
    )
    rate = (
        parse_int(limits["rate"], name="flow control rate", minimum=1) if "rate" in limits else None
    )
    period = 1
    if "period" in limits:
        period = int(parse_duration(limits["period"], name="flow control period"))
        if not 1 <= period <= 7 * 86400:
            raise BadRequest("invalid flow control period: must be between 1s and 1 week")
    return FlowControl(key=key, parallelism=parallelism, rate=rate, period_seconds=period)


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "pow": math.pow,
    "sqrt": math.sqrt,
    "abs": abs,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
    "min": min,
    "max": max,
}


def check_retry_delay_expression(expression: str) -> None:
    """Reject an ``Upstash-Retry-Delay`` expression that cannot be evaluated to a finite number
    of milliseconds for the first retry (larger finite values are capped at one day later)."""
    if not math.isfinite(retry_delay_ms(expression, retried=0)):
        raise BadRequest(
            f"invalid retry delay expression {expression[:100]!r}: not a finite number"
        )


def retry_delay_ms(expression: str, *, retried: int) -> float:
    """Evaluate an ``Upstash-Retry-Delay`` expression: milliseconds after ``retried`` retries.
    ``BadRequest`` for anything that is not a readable, computable expression."""
    shown = expression[:100]
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise BadRequest(
            f"invalid retry delay expression {shown!r}...: longer than "
            f"{MAX_EXPRESSION_LENGTH} characters"
        )
    try:
        return _evaluate(expression, retried=retried)
    except BadRequest:
        raise
    # RecursionError and MemoryError: a deeply nested expression (within the length bound).
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise BadRequest(f"invalid retry delay expression {shown!r}: {exc}"[:300]) from None


def _evaluate(expression: str, *, retried: int) -> float:
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise BadRequest(f"invalid retry delay expression: {expression[:100]!r}") from None

    def evaluate(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "retried":
            return float(retried)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise BadRequest("retry delay expression exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = evaluate(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return float(_FUNCTIONS[node.func.id](*(evaluate(arg) for arg in node.args)))
        raise BadRequest(f"invalid retry delay expression: {expression[:100]!r}")

    result = evaluate(tree)
    return result if math.isnan(result) else max(0.0, result)


def default_backoff_seconds(retried: int) -> float:
    """QStash's default: ``min(86400, e ** (2.5 * n))`` where n = 1 before the first retry."""
    return min(ONE_DAY_SECONDS, math.exp(2.5 * (retried + 1)))


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After``-style value: seconds, unix time, HTTP date or Go
    duration. ``None`` when unreadable."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        # Large numbers are reset instants (X-RateLimit-Reset), small ones are spans.
        return max(0.0, number - now) if number > 1_000_000_000 else max(0.0, number)
    if len(text) > 64:
        return None
    parts = _GO_DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        return sum(float(n) * unit[u] for n, u in parts)
    try:
        when = parsedate_to_datetime(text)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
