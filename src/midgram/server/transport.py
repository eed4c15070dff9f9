"""Every socket syscall of the server: bind, permissions, receive, reply.

- :func:`bind_unix` / :func:`bind_udp` create the one server socket that all workers share.
  A UNIX socket is bound at its path itself (replies leave from it), is reachable only once
  it has the asked owner and mode, and a live server's socket is never replaced.
- :class:`Receiver` reads one whole datagram per call and reports one that did not fit the
  buffer (docs/compatibility.md, difference 5: a request is never executed in part).
- :class:`ReplySender` sends replies from the receiving socket itself (difference 6: a client
  that ``connect()``-ed to the server gets its answer) and honours ``socket_timeout``
  (difference 1): a reply the client's full queue refuses is retried, without blocking the
  worker, until its deadline.
- :class:`HepSender` sends trace packets to a HEP collector over UDP, from a socket of its
  own, never blocking and never raising.

Process model: the socket is shared by forked workers, so its file status flags
(``O_NONBLOCK``) and options (``SO_RCVTIMEO``) are shared too. It therefore stays blocking, so
that the kernel wakes exactly one blocked worker per datagram; a worker that must not block
passes ``MSG_DONTWAIT`` on that one call instead, and :func:`set_recv_timeout` makes blocked
workers wake up now and then to look at their stop flag.

Linux only (abstract names, ``SO_RCVTIMEO`` layout, errno meanings).
"""

from __future__ import annotations

import enum
import errno
import grp
import logging
import os
import pwd
import re
import socket
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from midgram.config.coercion import ID_MAX, UNSET_ID
from midgram.errors import ConfigError, SocketInUse, TransportError
from midgram.logs import LOG_INTERVAL as DROP_LOG_INTERVAL
from midgram.logs import RateLimitedLog, peer_label
from midgram.server.budget import SendBudget
from midgram.wire.address import SUN_PATH_MAX

__all__ = [
    "DROP_LOG_INTERVAL",
    "RECV_TIMEOUT",
    "DropReason",
    "HepSender",
    "PeerAddress",
    "RateLimitedLog",
    "Receiver",
    "ReplySender",
    "SendStatus",
    "bind_udp",
    "bind_unix",
    "remove_unix",
    "resolve_group",
    "resolve_owner",
    "resolve_udp",
    "resolve_user",
    "set_recv_timeout",
    "sock_label",
]

log = logging.getLogger(__name__)

#: How often a blocked worker wakes up, as the server passes it to :func:`set_recv_timeout`.
RECV_TIMEOUT: Final = 0.2

#: What ``recvfrom`` gives and ``sendto`` takes: a path (str), an abstract or auto-bound
#: name (bytes starting with NUL), an (host, port[, flow, scope]) tuple, or None for a UNIX
#: client that did not bind.
PeerAddress: TypeAlias = str | bytes | tuple[Any, ...] | None

_ABSTRACT_PREFIX: Final = "@"
_NUMERIC_ID = re.compile(r"\s*[+-]?[0-9]+\s*")  # what strtol() accepts, as OpenSIPS parses it
_DONTWAIT: Final = socket.MSG_DONTWAIT


# --- owner of the UNIX socket file ------------------------------------------------------


def resolve_user(spec: str | int | None) -> tuple[int, int]:
    """``unix_socket_user`` as OpenSIPS reads it: ``(uid, gid)``, -1 meaning "unchanged".

    A user *name* also gives that user's primary group; a number (int or numeric string)
    sets only the uid.
    """
    if spec is None:
        return -1, -1
    if isinstance(spec, str) and not _NUMERIC_ID.fullmatch(spec):
        try:
            entry = pwd.getpwnam(spec)
        except KeyError:
            raise ConfigError("unix_socket_user", spec, "no such user") from None
        return entry.pw_uid, entry.pw_gid
    return _numeric_id("unix_socket_user", spec, "uid"), -1


def resolve_group(spec: str | int | None) -> int:
    """``unix_socket_group`` as OpenSIPS reads it: a gid, a numeric string or a group name."""
    if spec is None:
        return -1
    if isinstance(spec, str) and not _NUMERIC_ID.fullmatch(spec):
        try:
            return grp.getgrnam(spec).gr_gid
        except KeyError:
            raise ConfigError("unix_socket_group", spec, "no such group") from None
    return _numeric_id("unix_socket_group", spec, "gid")


def resolve_owner(user: str | int | None, group: str | int | None) -> tuple[int, int]:
    """The ``(uid, gid)`` to give the socket file: a user name brings its primary group,
    unless a group is given (a group of None or -1 is "not given")."""
    uid, gid = resolve_user(user)
    explicit_gid = resolve_group(group)
    return uid, gid if explicit_gid == -1 else explicit_gid


