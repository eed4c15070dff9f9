"""Log lines that a datagram can neither forge nor flood, and text that cannot hijack a terminal.

Anything that comes from outside (a method name, a datagram, the name a UNIX client bound to,
a string a server sent back) goes through ``printable`` or ``shown`` before it reaches a log
line or a terminal: a line break in a method name would otherwise start a forged log line,
and an escape sequence would drive the terminal of whoever reads it.

``RateLimitedLog`` keeps a cause that any sender can repeat (a refused peer, a reply that
cannot be sent, a command that keeps failing) to one line per interval, counting the rest.

``formatter_for`` gives the format of midgram's own log lines, on stderr or in a file; on the
systemd journal (stderr is the stream ``$JOURNAL_STREAM`` names), without a time of its own
and with each line's syslog priority, as journald reads it.

``LOG_LEVELS`` is the one table of log levels: each of Python's five with the OpenSIPS levels
and names that fold onto it and its syslog priority. What ``log_level`` accepts, what the
``log_level`` command reports, and each journal line's priority are read from it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Final

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "JOURNAL_FORMAT",
    "LOG_FORMAT",
    "LOG_INTERVAL",
    "LOG_LEVELS",
    "LOG_LEVEL_CHOICES",
    "SHOWN_MAX",
    "JournalFormatter",
    "LogLevel",
    "RateLimitedLog",
    "find_log_level",
    "formatter_for",
    "logging_level",
    "on_journal",
    "opensips_level",
    "opensips_to_logging",
    "peer_label",
    "printable",
    "shown",
    "syslog_priority",
]

#: At most one log line per cause per this many seconds.
LOG_INTERVAL: Final = 10.0
#: How much of a datagram or a name from outside a log line quotes.
SHOWN_MAX: Final = 100


def _escape(char: str) -> str:
    return repr(char)[1:-1]


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that is not printable (control characters, ESC, DEL,
    the C1 controls, line and paragraph separators...) written as its Python escape, as
    ``repr`` writes it; the characters of ``keep`` (e.g. newline and tab for a multi-line
    text) stay as they are. Printable text comes back unchanged, the same object."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def shown(value: str | bytes | None, limit: int = SHOWN_MAX) -> str:
    """A value from outside as a log line quotes it: ``repr`` (quotes and escapes, so it
    can neither end the line nor pass for syntax), cut to ``limit`` characters or bytes."""
    if value is None or len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} {'bytes' if isinstance(value, bytes) else 'chars'})"


@dataclass(slots=True)
class _Window:
    since: float
    suppressed: int = 0


class RateLimitedLog:
    """At most one line per key per ``interval`` seconds; the next line that gets through
    says how many were suppressed in between."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._windows: dict[Any, _Window] = {}

    def log(self, key: Any, level: int, msg: str, *args: object, exc_info: Any = None) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago.

        Returns whether the line was written (or handed to logging, at least).
        """
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.since < self._interval:
            window.suppressed += 1
            return False
        if len(self._windows) >= _KEYS_KEPT:
            self._windows.clear()  # keys a sender can vary cannot grow this without bound
        self._windows[key] = _Window(now)
        if window is not None and window.suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, window.suppressed)
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True


#: Causes remembered at once (see RateLimitedLog.log).
_KEYS_KEPT: Final = 1024


#: midgram's log lines: ``midgram serve``'s, and ``serve()``'s when the program set up none.
LOG_FORMAT: Final = "%(asctime)s midgram[%(process)d] %(levelname)s %(name)s: %(message)s"
#: The same on the journal, which stamps each line with its time and the service's name and
#: main pid: the pid here tells a worker's lines from the supervisor's.
JOURNAL_FORMAT: Final = "[%(process)d] %(levelname)s %(name)s: %(message)s"


def on_journal(stream: IO[Any]) -> bool:
    """Whether ``stream`` is connected to the systemd journal: systemd names the stream it
    gives a service in ``$JOURNAL_STREAM`` (``device:inode``); a stream redirected elsewhere
    has another one."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        named = int(device), int(inode)
        found = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset, malformed, or no descriptor
        return False
    return named == (found.st_dev, found.st_ino)


