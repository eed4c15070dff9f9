"""The server socket's datagrams in and out: receive, reply, and HEP traces.

- :class:`Receiver` reads one whole datagram per call and reports one that did not fit the
  buffer (docs/compatibility.md, difference 5: a request is never executed in part).
- :class:`ReplySender` sends replies from the receiving socket itself (difference 6: a client
  that ``connect()``-ed to the server gets its answer) and honours ``socket_timeout``
  (difference 1): a reply the client's full queue refuses is retried, without blocking the
  worker, until its deadline.
- :class:`HepSender` sends trace packets to a HEP collector over UDP, from a socket of its
  own, never blocking and never raising.

The socket is shared by forked workers and stays blocking (``midgram.server.binding``): a
worker that must not block passes ``MSG_DONTWAIT`` on that one call instead.
"""

from __future__ import annotations

import enum
import errno
import logging
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from midgram.engine.access import Credentials
from midgram.errors import TransportError
from midgram.logs import LOG_INTERVAL as DROP_LOG_INTERVAL
from midgram.logs import RateLimitedLog, peer_label
from midgram.server.budget import SendBudget

__all__ = [
    "DROP_LOG_INTERVAL",
    "DropReason",
    "HepSender",
    "PeerAddress",
    "RateLimitedLog",
    "Received",
    "Receiver",
    "ReplySender",
    "SendStatus",
    "passes_credentials",
    "receive_error",
    "sender_credentials",
    "sock_label",
]

log = logging.getLogger(__name__)

#: What ``recvfrom`` gives and ``sendto`` takes: a path (str), an abstract or auto-bound
#: name (bytes starting with NUL), an (host, port[, flow, scope]) tuple, or None for a UNIX
#: client that did not bind.
PeerAddress: TypeAlias = str | bytes | tuple[Any, ...] | None

_DONTWAIT: Final = socket.MSG_DONTWAIT
#: struct ucred: pid_t, uid_t, gid_t.
_UCRED: Final = struct.Struct("=iII")
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_UCRED.size)
_SCM_CREDENTIALS: Final = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)

#: What one receive gives: the datagram, its sender, whether it was cut to the buffer, and
#: what the kernel says of the sender (``SCM_CREDENTIALS``), when asked.
Received: TypeAlias = tuple[bytes, PeerAddress, bool, Credentials | None]


def _why(exc: OSError) -> str:
    """strerror(), or the message of an OSError that has no errno."""
    return exc.strerror or str(exc)


# --- receiving --------------------------------------------------------------------------


class Receiver:
    """Reads one whole datagram per call from a (shared, blocking) socket.

    A datagram larger than ``bufsize`` is reported as truncated, with its first ``bufsize``
    bytes, so that it is never executed in part. With ``credentials`` (a UNIX socket that
    passes them: ``SO_PASSCRED``), what the kernel says of each sender comes with it.
    """

    __slots__ = ("_bufsize", "_limit", "_recvfrom", "_recvmsg", "_sock")

    def __init__(self, sock: socket.socket, bufsize: int, *, credentials: bool = False) -> None:
        if bufsize < 1:
            raise ValueError(f"a receive buffer needs at least one byte, not {bufsize}")
        self._sock = sock
        self._bufsize = bufsize
        # One byte more than allowed: a datagram that fills it did not fit. Measured faster
        # than recvfrom_into() a preallocated buffer (with or without MSG_TRUNC) or recvmsg():
        # the bytes object is allocated at full size and shrunk in place.
        self._limit = bufsize + 1
        self._recvfrom = sock.recvfrom
        self._recvmsg = sock.recvmsg if credentials else None

    def recv(self, block: bool = True) -> Received | None:
        """``(data, peer_address, truncated, credentials)``, or None when there is nothing
        to read: the ``SO_RCVTIMEO`` timeout expired, or ``block`` is false and the queue is
        empty. ``credentials``: ``(pid, uid, gid)``, or None when not asked for."""
        credentials = None
        try:
            if self._recvmsg is None:
                data, peer = self._recvfrom(self._limit, 0 if block else _DONTWAIT)
            else:
                data, ancillary, _, peer = self._recvmsg(
                    self._limit, _CREDENTIALS_SPACE, 0 if block else _DONTWAIT
                )
                credentials = sender_credentials(ancillary)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return None
        except (ConnectionRefusedError, ConnectionResetError):
            # An error left on the socket by an earlier reply, not a request (OpenSIPS
            # ignores ECONNREFUSED here too).
            return None
        except OSError as exc:
            raise receive_error(exc, self._sock) from exc
        if len(data) > self._bufsize:
            return data[: self._bufsize], peer, True, credentials
        return data, peer, False, credentials


def sender_credentials(ancillary: list[tuple[int, int, bytes]]) -> Credentials | None:
    """The ``SCM_CREDENTIALS`` of a datagram's ancillary data, ``(pid, uid, gid)``, which the
    kernel fills in and checks (a process can send only its own, unless privileged)."""
    for level, kind, data in ancillary:
        if (level, kind) == _SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(data)
            return pid, uid, gid
    return None


def passes_credentials(sock: socket.socket) -> bool:
    """Whether each datagram of ``sock`` comes with its sender's credentials (a UNIX socket
    with ``SO_PASSCRED``, which ``binding.pass_credentials`` sets)."""
    if sock.family != socket.AF_UNIX:
        return False
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED))


def sock_label(sock: socket.socket) -> str:
    """What a socket is bound to, as :func:`peer_label` writes it, for error messages."""
    try:
        return peer_label(sock.getsockname())
    except OSError:
        return "a closed socket"


def receive_error(exc: OSError, sock: socket.socket) -> TransportError:
    """What a failed receive on the server socket raises: the socket itself failed."""
    return TransportError(f"cannot receive: {_why(exc)}", sock_label(sock))


# --- replying ---------------------------------------------------------------------------


class SendStatus(enum.Enum):
    """What :meth:`ReplySender.send` did with a reply."""

    SENT = "sent"
    QUEUED = "queued"  # the client's queue was full: retried until socket_timeout
    DROPPED = "dropped"  # lost for good; on_drop was told why


class DropReason(enum.StrEnum):
    """Why a reply was dropped: the string the ``on_drop`` callback receives."""

    VANISHED = "vanished"  # the client's socket is gone (ENOENT, ECONNREFUSED, unreachable)
    PERMISSION = "permission"  # EACCES/EPERM: the server may not write to the client
    UNBOUND = "unbound"  # a UNIX client without an address cannot be answered
    TOO_BIG = "too_big"  # EMSGSIZE
    TIMEOUT = "timeout"  # still refused when socket_timeout ran out
    OVERFLOW = "overflow"  # too many replies (or bytes) already waiting
    NOT_READING = "not_reading"  # a big reply its client's full queue refused (SendBudget)
    NO_ROOM = "no_room"  # a big reply that found no room in the send buffer for socket_timeout
    ERROR = "error"  # any other send error


#: The reasons that say unread replies held the send buffer (``mi_datagram:withheld_replies``).
WITHHELD: Final = frozenset({DropReason.NOT_READING, DropReason.NO_ROOM})

_RETRY_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
_DROP_ERRNOS: Final = {
    errno.ENOENT: DropReason.VANISHED,
    errno.ENOTDIR: DropReason.VANISHED,
    errno.ECONNREFUSED: DropReason.VANISHED,
    errno.ECONNRESET: DropReason.VANISHED,
    errno.EHOSTUNREACH: DropReason.VANISHED,
    errno.ENETUNREACH: DropReason.VANISHED,
    errno.EACCES: DropReason.PERMISSION,
    errno.EPERM: DropReason.PERMISSION,
    errno.EMSGSIZE: DropReason.TOO_BIG,
}
#: The log line of a send error, with the peer and strerror() as arguments.
_ERROR_MESSAGES: Final = {
    DropReason.VANISHED: "cannot reply to %s: the client is gone (%s)",
    DropReason.PERMISSION: (
        "cannot write to the client's socket %s: the client must create its reply socket "
        "writable by the server's user (e.g. mode 0666 or a shared group) (%s)"
    ),
    DropReason.TOO_BIG: "cannot reply to %s: the reply is too big for the socket (%s)",
    DropReason.ERROR: "cannot reply to %s: %s",
}

