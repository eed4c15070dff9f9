"""One call's exchange: its own reply socket, its id and deadline, and where its reply may come
from. ``Client`` and ``AsyncClient`` (``calls``) drive it, blocking or in asyncio.

One socket per call, not one per client. Measured here: creating, auto-binding and closing a
UNIX datagram socket costs ~5 us, against ~100 us and more for a round trip to even the
fastest server, so sharing a socket would save little. And a shared socket would be wrong:

- the plain-text replies (``400 Parse_error``) carry no id, so on a shared socket they could
  not be told apart; on a per-call socket whatever arrives is that call's reply;
- a UNIX datagram socket queues at most ``max_dgram_qlen`` (10) unread datagrams, and
  OpenSIPS's replies are sent non-blocking and dropped when the queue is full: many calls in
  flight on one shared socket would lose replies, one socket per call cannot;
- a late reply to a call that timed out lands on a closed socket instead of confusing the
  next call; ids are still checked, against stray datagrams.

Any local user can send a datagram to a reply socket (an abstract name has no permissions,
and ``/proc/net/unix`` lists them), so a reply is accepted only from the address called
(``Origin``): the path or abstract name the server is bound to (midgram, Kamailio), or the
host and port for UDP. OpenSIPS answers UNIX calls from a separate, unbound socket: such a
reply is accepted only when the kernel's credentials of its sender (``SCM_CREDENTIALS``)
name root, the caller's own user or the owner of the socket file called. An abstract name
has no owner: there, an unbound sender must be root or the caller's user. A reply from
anywhere else is ignored, like a stray datagram.

The reply address of a UNIX call is an abstract name chosen by the kernel (Linux
"autobind"): nothing is created on disk, nothing is left behind, and a server running as any
user can answer it. With ``reply_dir`` (or off Linux) it is a socket in a fresh private
directory instead, removed after the call.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from midgram.client.codec import MAX_REQUEST_ID, Response, decode_response
from midgram.errors import BadReply, ClientError, ConnectError, ReplyTimeout, RequestTooLarge
from midgram.logs import peer_label
from midgram.wire.address import UDP_MAX_PAYLOAD, HostKind, UdpAddress, UnixAddress

__all__ = [
    "CREDENTIALS_SPACE",
    "Call",
    "Endpoint",
    "Exchange",
    "Origin",
    "RequestIds",
    "Sockaddr",
    "bind_private",
    "first_address",
    "origin_of",
    "remove_private",
    "resolve_error",
    "send_error",
    "send_once",
    "sender_credentials",
    "udp_resolution",
]

log = logging.getLogger(__name__)

Sockaddr = str | bytes | tuple[Any, ...]

# Linux reports ICMP errors (port unreachable -> ECONNREFUSED) on an unconnected UDP socket
# only with these options (the socket is not connect()ed: ECONNREFUSED must not wait for the
# timeout, and replies are checked by Origin instead). The numbers are Linux's.
_RECVERR: Final[dict[int, tuple[int, int]]] = {
    socket.AF_INET: (socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11)),
    socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25)),
}
# A full server queue makes a non-blocking send fail at once; retry with a growing pause.
_SEND_RETRY_FIRST: Final = 0.001
_SEND_RETRY_MAX: Final = 0.05
_ABSTRACT_REPLY: Final = sys.platform.startswith("linux")
_REPLY_SOCKET_NAME: Final = "reply"
# The server may run as another user: it needs write permission on the reply socket and
# search permission on its directory. The directory is not listable and its name is random.
_REPLY_SOCKET_MODE: Final = 0o622
_REPLY_DIR_MODE: Final = 0o711
#: Room for one SCM_CREDENTIALS message: struct ucred is pid, uid and gid, 4 bytes each.
_CREDENTIALS: Final = struct.Struct("=iII")
CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_CREDENTIALS.size)


@dataclass(frozen=True)
class Exchange:
    """One request and its reply (None when none came), for ``on_exchange`` hooks (``-v``)."""

    target: str
    request: bytes
    reply: bytes | None
    elapsed: float


class RequestIds:
    """Request ids: thread-safe, never 0 (Kamailio answers a null id with 0), within a C int.

    They start at a random point so that two clients' ids differ, which makes a stray reply
    (a server answering late to a reused address) unlikely to match.
    """

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(4), "big") % MAX_REQUEST_ID + 1
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            value = self._next
            self._next = value % MAX_REQUEST_ID + 1
        return value


def send_error(
    address: UnixAddress | UdpAddress, exc: OSError, size: int | None = None
) -> ClientError:
    """What a failed ``sendto`` (or receive) means: the request does not fit in a datagram
    (``EMSGSIZE``), or the target cannot be reached."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EMSGSIZE:
        if isinstance(address, UdpAddress):
            limit = f"a UDP datagram carries at most {UDP_MAX_PAYLOAD} bytes"
        else:
            limit = "more than the socket's send buffer holds"
        return RequestTooLarge(str(address), size, f"{reason}: {limit}")
    return ConnectError(str(address), reason, exc.errno)


