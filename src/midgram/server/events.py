"""Delivering event notifications: the sockets a process sends them from.

Each process of a server (every worker, the supervisor, the one process of an
``AsyncServer``) sends the events it raises itself, from its own unbound sockets, made when
first needed (after the fork): one a UDP family, as OpenSIPS's event_datagram does, and one
a UNIX subscriber. A UNIX datagram stays charged to its sender's send buffer until its
receiver reads it, so a subscriber that stopped reading would, on a shared socket, soon leave
no room for anyone else's notifications; on its own socket it fills only its own.

Every send is non-blocking and never retried: a subscriber that is gone, whose queue is full
or that a notification is too big for misses that notification. It is logged (at most once
per interval and subscriber) and counted (``event_datagram:dropped``); the subscriber stays
subscribed until it expires or unsubscribes, as in OpenSIPS.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Final

from midgram.engine.subscriptions import Destination, Subscriber
from midgram.logs import LOG_INTERVAL, RateLimitedLog, printable
from midgram.wire.address import HostKind, UdpAddress

__all__ = ["WORKER_RESTARTED", "EventSender"]

log = logging.getLogger(__name__)

#: The event the supervisor raises when it replaces a worker that died (docs/events.md).
WORKER_RESTARTED: Final = "E_MIDGRAM_WORKER_RESTARTED"

#: A UNIX subscriber's socket unused this long is closed at the next send.
IDLE_CLOSE: Final = 300.0
#: The most UNIX subscriber sockets one process keeps open (the least used go first).
MAX_UNIX_SOCKETS: Final = 1024

_DONTWAIT: Final = socket.MSG_DONTWAIT
_WHY: Final = {
    errno.EAGAIN: "its queue is full (is it reading?)",
    errno.ENOBUFS: "its queue is full (is it reading?)",
    errno.ENOENT: "it is gone",
    errno.ECONNREFUSED: "it is gone",
    errno.ENOTDIR: "it is gone",
    errno.EACCES: "permission denied (the subscriber's socket must be writable by the server)",
    errno.EPERM: "permission denied (the subscriber's socket must be writable by the server)",
    errno.EMSGSIZE: "the notification is too big for one datagram",
}


class EventSender:
    """Sends notifications from this process; ``resolve`` turns a UDP subscriber's host into
    the address to send to (a name through DNS, once, when it subscribes)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, log_interval: float = LOG_INTERVAL
    ) -> None:
        self._clock = clock
        self._log = RateLimitedLog(log, log_interval, clock=clock)
        self._pid = os.getpid()
        self._udp: dict[int, socket.socket] = {}
        # Per UNIX destination: its socket and when it was last used.
        self._unix: dict[bytes, tuple[socket.socket, float]] = {}
        self._next_sweep = clock() + IDLE_CLOSE

    def resolve(self, address: UdpAddress) -> Destination:
        """IPv4 first for a host name (as OpenSIPS resolves it), else its first address.
        ``OSError`` (``socket.gaierror``) when it has none."""
        flags = socket.AI_NUMERICHOST if address.host_kind is not HostKind.NAME else 0
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM, flags=flags)
        if not infos:
            raise OSError(errno.EADDRNOTAVAIL, "the host has no address")
        family, _, _, _, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
        host, port, *rest = sockaddr
        scope = int(rest[1]) if family == socket.AF_INET6 else 0
        return Destination.ip(family, str(host), int(port), scope)

    def send(self, event: str, datagram: bytes, subscribers: Sequence[Subscriber]) -> int:
        """Send ``datagram`` to each subscriber, without blocking; how many it reached."""
        if os.getpid() != self._pid:
            self._forget_parents()
        now = self._clock()
        reached = 0
        for subscriber in subscribers:
            destination = subscriber.destination
            try:
                sock = self._socket(destination, now)
                sock.sendto(datagram, _DONTWAIT, destination.sockaddr())
            except OSError as exc:
                self._dropped(event, subscriber, exc)
                continue
            reached += 1
        if now >= self._next_sweep:
            self._sweep(now)
        return reached

    def close(self) -> None:
        for sock in self._udp.values():
            sock.close()
        for sock, _ in self._unix.values():
            sock.close()
        self._udp.clear()
        self._unix.clear()

    def _socket(self, destination: Destination, now: float) -> socket.socket:
        family = destination.family
        if family != socket.AF_UNIX:
            sock = self._udp.get(family)
            if sock is None:
                sock = self._udp[family] = _open(family)
            return sock
        known = self._unix.get(destination.address)
        if known is None:
            if len(self._unix) >= MAX_UNIX_SOCKETS:
                self._close_least_used()
            sock = _open(socket.AF_UNIX)
        else:
            sock = known[0]
        self._unix[destination.address] = (sock, now)
        return sock

    def _dropped(self, event: str, subscriber: Subscriber, exc: OSError) -> None:
        why = _WHY.get(exc.errno or 0) or exc.strerror or str(exc)
        self._log.log(
            (subscriber.socket, exc.errno),
            logging.WARNING,
            "cannot send event %s to %s: %s",
            event,
            printable(subscriber.socket),
            why,
        )

    def _sweep(self, now: float) -> None:
        """Close the UNIX sockets of subscribers not sent to for IDLE_CLOSE seconds."""
        self._next_sweep = now + IDLE_CLOSE
        for address, (sock, used) in list(self._unix.items()):
            if now - used >= IDLE_CLOSE:
                sock.close()
                del self._unix[address]

    def _close_least_used(self) -> None:
        address = min(self._unix, key=lambda key: self._unix[key][1])
        self._unix.pop(address)[0].close()

    def _forget_parents(self) -> None:
        """In a forked child: the sockets are the parent's (its UNIX ones hold its unread
        datagrams); this process makes its own."""
        self._pid = os.getpid()
        self.close()


def _open(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock
