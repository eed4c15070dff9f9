"""The one local socket an event listener receives its notifications on, what the server is
told to send to (the ``socket`` of ``event_subscribe``), and which datagrams on it are taken.

Where it listens, unless told (``listen``, ``advertise``):

- a UDP target: a UDP socket on the address this host sends to the target from (the kernel's
  route, asked with a ``connect`` that sends nothing), any free port, in the target's address
  family. Not ``gethostbyname(hostname)``, which in a container or on a multi-homed host
  names an address the server may not reach;
- a UNIX target: a socket in a fresh private directory (``/tmp/midgram-XXXX/events.sock``;
  ``TMPDIR`` moves it) that a server running as another user can send to, removed on close.
  Never an abstract name: OpenSIPS cannot send to one.

``listen`` binds elsewhere (``udp:0.0.0.0:9999`` behind NAT or in a container, a path of
your choice); ``advertise`` is what the server is told when that differs from what is bound
(the NAT's public address, the path as the server's container sees it).

What is taken: a UNIX datagram only from the target's own socket or from an unbound socket
of root, this user or the owner of the target's socket file (as a reply is, ``exchange``);
a UDP datagram from anywhere (OpenSIPS sends from a port of its own, and through NAT from an
address the listener cannot know), so bind UDP where only the server can reach it. Each
event says who sent it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from midgram.client.exchange import (
    CREDENTIALS_SPACE,
    Origin,
    Sockaddr,
    bind_private,
    origin_of,
    remove_private,
    sender_credentials,
)
from midgram.errors import TransportError
from midgram.logs import peer_label
from midgram.wire.address import HostKind, UdpAddress, UnixAddress, event_socket_text
from midgram.wire.jsonrpc import MAX_BUF_SIZE

__all__ = ["LISTEN_SOCKET_NAME", "EventSocket", "Received"]

log = logging.getLogger(__name__)

#: The socket's name in its private directory.
LISTEN_SOCKET_NAME: Final = "events.sock"
# Room for a burst of notifications while the program is busy (the kernel caps it at
# net.core.rmem_max). A notification has no size limit in OpenSIPS: 98 KB ones were seen.
_RCVBUF: Final = 1 << 20
_DROPS_AT_ONCE: Final = 64
_SOCKET_MODE: Final = 0o622  # the server may run as another user: it must be able to write
# A UNIX target's server is on this host: a UDP listener is advertised on loopback.
_LOOPBACK: Final[dict[int, str]] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
# Behind NAT, only the port advertised is known: it is bound on every address.
_WILDCARD: Final[dict[int, str]] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}  # noqa: S104


@dataclass(frozen=True)
class Received:
    """A datagram taken: its bytes, who sent it (``udp:HOST:PORT``, ``unix:PATH``, or
    ``unix:(pid N)`` for an unbound sender) and when (``time.time()``)."""

    data: bytes
    sender: str
    received: float


class EventSocket:
    """The bound socket, non-blocking; ``advertised`` is the ``socket`` text to subscribe."""

    def __init__(
        self,
        sock: socket.socket,
        advertised: UnixAddress | UdpAddress,
        origin: Origin | None,
        cleanup: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.advertised = event_socket_text(advertised)
        self._origin = origin
        self._cleanup: Callable[[], None] | None = cleanup

    @classmethod
    def open(
        cls,
        target: UnixAddress | UdpAddress,
        resolved: tuple[int, Sockaddr],
        listen: UnixAddress | UdpAddress | None = None,
        advertise: UnixAddress | UdpAddress | None = None,
    ) -> EventSocket:
        """Bind where the notifications from ``target`` (``resolved``: its family and
        sockaddr) should arrive. ``TransportError`` when that cannot be bound; ``ValueError``
        when ``listen`` and ``advertise`` name different transports."""
        if listen and advertise and type(listen) is not type(advertise):
            raise ValueError(
                f"listen {event_socket_text(listen)} and advertise "
                f"{event_socket_text(advertise)} must both be udp: or both unix:"
            )
        chosen = listen or advertise or target
        if isinstance(chosen, UnixAddress):
            return cls._open_unix(target, _unix(listen), _unix(advertise))
        return cls._open_udp(resolved, _udp(listen), _udp(advertise))

    @classmethod
    def _open_unix(
        cls,
        target: UnixAddress | UdpAddress,
        listen: UnixAddress | None,
        advertise: UnixAddress | None,
    ) -> EventSocket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Each datagram then carries its sender's credentials, as the kernel knows them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            chosen = listen or advertise
            if chosen is None:
                with _listening_on("a private directory"):
                    directory = bind_private(sock, None, LISTEN_SOCKET_NAME)
                path = os.path.join(directory, LISTEN_SOCKET_NAME)
                cleanup = _call(remove_private, directory, LISTEN_SOCKET_NAME)
                bound = UnixAddress(path)
            else:
                with _listening_on(event_socket_text(chosen)):
                    sock.bind(chosen.sockaddr())
                bound = chosen
                cleanup = _unlink_later(chosen)
                if not chosen.abstract:
                    os.chmod(chosen.path, _SOCKET_MODE)
                    # The server resolves a relative path against its own directory.
                    bound = UnixAddress(os.path.abspath(chosen.path))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock, advertise or bound, _unix_origin(target), cleanup)

    @classmethod
    def _open_udp(
        cls,
        resolved: tuple[int, Sockaddr],
        listen: UdpAddress | None,
        advertise: UdpAddress | None,
    ) -> EventSocket:
        family, sockaddr = _udp_bind_address(resolved, listen, advertise)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            where = listen or advertise
            shown = event_socket_text(where) if where else f"udp:{peer_label(sockaddr)}"
            with _listening_on(shown):
                sock.bind(sockaddr)
            sock.setblocking(False)
            if advertise is None:
                host, port = sock.getsockname()[:2]
                if ipaddress.ip_address(host).is_unspecified:
                    host = _route_source(resolved, family)
                advertise = UdpAddress(host, port)
        except BaseException:
            sock.close()
            raise
        return cls(sock, advertise, None, lambda: None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Received | None:
        """The next datagram taken, or None when none is waiting (it never blocks). After
        ``_DROPS_AT_ONCE`` datagrams dropped in a row it returns None too: a flood of them
        must not keep its caller from renewing its subscriptions."""
        for _ in range(_DROPS_AT_ONCE):
            try:
                data, ancillary, flags, sender = self.sock.recvmsg(MAX_BUF_SIZE, CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                return None
            if self._origin is not None and not self._origin.admits(sender, ancillary):
                log.info("%s: ignored a datagram from %s", self.advertised, peer_label(sender))
                continue
            if flags & socket.MSG_TRUNC:
                log.info("%s: ignored a datagram over %d bytes", self.advertised, MAX_BUF_SIZE)
                continue
            return Received(data, _sender_text(sender, ancillary), time.time())
        return None

    def close(self) -> None:
        """Close the socket and remove what was made on disk (again: nothing happens)."""
        self.sock.close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()


@contextlib.contextmanager
def _listening_on(where: str) -> Iterator[None]:
    """A failed bind as ``TransportError``, naming where it could not listen."""
    try:
        yield
    except OSError as exc:
        hint = " (another listener uses it?)" if exc.errno == errno.EADDRINUSE else ""
        raise TransportError(
            f"cannot listen on {where}: {exc.strerror or exc}{hint}", where
        ) from exc


def _call(function: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: function(*args)


def _unlink_later(address: UnixAddress) -> Callable[[], None]:
    def unlink() -> None:
        if not address.abstract:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)

    return unlink


def _unix_origin(target: UnixAddress | UdpAddress) -> Origin:
    """Who may send to a UNIX listener: the target's socket, or an unbound socket of root,
    this user or the target socket file's owner."""
    if isinstance(target, UnixAddress):
        return origin_of(target, target.sockaddr())
    return Origin("", frozenset({0, os.geteuid()}))


