"""The bound on handlers running at once in one process.

Beyond it a delivery is answered at once (``Overloaded``: retry after a while) rather than
started: handlers that wait for connections, threads or the database past their timeouts turn
a load spike into a retry storm, while an answered delivery waits in the broker's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from jobsvc.errors import Overloaded

DEFAULT_MAX_CONCURRENT_HANDLERS = 64
DEFAULT_OVERLOAD_RETRY_AFTER = timedelta(seconds=5)


class HandlerSlots:
    """``limit`` slots; ``taken()`` holds one for a block, or raises ``Overloaded`` (with
    ``retry_after``) when none is free; ``waited_for()`` waits for one instead (for callers
    that wait anyway, such as the inline broker inside Enqueue)."""

    def __init__(
        self,
        limit: int = DEFAULT_MAX_CONCURRENT_HANDLERS,
        *,
        retry_after: timedelta = DEFAULT_OVERLOAD_RETRY_AFTER,
    ) -> None:
        if limit < 1:
            raise ValueError(f"at least one handler must be allowed to run, not {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self._free = asyncio.Semaphore(limit)

    @property
    def running(self) -> int:
        """Slots held now."""
        return self.limit - self._free._value

    @contextlib.asynccontextmanager
    async def taken(self) -> AsyncIterator[None]:
        """Hold a slot for the block; ``Overloaded`` at once if all are held (or waited for)."""
        if self._free.locked():
            raise Overloaded(
                f"{self.limit} handlers are running, the most this sidecar runs at once",
                self.retry_after,
            )
        await self._free.acquire()  # free: returns at once
        try:
            yield
        finally:
            self._free.release()

    @contextlib.asynccontextmanager
    async def waited_for(self) -> AsyncIterator[None]:
        """Hold a slot for the block, waiting for one to be free."""
        async with self._free:
            yield