def _numeric_id(parameter: str, spec: str | int, what: str) -> int:
    value = int(spec)  # a str here matched _NUMERIC_ID
    if isinstance(spec, bool) or not (value == UNSET_ID or 0 <= value <= ID_MAX):
        raise ConfigError(parameter, spec, f"not a valid {what}")
    return value


# --- binding a UNIX socket --------------------------------------------------------------

#: (st_dev, st_ino) of each socket file this process created, by absolute path, so that
#: :func:`remove_unix` never removes a file that a newer server has put in its place.
_created: dict[str, tuple[int, int]] = {}

_FILE_KINDS: Final = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def bind_unix(path: str, *, mode: int = 0o660, uid: int = -1, gid: int = -1) -> socket.socket:
    """A blocking ``AF_UNIX``/``SOCK_DGRAM`` socket bound at ``path``.

    ``@name`` binds ``name`` in the Linux abstract namespace (no file: mode and owner do not
    apply). Otherwise an existing *stale* socket file is replaced, while a live one raises
    :class:`SocketInUse` and anything that is not a socket (or is a symlink) is refused and
    left alone. The socket is bound at ``path`` itself, so that replies leave from
    ``path``; the file appears with mode 0000 and gets ``uid:gid`` (-1: unchanged) and then
    ``mode`` through a descriptor: nobody can ever reach it with other permissions or
    another owner, and no other file can be changed in its place.
    """
    if path in ("", _ABSTRACT_PREFIX):
        raise TransportError(f"cannot bind {path!r}: empty socket name", path)
    if path.startswith(_ABSTRACT_PREFIX):
        return _bind_abstract(path)
    # A path needs room for its terminating NUL: the kernel would take 108 bytes without one,
    # but CPython refuses them in bind(), connect() and sendto(), so no Python client could
    # reach such a socket.
    _check_length(path, os.fsencode(path), SUN_PATH_MAX - 1)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        identity = _bind_in_place(sock, path, mode, uid, gid)
        sock.setblocking(True)  # even if socket.setdefaulttimeout() made it non-blocking
    except BaseException:
        sock.close()
        raise
    _created[os.path.abspath(path)] = identity
    log.debug("bound unix:%s (mode %04o, owner %d:%d)", path, mode, uid, gid)
    return sock


def remove_unix(path: str) -> bool:
    """Remove the socket file :func:`bind_unix` created at ``path``, if it is still ours.

    Never raises (it runs on the way out); returns whether the file was removed.
    """
    key = os.path.abspath(path)
    identity = _created.pop(key, None)
    if identity is None:
        log.debug("not removing %s: this process did not create it", path)
        return False
    try:
        current = os.lstat(path)
        if (current.st_dev, current.st_ino) != identity:
            log.info("not removing %s: another socket has taken its place", path)
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, _why(exc))
        return False
    return True


def _bind_abstract(path: str) -> socket.socket:
    name = b"\0" + os.fsencode(path[len(_ABSTRACT_PREFIX) :])
    _check_length(path, name, SUN_PATH_MAX)  # no terminating NUL: all 108 bytes are usable
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(name)
        sock.setblocking(True)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUse(f"another server is listening on {path}", path) from exc
        raise TransportError(f"cannot bind {path}: {_why(exc)}", path) from exc
    return sock


def _check_length(path: str, name: bytes, limit: int) -> None:
    if len(name) > limit:
        raise TransportError(
            f"socket name too long: {path} ({len(name)} bytes, at most {limit})", path
        )


def _why(exc: OSError) -> str:
    """strerror(), or the message of an OSError that has no errno (e.g. a too long path)."""
    return exc.strerror or str(exc)


def _clear_stale(path: str) -> None:
    """Make way for our socket: unlink a stale socket file, refuse anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"cannot check {path}: {_why(exc)}", path) from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise TransportError(f"refusing to replace {path}: it is {_kind(info)}", path)
    if _is_live(path):
        raise SocketInUse(f"another server is listening on {path}", path)
    log.info("replacing stale socket %s", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TransportError(f"cannot remove the stale socket {path}: {_why(exc)}", path) from exc


def _kind(info: os.stat_result) -> str:
    return _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a socket")


def _is_live(path: str) -> bool:
    """Whether a socket is bound behind ``path``: connect() to it, which sends nothing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False  # a file with no socket behind it (or already gone)
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                return True  # a live stream or seqpacket socket: still somebody's
            raise TransportError(
                f"cannot tell whether {path} is in use: {_why(exc)}", path
            ) from exc
    return True