class Endpoint:
    """The socket of one call, bound to its reply address; ``close()`` leaves nothing behind."""

    def __init__(self, family: int, reply_dir: str | None) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self._dir: str | None = None
        try:
            self.sock.setblocking(False)
            if family == socket.AF_UNIX:
                self._bind_unix(reply_dir)
            else:
                self.sock.setsockopt(*_RECVERR[family], 1)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, family: int, reply_dir: str | None) -> Endpoint:
        """An endpoint, or ``ClientError`` saying why none could be opened."""
        try:
            return cls(family, reply_dir)
        except OSError as exc:
            raise ClientError(f"cannot open a reply socket: {exc}") from exc

    def _bind_unix(self, reply_dir: str | None) -> None:
        # Each datagram then carries its sender's credentials, as the kernel knows them.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if reply_dir is None and _ABSTRACT_REPLY:
            self.sock.bind(b"")  # autobind: the kernel picks a free abstract name
            return
        self._dir = bind_private(self.sock, reply_dir, _REPLY_SOCKET_NAME)

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            remove_private(self._dir, _REPLY_SOCKET_NAME)
            self._dir = None


def bind_private(sock: socket.socket, parent: str | None, name: str) -> str:
    """Bind ``sock`` to ``name`` in a fresh private directory under ``parent`` (the temporary
    directory when None) that a server running as another user can send to; returns the
    directory, for ``remove_private``."""
    directory = tempfile.mkdtemp(prefix="midgram-", dir=parent)  # mode 0700
    path = os.path.join(directory, name)
    sock.bind(path)
    # Race-free: the directory stays 0700 until the socket has its final mode.
    os.chmod(path, _REPLY_SOCKET_MODE)
    os.chmod(directory, _REPLY_DIR_MODE)
    return directory


def remove_private(directory: str, name: str) -> None:
    """Remove what ``bind_private`` made (whatever is already gone is fine)."""
    for remove, path in ((os.unlink, os.path.join(directory, name)), (os.rmdir, directory)):
        with contextlib.suppress(FileNotFoundError):
            remove(path)


def send_once(
    address: UnixAddress | UdpAddress,
    resolved: tuple[int, Sockaddr],
    data: bytes,
    reply_dir: str | None,
) -> None:
    """Send ``data`` and wait for nothing (a notification), from a socket of its own."""
    family, sockaddr = resolved
    endpoint = Endpoint(family, reply_dir)
    try:
        endpoint.sock.sendto(data, sockaddr)
    except OSError as exc:
        raise send_error(address, exc) from exc
    finally:
        endpoint.close()


def udp_resolution(address: UdpAddress) -> tuple[str, int, int]:
    """(host, port, getaddrinfo flags): literals are never sent to DNS."""
    flags = 0 if address.host_kind is HostKind.NAME else socket.AI_NUMERICHOST
    return address.host, address.port, flags


def first_address(infos: list[tuple[Any, Any, Any, Any, Any]], target: str) -> tuple[int, Sockaddr]:
    """The (family, sockaddr) a call goes to: getaddrinfo's first answer."""
    if not infos:
        raise ConnectError(target, "the host name has no address")
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


def resolve_error(target: str, exc: OSError) -> ConnectError:
    """A host name that getaddrinfo could not resolve."""
    return ConnectError(target, f"cannot resolve the host: {exc.strerror or exc}", exc.errno)


