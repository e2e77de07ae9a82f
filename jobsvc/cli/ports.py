"""Checking, before anything is migrated or written, that every port a command will listen on
is free, so a busy one is reported by address, part and setting instead of half-way through
start-up."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    """One address a part of the command will listen on, and the setting that moves it."""

    part: str
    host: str
    port: int
    setting: str

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def unavailable(listeners: Iterable[Listener]) -> str | None:
    """A one-line reason naming the first listener that cannot bind, or None when all can.

    The probes stay bound until all are made, so two parts given the same port are caught too.
    They use SO_REUSEADDR as the servers do: a port left in TIME_WAIT is not reported busy.
    """
    with contextlib.ExitStack() as probes:
        for listener in listeners:
            if listener.port == 0:  # any free port: nothing to collide with
                continue
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host.strip("[]"), listener.port))
                probe.listen()  # two bound sockets with SO_REUSEADDR clash only once listening
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    reason = "address already in use"
                else:
                    reason = (exc.strerror or str(exc)).lower()
                return (
                    f"cannot listen on {listener.address} ({listener.part}): {reason}; "
                    f"set {listener.setting}"
                )
    return None
