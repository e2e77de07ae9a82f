"""Alembic migrations of the job log (installed as ``jobsvc.migrations``)."""
