"""Telling systemd how the server is doing: its notification protocol (sd_notify(3)), spoken
without libsystemd.

A ``Type=notify`` unit's process gets ``$NOTIFY_SOCKET``: a UNIX datagram socket, named by a
path or, with a leading ``@``, in the abstract namespace. Each notification is one datagram
of ``KEY=VALUE`` lines: ``READY=1`` once the server serves (``systemctl start`` returns
then, and a unit ordered after this one starts), ``STATUS=`` a line that ``systemctl
status`` shows, ``STOPPING=1`` when a stop begins.

Only the process systemd started may notify (``NotifyAccess=main``, the default): the
variable is taken out of the environment when read, so neither the workers nor whatever a
command runs inherit it. A notification that cannot be sent is logged, never raised:
serving goes on either way.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Final

from midgram.logs import RateLimitedLog, printable
from midgram.transport import peer_label

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

#: The variable systemd sets for a notifying service.
NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"


@dataclass
class Notifier:
    """Where notifications go (None: nowhere, not under a notifying service manager)."""

    address: str | bytes | None = None

    def __post_init__(self) -> None:
        self._log = RateLimitedLog(log)

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd asks for, if any; takes its variables out of the environment."""
        named = os.environ.pop(NOTIFY_SOCKET, None)
        return cls(_address(named) if named else None)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def notify(self, *lines: str) -> None:
        """One datagram of ``lines`` (``KEY=VALUE``, one line each) to the service manager."""
        if self.address is None:
            return
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            # A socket per notification, as sd_notify does: they are few, and no descriptor
            # of it outlives the call into the workers forked later.
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
        return b"\0" + named[1:].encode()
    log.warning(
        "%s=%s is not a socket path or an @abstract name: systemd is not notified",
        NOTIFY_SOCKET,
        printable(named),
    )
    return None
