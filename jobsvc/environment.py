"""Typed reads of environment variables, for the settings modules: an empty value counts as
unset, and a value that cannot be used raises ``ValueError`` naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Environment:
    """Reads ``environ`` (default: the process's environment)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value not in (None, "") else None

    def number(self, name: str, default: float, *, positive: bool = False) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {raw!r}") from None
        if positive and value <= 0:
            raise ValueError(f"{name} must be positive, not {raw!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{name} must be true or false, not {raw!r}")
