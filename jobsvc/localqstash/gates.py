"""Limits on when a due message may start: queues (FIFO with parallelism), flow-control keys
(parallelism and rate per period) and the server's own concurrency cap."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from jobsvc.localqstash.durations import FlowControl
from jobsvc.localqstash.messages import Message


@dataclass
class Gate:
    """Messages that wait for a slot, in arrival order."""

    waiting: deque[Message] = field(default_factory=deque)
    active: int = 0


@dataclass
class QueueGate(Gate):
    """A queue holds its slot from a message's first attempt until it is delivered or failed."""

    name: str = ""
    parallelism: int = 1
    paused: bool = False
    created_at: int = 0
    updated_at: int = 0

    def has_room(self) -> bool:
        return not self.paused and self.active < self.parallelism


@dataclass
class FlowGate(Gate):
    """A flow-control key: at most ``parallelism`` attempts at once, ``rate`` starts per period.

    The limits come from the newest message that named the key, unless pinned by the API.
    """

    key: str = ""
    parallelism: int | None = None
    rate: int | None = None
    period_seconds: int = 1
    paused: bool = False
    pinned_parallelism: int | None = None
    pinned_rate: int | None = None
    pinned_period: int | None = None
    window_start: float = 0.0
    window_count: int = 0

    def adopt(self, fc: FlowControl) -> None:
        self.parallelism, self.rate, self.period_seconds = (
            fc.parallelism,
            fc.rate,
            fc.period_seconds,
        )

    @property
    def parallelism_max(self) -> int | None:
        return self.pinned_parallelism if self.pinned_parallelism is not None else self.parallelism

    @property
    def rate_max(self) -> int | None:
        return self.pinned_rate if self.pinned_rate is not None else self.rate

    @property
    def period(self) -> float:
        return float(self.pinned_period if self.pinned_period is not None else self.period_seconds)

    def _roll(self, now: float, scale: float) -> None:
        span = self.period * scale
        if now - self.window_start >= span:
            # Windows are aligned to the first start so a burst is spread evenly.
            elapsed = math.floor((now - self.window_start) / span) if self.window_start else 0
            self.window_start = self.window_start + elapsed * span if self.window_start else now
            self.window_count = 0

    def blocked_until(self, scale: float) -> float | None:
        """``None`` when a start is allowed now; otherwise when to look again (monotonic),
        or ``inf`` when only a finishing attempt or a resume can free a slot."""
        if self.paused:
            return math.inf
        limit = self.parallelism_max
        if limit is not None and self.active >= limit:
            return math.inf
        rate = self.rate_max
        if rate is not None:
            now = time.monotonic()
            self._roll(now, scale)
            if self.window_count >= rate:
                return self.window_start + self.period * scale
        return None

    def started(self, scale: float) -> None:
        self.active += 1
        if self.rate_max is not None:
            self._roll(time.monotonic(), scale)
            self.window_count += 1