@dataclass(frozen=True)
class Origin:
    """Where the reply to a call may come from: the address called; for UNIX also an unbound
    socket (OpenSIPS's) of one of ``trusted`` users, as SCM_CREDENTIALS says."""

    address: Sockaddr
    trusted: frozenset[int] = frozenset()

    def admits(self, sender: Any, ancillary: list[tuple[int, int, bytes]]) -> bool:
        if isinstance(sender, tuple):  # UDP: the host and port called (and the IPv6 scope)
            called = self.address
            return bool(sender[:2] == called[:2] and sender[3:4] == called[3:4])
        if sender:
            return bool(sender == self.address)
        return _sender_uid(ancillary) in self.trusted  # an unbound UNIX sender


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    credentials = sender_credentials(ancillary)
    return None if credentials is None else credentials[1]


def sender_credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """The (pid, uid) of a UNIX datagram's sender as the kernel tells them (SO_PASSCRED)."""
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
            pid, uid, _gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
            return int(pid), int(uid)
    return None


def origin_of(address: UnixAddress | UdpAddress, sockaddr: Sockaddr) -> Origin:
    """Where a reply from ``address`` (``sockaddr``: as resolved) may come from."""
    if isinstance(address, UdpAddress):
        return Origin(sockaddr)
    trusted = {0, os.geteuid()}
    if not address.abstract:
        with contextlib.suppress(OSError):  # no file: sending says so
            trusted.add(os.stat(address.path).st_uid)
    return Origin(address.sockaddr(), frozenset(trusted))


class Call:
    """One request in flight: its id, bytes, deadline and what the reply must look like."""

    def __init__(
        self,
        address: UnixAddress | UdpAddress,
        request: tuple[int, bytes],
        timeout: float,
        bufsize: int,
        on_exchange: Callable[[Exchange], None] | None,
    ) -> None:
        self.address = address
        self.target = str(address)
        self.request_id, self.data = request
        self.timeout = timeout
        self.bufsize = bufsize
        self.on_exchange = on_exchange
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.reply: bytes | None = None
        self.origin = Origin("")  # admits nothing until the exchange has resolved the target
        self.ignored = ""  # why the last reply dropped for its sender was
        self._pause = _SEND_RETRY_FIRST

    def send(self, sock: socket.socket, sockaddr: Sockaddr) -> bool:
        """Send the request; False when the server's queue is full: it is busy, not gone, so
        wait ``send_pause()`` and send again."""
        try:
            sock.sendto(self.data, sockaddr)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise send_error(self.address, exc, len(self.data)) from exc
        return True

    def send_pause(self) -> float:
        """How long to wait before sending again: growing, within the deadline."""
        pause = min(self._pause, self.remaining())
        self._pause = min(self._pause * 2, _SEND_RETRY_MAX)
        return pause

    def remaining(self) -> float:
        """Seconds left; ``ReplyTimeout`` once there are none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def timed_out(self) -> ReplyTimeout:
        return ReplyTimeout(self.target, self.timeout, self.ignored)

    def accept(self, received: tuple[bytes, Any, int, Any]) -> Response | None:
        """The decoded reply if it answers this call; None for a stray datagram."""
        data, ancillary, flags, sender = received
        if not self.origin.admits(sender, ancillary):
            self.ignored = _ignored_note(sender)
            log.debug("%s: %s", self.target, self.ignored)
            return None
        if flags & socket.MSG_TRUNC:
            raise BadReply(
                f"reply from {self.target} truncated: it is larger than the "
                f"{self.bufsize}-byte receive buffer"
            )
        self.reply = data
        response = decode_response(data)
        if response.answers(self.request_id):
            return response
        log.debug(
            "%s: dropped a reply to id %r (waiting for %r)",
            self.target,
            response.id,
            self.request_id,
        )
        return None

    def report(self) -> None:
        """Tell the ``on_exchange`` hook, if any, what was sent and what came back."""
        if self.on_exchange is not None:
            elapsed = time.monotonic() - self.started
            self.on_exchange(Exchange(self.target, self.data, self.reply, elapsed))


def _ignored_note(sender: Any) -> str:
    """Why the reply from ``sender`` was not taken, naming it as every log line does."""
    why = "not the address called" if sender else "not from root, this user or the socket's owner"
    return f"a reply from {peer_label(sender)} was ignored: {why}"