def _bind_in_place(
    sock: socket.socket, path: str, mode: int, uid: int, gid: int
) -> tuple[int, int]:
    """Bind at ``path`` itself, then give the file its owner and mode.

    At ``path`` itself: a socket's address is the name it was bound to, and a reply leaves
    from that address, so a client that checks where its reply comes from (socat, our own
    client) drops a reply from any other name (a socket bound elsewhere and renamed keeps
    its old address). The umask is 0777 for the bind, so the file appears with mode 0000
    (no one but root can connect) until it has its owner and then its mode. The umask is
    process-wide: a file another thread creates during that one bind() gets mode 0000 too.

    Owner and mode are changed through a descriptor of the file just bound, never by name:
    another user who can write the directory could swap the name for a symbolic link to any
    file in between. Returns the (st_dev, st_ino) of the socket file.
    """
    previous = os.umask(0o777)
    try:
        _bind(sock, path)
    finally:
        os.umask(previous)
    node = _open_bound(path)  # refused: the name is someone else's now, leave it alone
    try:
        _set_owner_and_mode(node, path, mode, uid, gid)
        info = os.fstat(node)
    except BaseException:
        _unlink_if_same(path, os.fstat(node))
        raise
    finally:
        os.close(node)
    return info.st_dev, info.st_ino


def _bind(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # a file appeared since _clear_stale looked
            reason = "something else was created there meanwhile"
            raise TransportError(f"cannot bind {path}: {reason}", path) from exc
        raise TransportError(f"cannot bind {path}: {_why(exc)}", path) from exc


def _open_bound(path: str) -> int:
    """An ``O_PATH`` descriptor of the socket file just bound at ``path``, refused unless it
    still is a socket owned by this process's user (``O_NOFOLLOW``: not a symbolic link).

    Nobody else can create a file this user owns, so a name swapped since the bind is
    caught here, before anything is changed through it.
    """
    try:
        node = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TransportError(f"cannot open {path} after binding it: {_why(exc)}", path) from exc
    info = os.fstat(node)
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
        os.close(node)
        kind = "a socket of another user" if stat.S_ISSOCK(info.st_mode) else _kind(info)
        raise TransportError(
            f"{path} was replaced while it was being bound (it is now {kind}): "
            "another user can write its directory",
            path,
        )
    return node


def _by_descriptor(node: int) -> str:
    """A name for the very file ``node`` holds: /proc resolves it to that inode, whatever
    its name points to now. chown() and chmod() need one, as an O_PATH descriptor cannot be
    given to fchown() or fchmod()."""
    return f"/proc/self/fd/{node}"


def _set_owner_and_mode(node: int, path: str, mode: int, uid: int, gid: int) -> None:
    """chown() first, chmod() last: the mode is never opened up for the wrong owner."""
    if uid != -1 or gid != -1:
        try:
            os.chown(_by_descriptor(node), uid, gid)
        except OSError as exc:
            raise TransportError(
                f"cannot change the owner of {path} to {uid}:{gid}: {_why(exc)}", path
            ) from exc
    try:
        os.chmod(_by_descriptor(node), mode)
    except OSError as exc:
        raise TransportError(
            f"cannot change the permissions of {path} to {mode:04o}: {_why(exc)}", path
        ) from exc


def _unlink_if_same(path: str, info: os.stat_result) -> None:
    """Remove the socket file we failed to set up, if the name still leads to it."""
    try:
        current = os.lstat(path)
        if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
            os.unlink(path)
    except OSError as exc:  # a leftover is untidy, not fatal
        log.warning("cannot remove %s: %s", path, _why(exc))


# --- binding a UDP socket ---------------------------------------------------------------


def bind_udp(host: str, port: int) -> socket.socket:
    """A blocking UDP socket bound at ``host:port`` (a literal IPv4/IPv6 address, with or
    without brackets, or a name: the first getaddrinfo() result is used). Port 0 picks a
    free port."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    target = f"udp:[{name}]:{port}" if ":" in name else f"udp:{name}:{port}"
    if not 0 <= port <= 0xFFFF:
        raise TransportError(f"cannot bind {target}: invalid port number", target)
    try:
        family, kind, proto, _canonical, address = socket.getaddrinfo(
            name, port, socket.AF_UNSPEC, socket.SOCK_DGRAM
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"failed to resolve {host}", host) from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        sock.setblocking(True)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot bind {target}: {_why(exc)}", target) from exc
    return sock


# --- receiving --------------------------------------------------------------------------


#: What the server asks for its send buffer (the kernel doubles it for its own overhead). A
#: UNIX reply is charged to the server socket's send buffer until the client reads it
#: (``midgram.server.budget``): the larger the buffer, the more clients that do not read it takes
#: to crowd out the others.
SEND_BUFFER: Final = 4 * 1024 * 1024
#: asm-generic/socket.h: SO_SNDBUF beyond net.core.wmem_max, for CAP_NET_ADMIN. Python's
#: socket module does not name it.
SO_SNDBUFFORCE: Final = 32
#: Below this (as the kernel reports it), a warning says how to get more.
SEND_BUFFER_WARN: Final = 1024 * 1024


def enlarge_send_buffer(sock: socket.socket, size: int = SEND_BUFFER) -> int:
    """As large as the privileges allow, up to ``size``: SO_SNDBUFFORCE when privileged
    (beyond net.core.wmem_max), else SO_SNDBUF (capped by the kernel at wmem_max). Returns
    the size the kernel reports (twice what it was asked)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if sock.family == socket.AF_UNIX and granted < SEND_BUFFER_WARN:
        log.warning(
            "the socket's send buffer is %d KiB (net.core.wmem_max): a few clients that do "
            "not read their replies can fill it (docs/operations.md); run as root or raise "
            "net.core.wmem_max to %d",
            granted // 1024,
            size,
        )
    return granted


def set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    """Set the kernel receive timeout (``SO_RCVTIMEO``) shared by every process holding the
    socket: a blocked ``recv`` then fails with EAGAIN after ``seconds`` (0: never), which
    :meth:`Receiver.recv` turns into None. The socket itself stays blocking."""
    if seconds < 0:
        raise ValueError(f"a receive timeout cannot be negative: {seconds}")
    micros = round(seconds * 1_000_000)
    if seconds and not micros:
        micros = 1  # a zero timeval would mean "block forever"
    sock.settimeout(None)  # a Python-level timeout would make the socket O_NONBLOCK
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", *divmod(micros, 1_000_000))
    )


