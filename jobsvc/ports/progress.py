"""Progress: what a job's earlier attempts already did, kept so a retried attempt does not do it
again (a platform published to, an email sent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# The ``status`` of a note that records a refusal; see ``Progress``.
REJECTED = "rejected"


class Progress(Protocol):
    """Durable notes of one job, by key (``platform:zillow``, ``email``). ``record`` returns once
    the note is committed; a later attempt of the same job reads it back with ``get``. A note
    whose ``status`` is ``"rejected"`` (a refusal) lasts until an operator re-drives the failed
    job (RetryJob): then the refused step is tried again, while steps that succeeded stay done."""

    async def get(self, key: str) -> Mapping[str, Any] | None: ...

    async def record(self, key: str, value: Mapping[str, Any]) -> None: ...

    async def all(self) -> dict[str, Mapping[str, Any]]: ...