# A full client queue usually drains within tens of microseconds (the client is reading):
# retry soon, then back off, doubling, to at most 50 ms for a client that is not reading.
_FIRST_BACKOFF: Final = 0.00005
_MAX_BACKOFF: Final = 0.050
#: The most reply bytes one worker keeps waiting for their clients (RSS bound).
MAX_PENDING_BYTES: Final = 4 * 1024 * 1024


class _Wait(enum.Enum):
    """Why a reply waits: its client's queue is full, or the send buffer has no room that
    unread replies may take for it (``SendBudget``)."""

    FULL = "full"
    NO_ROOM = "no_room"


@dataclass(slots=True)
class _Reply:
    data: bytes
    deadline: float
    waits_for: _Wait = _Wait.FULL


@dataclass(slots=True)
class _PeerQueue:
    """Replies waiting for one client, oldest first, and when to try again."""

    next_try: float
    backoff: float = _FIRST_BACKOFF
    replies: deque[_Reply] = field(default_factory=deque)


class ReplySender:
    """Sends replies without ever blocking the worker, retrying refused ones until
    ``timeout_ms`` (``socket_timeout``) has passed.

    Replies go out of ``sock``, the socket the request came in on. A reply the client's full
    queue refuses (EAGAIN/ENOBUFS) is queued; so is every later reply to the same client, to
    keep them in order. The worker polls its socket no longer than :meth:`next_retry_in` and
    then calls :meth:`retry_due`. ``timeout_ms`` <= 0 never retries (OpenSIPS's behaviour).
    At most ``max_pending`` replies and ``max_pending_bytes`` bytes wait; beyond, a reply is
    dropped.

    With a ``budget`` (UNIX sockets: ``midgram.server.budget``), a reply bigger than
    ``budget.small`` goes out only while the send buffer has room for it that unread replies
    may take: else it waits like a refused one, and is dropped at once when its client is not
    reading.

    ``on_wait`` is called each time a reply is queued, for a caller that retries on a timer
    instead of polling (``AsyncServer``).
    """

    def __init__(
        self,
        sock: socket.socket,
        timeout_ms: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = 1024,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        on_drop: Callable[[str], None] | None = None,
        log_interval: float = DROP_LOG_INTERVAL,
        budget: SendBudget | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self._sendto = sock.sendto
        self._timeout = timeout_ms / 1000
        self._clock = clock
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._on_drop = on_drop
        self._on_wait = on_wait
        self._log = RateLimitedLog(log, log_interval, clock=clock)
        self._queues: dict[str | bytes | tuple[Any, ...], _PeerQueue] = {}
        self._pending = 0
        self._pending_bytes = 0
        self._budget = budget
        # Replies up to this size never meet the budget: one comparison on the common path.
        self._small = budget.small if budget is not None else sys.maxsize

    def send(self, data: bytes, addr: PeerAddress) -> SendStatus:
        """Send one reply now, or queue it, or drop it; never raises for a send error."""
        if not addr:
            return self._drop(
                DropReason.UNBOUND,
                "cannot reply to %s: the client did not bind its socket",
                peer_label(addr),
            )
        if addr in self._queues:
            return self._enqueue(data, addr)  # behind the ones already waiting for addr
        if len(data) > self._small:
            status = self._try_big(data, addr)
            return status if isinstance(status, SendStatus) else self._enqueue(data, addr, status)
        try:
            self._sendto(data, _DONTWAIT, addr)
        except OSError as exc:
            if exc.errno in _RETRY_ERRNOS:
                return self._enqueue(data, addr)
            return self._drop_for(exc, addr)
        return SendStatus.SENT

    def _try_big(self, data: bytes, addr: str | bytes | tuple[Any, ...]) -> SendStatus | _Wait:
        """One try at a reply bigger than ``budget.small``: SENT, DROPPED (a client that is
        not reading, or a send error), or why it must wait."""
        budget = self._budget
        assert budget is not None
        size = len(data)
        if not budget.admit(size, addr):
            return _Wait.NO_ROOM
        try:
            self._sendto(data, _DONTWAIT, addr)
        except OSError as exc:
            if exc.errno not in _RETRY_ERRNOS:
                return self._drop_for(exc, addr)
            if budget.not_reading():
                return self._drop(
                    DropReason.NOT_READING,
                    "reply of %d bytes to %s dropped: the client is not reading its replies "
                    "(its queue is full)",
                    size,
                    peer_label(addr),
                )
            return _Wait.FULL
        budget.sent(size, addr)
        return SendStatus.SENT

    def pending(self) -> int:
        """How many replies are waiting to be retried."""
        return self._pending

    def next_retry_in(self) -> float | None:
        """Seconds until :meth:`retry_due` has something to do (0 if overdue), None if
        nothing waits."""
        if not self._queues:
            return None
        due = min(queue.next_try for queue in self._queues.values())
        return max(0.0, due - self._clock())

    def retry_due(self, *, woken: bool = False) -> None:
        """Resend the replies whose retry time has come; drop those past their deadline.

        ``woken``: a datagram has just come in, so try every waiting reply now, due or not.
        The kernel cannot say when a client's queue has room (an unconnected datagram socket
        has no POLLOUT per peer), and a client sending requests is most likely reading its
        replies too: under a deep queue (64 in flight) this is when room appears, where the
        back-off alone left replies waiting up to 50 ms. A try that fails this way does not
        lengthen the back-off, so a client that is not reading costs one send per wake-up.
        """
        if not self._queues:
            return
        now = self._clock()
        for addr, queue in list(self._queues.items()):
            due = queue.next_try <= now
            if due or woken:
                self._flush(addr, queue, now, due)
                if not queue.replies:
                    del self._queues[addr]

    def _flush(
        self, addr: str | bytes | tuple[Any, ...], queue: _PeerQueue, now: float, due: bool
    ) -> None:
        """Send the queued replies of one client in order, until one must wait again (then
        back off, when it was ``due``)."""
        replies = queue.replies
        while replies:
            reply = replies[0]
            if reply.deadline < now:
                self._pop(replies)
                self._drop_expired(addr, reply.waits_for)
                continue
            status = self._try(reply.data, addr)
            if isinstance(status, _Wait):
                reply.waits_for = status
                if reply.deadline <= now:  # that was the last try
                    self._pop(replies)
                    self._drop_expired(addr, status)
                    continue
                if due:
                    self._back_off(queue, now)
                return
            self._pop(replies)
            if status is SendStatus.SENT:
                queue.backoff = _FIRST_BACKOFF

    def _try(self, data: bytes, addr: str | bytes | tuple[Any, ...]) -> SendStatus | _Wait:
        """One try at a queued reply (see ``_try_big``)."""
        if len(data) > self._small:
            return self._try_big(data, addr)
        try:
            self._sendto(data, _DONTWAIT, addr)
        except OSError as exc:
            if exc.errno in _RETRY_ERRNOS:
                return _Wait.FULL
            return self._drop_for(exc, addr)
        return SendStatus.SENT

    def _pop(self, replies: deque[_Reply]) -> None:
        self._pending_bytes -= len(replies.popleft().data)
        self._pending -= 1

    @staticmethod
    def _back_off(queue: _PeerQueue, now: float) -> None:
        # Exponential, so that a client that stopped reading costs few syscalls, capped so
        # that one that resumes is served soon, and one last try falls on the deadline.
        queue.backoff = min(queue.backoff * 2, _MAX_BACKOFF)
        queue.next_try = min(now + queue.backoff, queue.replies[0].deadline)

    def _enqueue(
        self, data: bytes, addr: str | bytes | tuple[Any, ...], why: _Wait = _Wait.FULL
    ) -> SendStatus:
        if self._timeout <= 0:
            return self._drop_expired(addr, why)
        if (
            self._pending >= self._max_pending
            or self._pending_bytes + len(data) > self._max_pending_bytes
        ):
            return self._drop(
                DropReason.OVERFLOW,
                "reply to %s dropped: %d replies (%d bytes) are already waiting",
                peer_label(addr),
                self._pending,
                self._pending_bytes,
            )
        now = self._clock()
        deadline = now + self._timeout
        queue = self._queues.get(addr)
        if queue is None:
            queue = self._queues[addr] = _PeerQueue(next_try=min(now + _FIRST_BACKOFF, deadline))
        queue.replies.append(_Reply(data, deadline, why))
        self._pending += 1
        self._pending_bytes += len(data)
        if self._on_wait is not None:
            self._on_wait()
        return SendStatus.QUEUED

    def _drop_expired(self, addr: PeerAddress, why: _Wait) -> SendStatus:
        if why is _Wait.NO_ROOM:
            return self._drop(
                DropReason.NO_ROOM,
                "reply to %s dropped: replies nobody read held the send buffer for "
                "socket_timeout (%g ms)",
                peer_label(addr),
                self._timeout * 1000,
            )
        return self._drop(
            DropReason.TIMEOUT,
            "reply to %s dropped: the client's queue stayed full for socket_timeout (%g ms)",
            peer_label(addr),
            self._timeout * 1000,
        )

    def _drop_for(self, exc: OSError, addr: PeerAddress) -> SendStatus:
        reason = _DROP_ERRNOS.get(exc.errno or 0, DropReason.ERROR)
        return self._drop(reason, _ERROR_MESSAGES[reason], peer_label(addr), _why(exc))

    def _drop(self, reason: DropReason, msg: str, *args: object) -> SendStatus:
        self._log.log(reason, logging.WARNING, msg, *args)
        if self._on_drop is not None:
            self._on_drop(reason.value)
        return SendStatus.DROPPED


# --- HEP tracing ------------------------------------------------------------------------


class HepSender:
    """Sends HEP packets to one collector over UDP from its own non-blocking socket.

    A failed send (collector unreachable, send buffer full) loses that packet, is logged at
    most once per ``log_interval`` and never disturbs serving: ``send`` returns False.
    One per process: make it after the fork.
    """

    def __init__(
        self,
        family: int,
        sockaddr: tuple[Any, ...],
        *,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DROP_LOG_INTERVAL,
    ) -> None:
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sockaddr = sockaddr
        self._log = RateLimitedLog(log, log_interval, clock=clock)
        # Connected where the kernel allows it (not to a broadcast address, say): it looks
        # the route up once instead of for each packet, a good part of a packet's cost, and
        # the native loop sends batches of packets on it. A collector that is not listening
        # is then heard of (ICMP): the next send fails and says so.
        try:
            self._sock.connect(sockaddr)
        except OSError:
            self.connected = False
            sendto = self._sock.sendto
            self._send: Callable[[bytes], object] = lambda packet: sendto(packet, sockaddr)
        else:
            self.connected = True
            self._send = self._sock.send

    def fileno(self) -> int:
        """The socket's descriptor (the native loop sends on it while ``connected``)."""
        return self._sock.fileno()

    def send(self, packet: bytes) -> bool:
        """Send one packet; False (and a rate-limited log line) when it could not go."""
        try:
            self._send(packet)
        except OSError as exc:
            self._log.log(
                "hep",
                logging.WARNING,
                "cannot send a HEP trace to %s: %s",
                peer_label(self._sockaddr),
                _why(exc),
            )
            return False
        return True

    def close(self) -> None:
        self._sock.close()
