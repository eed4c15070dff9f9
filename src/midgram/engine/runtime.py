"""What the built-in commands need to know about the running server, behind one interface.

``ps``, ``log_level``, ``uptime`` and ``kill`` ask a ``Runtime``; the server gives them one
that reads the supervisor's shared process table, and a program that runs the engine
in its own process gets ``LocalRuntime``.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Protocol

from midgram.logs import DEFAULT_LOG_LEVEL, opensips_to_logging

__all__ = [
    "LocalRuntime",
    "ProcessInfo",
    "ProcessTable",
    "Runtime",
    "SharedRuntime",
    "apply_log_level",
    "reopen_log_files",
]


def apply_log_level(level: int) -> None:
    """Make this process log at an OpenSIPS level (the ``midgram`` logger tree)."""
    logging.getLogger("midgram").setLevel(opensips_to_logging(level))


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One row of ``ps``: OpenSIPS's ``ID``, ``PID`` and ``Type`` plus the log level."""

    id: int
    pid: int
    type: str
    log_level: int = DEFAULT_LOG_LEVEL.opensips_level


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

    def __init__(
        self,
        process_type: str = "MI Datagram",
        started: float | None = None,
        level: int = DEFAULT_LOG_LEVEL.opensips_level,
    ) -> None:
        self._started = time.time() if started is None else started
        self._type = process_type
        self._level = level
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


# --- the pre-forked server's shared process table -----------------------------------------

_PID, _LEVEL, _CELLS = 0, 1, 2


class ProcessTable:
    """Who runs, and at which log level: one row a process, shared by all of them.

    An anonymous MAP_SHARED mapping made before the fork, so every worker reads the same
    rows without locks: each row is written by the supervisor (pid) and by whoever changes
    a log level; a worker only reads its own level, once a loop turn.
    Row 0 is the supervisor ("attendant", as in OpenSIPS), rows 1..N the workers.
    """

    def __init__(
        self,
        workers: int,
        worker_type: str = "MI Datagram",
        level: int = DEFAULT_LOG_LEVEL.opensips_level,
    ) -> None:
        self.size = workers + 1
        self._map = mmap.mmap(-1, self.size * _CELLS * 8)
        self._cells = memoryview(self._map).cast("q")
        self._types = ["attendant"] + [worker_type] * workers
        for row in range(self.size):
            self._cells[row * _CELLS + _LEVEL] = level

    def register(self, row: int, pid: int) -> None:
        self._cells[row * _CELLS + _PID] = pid

    def unregister(self, row: int) -> None:
        self._cells[row * _CELLS + _PID] = 0

    def level(self, row: int) -> int:
        return self._cells[row * _CELLS + _LEVEL]

    def rows(self) -> list[ProcessInfo]:
        """The running processes (a dead worker's row is empty until it is respawned)."""
        cells = self._cells
        return [
            ProcessInfo(row, cells[row * _CELLS + _PID], self._types[row], self.level(row))
            for row in range(self.size)
            if cells[row * _CELLS + _PID]
        ]

    def set_level(self, level: int, pid: int | None = None) -> bool:
        rows = [p.id for p in self.rows() if pid is None or p.pid == pid]
        for row in rows:
            self._cells[row * _CELLS + _LEVEL] = level
        return bool(rows)


class SharedRuntime:
    """The runtime of one process of a pre-forked server (see ``ProcessTable``)."""

    def __init__(self, table: ProcessTable, row: int, started: float, supervisor_pid: int) -> None:
        self.table = table
        self.row = row
        self.supervisor_pid = supervisor_pid
        self._started = started
        self.stop_requested = False

    @property
    def started(self) -> float:
        return self._started

    def processes(self) -> list[ProcessInfo]:
        return self.table.rows()

    def set_log_level(self, level: int, pid: int | None = None) -> bool:
        return self.table.set_level(level, pid)

    def request_stop(self) -> None:
        # The worker signals the supervisor once this request's reply has been sent.
        self.stop_requested = True


def reopen_log_files() -> None:
    """SIGHUP: close file handlers so the next record re-opens the (rotated) file."""
    reopened = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()
            reopened = True
    if reopened:
        logging.getLogger(__name__).info("log file re-opened")
