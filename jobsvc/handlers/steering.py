"""How a port's failure steers a job: a missing record is a permanent failure, an unavailable
system a retry (when it said when, at that time), a refused request a permanent failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from jobsvc.handlers.outcomes import PermanentFailure, RetryLater
from jobsvc.ports import NotFound, Rejected, Unavailable


@contextmanager
def port_failures(*, not_found: str) -> Iterator[None]:
    """Within the block: ``NotFound`` → ``PermanentFailure(not_found)``, ``Unavailable`` →
    ``RetryLater`` (after its ``retry_after``), ``Rejected`` → ``PermanentFailure``."""
    try:
        yield
    except NotFound as exc:
        raise PermanentFailure(f"{not_found} ({exc.message})") from exc
    except Unavailable as exc:
        raise RetryLater(exc.message, exc.retry_after) from exc
    except Rejected as exc:
        raise PermanentFailure(exc.message) from exc
