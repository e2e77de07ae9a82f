"""jobsvc: background jobs over gRPC, PostgreSQL and QStash."""

__version__ = "0.1.0"
