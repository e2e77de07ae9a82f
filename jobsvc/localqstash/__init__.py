"""A QStash-compatible server: the official QStash SDKs talk to it unchanged.

Names are imported on first use, so a caller that only needs the settings does not load the
server (Starlette, uvicorn, aiohttp, SQLAlchemy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsvc.localqstash.server import LocalQStashServer, banner, running, serve_in_thread
    from jobsvc.localqstash.settings import LocalQStashSettings
    from jobsvc.localqstash.users import DEV_USERS, User

_EXPORTS = {
    "DEV_USERS": "users",
    "LocalQStashServer": "server",
    "LocalQStashSettings": "settings",
    "User": "users",
    "banner": "server",
    "running": "server",
    "serve_in_thread": "server",
}

__all__ = [
    "DEV_USERS",
    "LocalQStashServer",
    "LocalQStashSettings",
    "User",
    "banner",
    "running",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"jobsvc.localqstash.{module}"), name)
