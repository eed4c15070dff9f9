"""What the built-in commands need to know about the running server, behind one interface.

``ps``, ``log_level``, ``uptime`` and ``kill`` ask a ``Runtime``; the server gives them one
that reads the supervisor's shared process table, and a program that runs the engine
in its own process gets ``LocalRuntime``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "LocalRuntime",
    "ProcessInfo",
    "Runtime",
    "apply_log_level",
    "opensips_to_logging",
]

#: OpenSIPS log levels (L_ALERT -3 ... L_DBG 4) onto Python's logging levels.
OPENSIPS_LEVELS: Final = {
    -3: logging.CRITICAL,
    -2: logging.CRITICAL,
    -1: logging.ERROR,
    0: logging.ERROR,
    1: logging.WARNING,
    2: logging.INFO,
    3: logging.INFO,
    4: logging.DEBUG,
}
DEFAULT_LOG_LEVEL: Final = 3


def opensips_to_logging(level: int) -> int:
    """OpenSIPS accepts any integer: below -3 logs only alerts, above 4 logs everything."""
    return OPENSIPS_LEVELS[max(-3, min(4, level))]


def apply_log_level(level: int) -> None:
    """Make this process log at an OpenSIPS level (the ``midgram`` logger tree)."""
    logging.getLogger("midgram").setLevel(opensips_to_logging(level))


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One row of ``ps``: OpenSIPS's ``ID``, ``PID`` and ``Type`` plus the log level."""

    id: int
    pid: int
    type: str
    log_level: int = DEFAULT_LOG_LEVEL


class Runtime(Protocol):
    """The server as the built-in commands see it."""

    @property
    def started(self) -> float:
        """When the server started, in seconds since the epoch."""
        ...

    def processes(self) -> list[ProcessInfo]:
        """The running processes, supervisor ("attendant") first."""
        ...

    def set_log_level(self, level: int, pid: int | None = None) -> bool:
        """Set one process's level (or every process's); False if no such pid."""
        ...

    def request_stop(self) -> None:
        """Stop the whole server once the current reply has been sent."""
        ...


class LocalRuntime:
    """A server that is just this process (embedded use, ``children_count`` 0, tests)."""

    def __init__(self, process_type: str = "MI Datagram", started: float | None = None) -> None:
        self._started = time.time() if started is None else started
        self._type = process_type
        self._level = DEFAULT_LOG_LEVEL
        self.stop_requested = False

    @property
    def started(self) -> float:
        return self._started

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(0, os.getpid(), self._type, self._level)]

    def set_log_level(self, level: int, pid: int | None = None) -> bool:
        if pid is not None and pid != os.getpid():
            return False
        self._level = level
        apply_log_level(level)
        return True

    def request_stop(self) -> None:
        self.stop_requested = True