class JournalFormatter(logging.Formatter):
    """Each line prefixed with ``<N>``, its syslog priority, which journald takes off and
    keeps as the entry's level (journalctl colours and filters by it: ``-p warning``). A
    traceback's every line gets its record's priority: journald reads one entry a line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def syslog_priority(level: int) -> int:
    """The syslog priority of a ``logging`` level (a level between two takes the lower's)."""
    found = next((row for row in LOG_LEVELS if level >= row.number), LOG_LEVELS[-1])
    return found.syslog


def formatter_for(stream: IO[Any]) -> logging.Formatter:
    """The formatter of midgram's log lines on ``stream``."""
    if on_journal(stream):
        return JournalFormatter(JOURNAL_FORMAT)
    return logging.Formatter(LOG_FORMAT)


def peer_label(address: str | bytes | tuple[Any, ...] | None) -> str:
    """A peer address as a person reads it: a path, ``@abstract``, ``host:port``,
    ``[v6]:port``, or ``(unbound)``. A client names its own address: what is not printable
    in it is escaped, so that it cannot forge a log line."""
    if not address:
        return "(unbound)"
    if isinstance(address, bytes):
        return "@" + printable(address[1:].decode(errors="backslashreplace"))
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return printable(address)


# --- log levels: the one table -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLevel:
    """One level, as each part of midgram names it: ``log_level`` (the parameter and the MI
    command), the ``logging`` module, OpenSIPS and the systemd journal."""

    #: Python's name, lower case: what ``Settings.log_level`` holds.
    name: str
    #: The ``logging`` module's number.
    number: int
    #: OpenSIPS's levels (dprint.h) that fold onto it.
    opensips_levels: tuple[int, ...]
    #: OpenSIPS's names of those levels, accepted as ``log_level`` values too.
    opensips_names: tuple[str, ...]
    #: The syslog priority journald files its lines under.
    syslog: int

    @property
    def opensips_level(self) -> int:
        """The OpenSIPS level the ``log_level`` command reports for it: the highest that
        folds onto it (3 for info, as OpenSIPS's default)."""
        return max(self.opensips_levels)

    @property
    def keys(self) -> tuple[str | int, ...]:
        """Every ``log_level`` value that names it."""
        return (self.name, *self.opensips_names, *self.opensips_levels)


#: Most severe first. OpenSIPS has eight levels (L_ALERT -3, L_CRIT -2, L_ERR -1, 0, L_WARN 1,
#: L_NOTICE 2, L_INFO 3, L_DBG 4; a level shows messages at or below it, so 0 shows errors
#: only), Python five: each of Python's takes the OpenSIPS levels nearest to it.
LOG_LEVELS: Final = (
    LogLevel("critical", logging.CRITICAL, (-3, -2), ("alert", "crit"), 2),
    LogLevel("error", logging.ERROR, (-1, 0), ("err",), 3),
    LogLevel("warning", logging.WARNING, (1,), ("warn",), 4),
    LogLevel("info", logging.INFO, (2, 3), ("notice",), 6),
    LogLevel("debug", logging.DEBUG, (4,), ("dbg",), 7),
)
#: ``info``, OpenSIPS's 3.
DEFAULT_LOG_LEVEL: Final = LOG_LEVELS[3]

_BY_KEY: Final = {key: row for row in LOG_LEVELS for key in row.keys}
_BY_NUMBER: Final = {row.number: row for row in LOG_LEVELS}
_OPENSIPS_RANGE: Final = (
    min(level for row in LOG_LEVELS for level in row.opensips_levels),
    max(level for row in LOG_LEVELS for level in row.opensips_levels),
)
#: What a ``log_level`` value may be, as help texts and error messages say it.
LOG_LEVEL_CHOICES: Final = (
    f"{', '.join(row.name for row in reversed(LOG_LEVELS))}, "
    f"or an OpenSIPS level {_OPENSIPS_RANGE[0]}..{_OPENSIPS_RANGE[1]}"
)


def find_log_level(key: str | int) -> LogLevel | None:
    """The level a ``log_level`` value names: Python's name or OpenSIPS's (lower case), or an
    OpenSIPS number -3..4; None for anything else."""
    return _BY_KEY.get(key)


def logging_level(name: str) -> int:
    """The ``logging`` number of a ``Settings.log_level`` (one of the names of the table)."""
    return _BY_KEY[name].number


def opensips_to_logging(level: int) -> int:
    """OpenSIPS accepts any integer: below -3 logs only alerts, above 4 logs everything."""
    low, high = _OPENSIPS_RANGE
    return _BY_KEY[max(low, min(high, level))].number


def opensips_level(number: int) -> int:
    """The OpenSIPS level that ``log_level`` reports for a ``logging`` number (the default's
    for a number that is none of the five)."""
    return _BY_NUMBER.get(number, DEFAULT_LOG_LEVEL).opensips_level
