"""Driver errors become domain errors here, at the database boundary, with the cause chained."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from jobsvc.errors import AlreadyExists, FieldViolation, InvalidArgument, StorageUnavailable

# PostgreSQL's SQLSTATE and SQLite's extended result codes for a duplicate key.
_UNIQUE_VIOLATIONS = frozenset(
    {"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
)


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Translate what the database raises while doing ``action`` ("insert the job", ...).

    A duplicate key is AlreadyExists; another violated constraint (a CHECK the use-case layer
    should have caught first) is InvalidArgument; anything else the database or the pool raised
    (unreachable, timed out, locked) is StorageUnavailable.
    """
    try:
        yield
    except IntegrityError as exc:
        detail = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        if _code(exc) in _UNIQUE_VIOLATIONS:
            raise AlreadyExists(f"cannot {action}: {detail}") from exc
        raise InvalidArgument(FieldViolation("job", f"cannot {action}: {detail}")) from exc
    except DBAPIError as exc:
        raise StorageUnavailable(f"the job log cannot {action}: {_first_line(exc)}") from exc
    except StatementError:
        raise  # our code bound a bad value (e.g. a naive datetime): a bug, not an outage
    except SQLAlchemyError as exc:
        raise StorageUnavailable(f"the job log cannot {action}: {_first_line(exc)}") from exc


def _code(exc: IntegrityError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return code if isinstance(code, str) else None


def _first_line(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