class Receiver:
    """Reads one whole datagram per call from a (shared, blocking) socket.

    A datagram larger than ``bufsize`` is reported as truncated, with its first ``bufsize``
    bytes, so that it is never executed in part.
    """

    __slots__ = ("_bufsize", "_limit", "_recvfrom", "_sock")

    def __init__(self, sock: socket.socket, bufsize: int) -> None:
        if bufsize < 1:
            raise ValueError(f"a receive buffer needs at least one byte, not {bufsize}")
        self._sock = sock
        self._bufsize = bufsize
        # One byte more than allowed: a datagram that fills it did not fit. Measured faster
        # than recvfrom_into() a preallocated buffer (with or without MSG_TRUNC) or recvmsg():
        # the bytes object is allocated at full size and shrunk in place.
        self._limit = bufsize + 1
        self._recvfrom = sock.recvfrom

    def recv(self, block: bool = True) -> tuple[bytes, PeerAddress, bool] | None:
        """``(data, peer_address, truncated)``, or None when there is nothing to read: the
        ``SO_RCVTIMEO`` timeout expired, or ``block`` is false and the queue is empty."""
        try:
            data, peer = self._recvfrom(self._limit, 0 if block else _DONTWAIT)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return None
        except (ConnectionRefusedError, ConnectionResetError):
            # An error left on the socket by an earlier reply, not a request (OpenSIPS
            # ignores ECONNREFUSED here too).
            return None
        except OSError as exc:
            raise TransportError(f"cannot receive: {_why(exc)}", sock_label(self._sock)) from exc
        if len(data) > self._bufsize:
            return data[: self._bufsize], peer, True
        return data, peer, False


def sock_label(sock: socket.socket) -> str:
    """What a socket is bound to, as :func:`peer_label` writes it, for error messages."""
    try:
        return peer_label(sock.getsockname())
    except OSError:
        return "a closed socket"


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
    ) -> None:
        self._sendto = sock.sendto
        self._timeout = timeout_ms / 1000
        self._clock = clock
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._on_drop = on_drop
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

    def retry_due(self) -> None:
        """Resend the replies whose retry time has come; drop those past their deadline."""
        if not self._queues:
            return
        now = self._clock()
        for addr, queue in list(self._queues.items()):
            if queue.next_try <= now:
                self._flush(addr, queue, now)
                if not queue.replies:
                    del self._queues[addr]

    def _flush(self, addr: str | bytes | tuple[Any, ...], queue: _PeerQueue, now: float) -> None:
        """Send the queued replies of one client in order, until one must wait again."""
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


def resolve_udp(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """``(family, sockaddr)`` of a UDP destination: the first getaddrinfo() result.

    Resolved once, when the server starts (OpenSIPS resolves a hep_id at each send).
    """
    try:
        family, _kind, _proto, _canonical, address = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"failed to resolve {host}: {exc}", host) from exc
    return family, address


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
        self._sendto = self._sock.sendto
        self._sockaddr = sockaddr
        self._log = RateLimitedLog(log, log_interval, clock=clock)

    def send(self, packet: bytes) -> bool:
        """Send one packet; False (and a rate-limited log line) when it could not go."""
        try:
            self._sendto(packet, self._sockaddr)
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
