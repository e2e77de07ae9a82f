"""The job log: SQLAlchemy tables, Alembic migrations and the repository the service uses.

Only this package (and ``migrations/``) imports SQLAlchemy; it hands out ``jobsvc.jobs``
objects and raises ``jobsvc.errors``.
"""

from jobsvc.db.clock import Clock, utc_now
from jobsvc.db.engine import DEFAULT_DATABASE_URL, create_database_engine
from jobsvc.db.job_log import JobLog
from jobsvc.db.schedules import Schedules
from jobsvc.db.schema import current_revision, downgrade, head_revision, upgrade

__all__ = [
    "DEFAULT_DATABASE_URL",
    "Clock",
    "JobLog",
    "Schedules",
    "create_database_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
    "utc_now",
]
