"""Telling systemd how the server is doing: its notification protocol (sd_notify(3)), spoken
without libsystemd.

A ``Type=notify`` unit's process gets ``$NOTIFY_SOCKET``: a UNIX datagram socket, named by a
path or, with a leading ``@``, in the abstract namespace. Each notification is one datagram
of ``KEY=VALUE`` lines: ``READY=1`` once the server serves (``systemctl start`` returns
then, and a unit ordered after this one starts), ``STATUS=`` a line that ``systemctl
status`` shows, ``STOPPING=1`` when a stop begins, ``WATCHDOG=1`` at least once
every ``$WATCHDOG_USEC`` microseconds (``WatchdogSec=``), or systemd deems the service hung
and restarts it.

Only the process systemd started may notify (``NotifyAccess=main``, the default): the
variables are taken out of the environment when read, so neither the workers nor whatever a
command runs inherit them. A notification that cannot be sent is logged, never raised:
serving goes on either way.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from midgram.logs import RateLimitedLog, peer_label, printable

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

#: The variables systemd sets for a notifying service, and for its watchdog.
NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


@dataclass
class Notifier:
    """Where notifications go (None: nowhere, not under a notifying service manager), and
    how often the watchdog wants a ping (None: it does not)."""

    address: str | bytes | None = None
    #: Seconds between two pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    #: advises, so that one late ping is not yet a missed one.
    watchdog_interval: float | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._log = RateLimitedLog(log)
        self._next_ping = 0.0

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd asks for, if any; takes its variables out of the environment."""
        named = os.environ.pop(NOTIFY_SOCKET, None)
        usec = os.environ.pop(WATCHDOG_USEC, None)
        pid = os.environ.pop(WATCHDOG_PID, None)
        address = _address(named) if named else None
        interval = _watchdog_interval(usec, pid) if usec is not None and address else None
        return cls(address, interval)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def heartbeat(self) -> float | None:
        """The watchdog's ping, if one is due; in how many seconds the next is (None: no
        watchdog). Call it again by then."""
        if self.watchdog_interval is None:
            return None
        now = self.clock()
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self.notify("WATCHDOG=1")
        return self._next_ping - now

    def notify(self, *lines: str) -> None:
        """One datagram of ``lines`` (``KEY=VALUE``, one line each) to the service manager."""
        if self.address is None:
            return
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            # A socket per notification, as sd_notify does: they are few, and none is left
            # open for the workers forked later to inherit.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            self._log.log(
                "notify",
                logging.WARNING,
                "cannot notify systemd at %s: %s",
                peer_label(self.address),
                exc.strerror or exc,
            )


def _address(named: str) -> str | bytes | None:
    """The socket ``$NOTIFY_SOCKET`` names: a path, or ``@name`` in the abstract namespace.
    Anything else (systemd also knows ``vsock:`` for virtual machines) is not for us: said
    once, and nobody is notified."""
    if named.startswith("/"):
        return named
    if named.startswith("@") and len(named) > 1:
        return b"\0" + os.fsencode(named[1:])
    log.warning(
        "%s=%s is not a socket path or an @abstract name: systemd is not notified",
        NOTIFY_SOCKET,
        printable(named),
    )
    return None


def _watchdog_interval(usec: str, pid: str | None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds; None if the watchdog watches another process
    (``$WATCHDOG_PID``) or the value is not a positive number of microseconds."""
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        interval = int(usec) / 2_000_000
    except ValueError:
        interval = 0.0
    if interval <= 0:
        log.warning(
            "%s=%s is not a number of microseconds: no watchdog", WATCHDOG_USEC, printable(usec)
        )
        return None
    return interval
