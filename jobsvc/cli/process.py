"""What every long-running subcommand needs: an event loop, and messages that never leak a
password."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def run_async(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` on uvloop (installed with uvicorn[standard]) or asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def fail(command: str, message: str, code: int = 1) -> int:
    """Print one readable line for ``jobsvc <command>`` and return the exit code."""
    print(f"jobsvc {command}: {message}", file=sys.stderr)
    return code