def _unix(address: UnixAddress | UdpAddress | None) -> UnixAddress | None:
    return address if isinstance(address, UnixAddress) else None


def _udp(address: UnixAddress | UdpAddress | None) -> UdpAddress | None:
    return address if isinstance(address, UdpAddress) else None


def _family(address: UdpAddress) -> int:
    return socket.AF_INET6 if address.host_kind is HostKind.IPV6 else socket.AF_INET


def _udp_bind_address(
    resolved: tuple[int, Sockaddr], listen: UdpAddress | None, advertise: UdpAddress | None
) -> tuple[int, tuple[str, int]]:
    if listen is not None:
        if listen.host_kind is HostKind.NAME:
            family, host = _resolve_local(listen)
            return family, (host, listen.port)
        return _family(listen), (listen.host, listen.port)
    if advertise is not None:  # behind NAT: the port advertised, on every local address
        family = _family(advertise)
        return family, (_WILDCARD[family], advertise.port)
    return resolved[0], (_route_source(resolved, resolved[0]), 0)


def _resolve_local(address: UdpAddress) -> tuple[int, str]:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TransportError(
            f"cannot listen on {address}: cannot resolve the host: {exc.strerror}", str(address)
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    return int(family), str(sockaddr[0])


def _route_source(resolved: tuple[int, Sockaddr], family: int) -> str:
    """The address this host sends to the target from (its route; nothing is sent). A UNIX
    target is on this host: its loopback address."""
    target_family, sockaddr = resolved
    if target_family == socket.AF_UNIX:
        return _LOOPBACK[family]
    if target_family != family:
        raise ValueError(
            "the listening address is not of the target's address family: give advertise "
            "(the address the server is to send to)"
        )
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(sockaddr)
        except OSError as exc:
            raise TransportError(
                f"no route to {peer_label(sockaddr)}: {exc.strerror or exc}",
                peer_label(sockaddr),
            ) from exc
        return str(probe.getsockname()[0]).partition("%")[0]


def _sender_text(sender: Any, ancillary: list[tuple[int, int, bytes]]) -> str:
    if isinstance(sender, tuple):
        return f"udp:{peer_label(sender)}"
    if sender:
        return f"unix:{peer_label(sender)}"
    credentials = sender_credentials(ancillary)
    return "unix:(unbound)" if credentials is None else f"unix:(pid {credentials[0]})"
