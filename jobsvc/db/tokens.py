"""Delivery tokens: the ``job_delivery_tokens`` table, the ``jti`` of every signature token the
sidecar accepted, so that a token is used once, whichever sidecar replica it reaches."""

from __future__ import annotations

import contextlib
import itertools
from datetime import datetime

from sqlalchemy import Connection, Engine, bindparam, delete, select

from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.driver_errors import storage_errors
from jobsvc.db.engine import dialect_insert
from jobsvc.db.tables import job_delivery_tokens
from jobsvc.errors import StorageUnavailable

# Every this many spends, up to PRUNE_LIMIT expired tokens are deleted: at most one statement
# per 64 deliveries, and room to delete 15 times more tokens than arrive.
PRUNE_EVERY = 64
PRUNE_LIMIT = 1000

_tokens = job_delivery_tokens.c
_PRUNE = delete(job_delivery_tokens).where(
    _tokens.jti.in_(
        select(_tokens.jti).where(_tokens.expires_at < bindparam("p_now")).limit(PRUNE_LIMIT)
    )
)


class DeliveryTokens:
    """Spend tokens (once each) and forget them once expired."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        self._spends = itertools.count(1)
        # RETURNING says whether the row was written: a token seen before writes nothing.
        self._insert = (
            dialect_insert(engine)(job_delivery_tokens)
            .on_conflict_do_nothing(index_elements=[_tokens.jti])
            .returning(_tokens.jti)
        )

    def spend(self, jti: str, usable_until: datetime) -> bool:
        """Record that the token ``jti`` (which verifies until ``usable_until``) is being used;
        False if it had been already. One statement: of two concurrent uses, one wins."""
        with storage_errors("remember the delivery token"), self._autocommit.connect() as c:
            fresh = self.spend_in(c, jti, usable_until)
        self.prune_if_due()
        return fresh

    def spend_in(self, connection: Connection, jti: str, usable_until: datetime) -> bool:
        """``spend`` as part of the caller's transaction (which then calls ``prune_if_due``
        once it is over)."""
        values = {"jti": jti, "expires_at": usable_until}
        return connection.execute(self._insert, values).first() is not None

    def prune_if_due(self) -> None:
        """``prune`` every ``PRUNE_EVERY`` spends (counted by the calls); errors are left for
        the next one, since the spend they follow is recorded."""
        if next(self._spends) % PRUNE_EVERY == 1:
            with contextlib.suppress(StorageUnavailable):
                self.prune()

    def prune(self) -> int:
        """Delete up to ``PRUNE_LIMIT`` tokens that have expired; how many went."""
        with storage_errors("forget expired delivery tokens"), self._autocommit.connect() as c:
            return c.execute(_PRUNE, {"p_now": self._clock()}).rowcount
