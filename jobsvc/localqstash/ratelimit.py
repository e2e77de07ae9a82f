"""The burst limit: requests per second per user, answered with 429 as QStash does."""

from __future__ import annotations

import math
import time

from jobsvc.localqstash.errors import TooManyRequests


class BurstLimit:
    """A one-second window per user; ``limit`` 0 admits everything."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}

    def check(self, user_id: str) -> None:
        """Count one request; ``TooManyRequests`` with the ``Burst-RateLimit-*`` headers the
        SDKs read (``RateLimitExceededError``) when the window is full."""
        if self.limit <= 0:
            return
        now = time.time()
        second = math.floor(now)
        window, count = self._windows.get(user_id, (second, 0))
        if window != second:
            window, count = second, 0
        if count >= self.limit:
            raise TooManyRequests(
                "burst rate limit exceeded",
                headers={
                    "Burst-RateLimit-Limit": str(self.limit),
                    "Burst-RateLimit-Remaining": "0",
                    "Burst-RateLimit-Reset": str(second + 1),
                },
            )
        self._windows[user_id] = (window, count + 1)
