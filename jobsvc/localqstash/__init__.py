"""A QStash-compatible server: the official QStash SDKs talk to it unchanged."""

from jobsvc.localqstash.server import LocalQStashServer, banner, running, serve_in_thread
from jobsvc.localqstash.settings import LocalQStashSettings
from jobsvc.localqstash.users import DEV_USERS, User

__all__ = [
    "DEV_USERS",
    "LocalQStashServer",
    "LocalQStashSettings",
    "User",
    "banner",
    "running",
    "serve_in_thread",
]
