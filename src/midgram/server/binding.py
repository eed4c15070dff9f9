"""Making the server socket: binding it, its file's owner and mode, its options.

Security-sensitive: a server often runs as root and binds where other users can write.

- :func:`bind_unix` / :func:`bind_udp` create the one server socket that all workers share.
  A UNIX socket is bound at its path itself (replies leave from it), is reachable only once
  it has the asked owner and mode, and a live server's socket is never replaced; a stale
  one is, and anything that is not a socket is refused and left alone.
- :func:`remove_unix` removes on the way out only the file this process created.
- :func:`set_recv_timeout`, :func:`enlarge_send_buffer` and :func:`pass_credentials` set
  the options every worker shares, once, before the fork.
- :class:`UserDatabase` resolves the users and groups of the ``acl`` rules, at start.

Process model: the socket is shared by forked workers, so its file status flags
(``O_NONBLOCK``) and options (``SO_RCVTIMEO``) are shared too. It therefore stays blocking, so
that the kernel wakes exactly one blocked worker per datagram; a worker that must not block
passes ``MSG_DONTWAIT`` on that one call instead (``midgram.server.transport``), and
:func:`set_recv_timeout` makes blocked workers wake up now and then to look at their stop
flag.

Linux only (abstract names, ``SO_RCVTIMEO`` layout, errno meanings).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import re
import socket
import stat
import struct
from typing import Any, Final

from midgram.config.coercion import ID_MAX, UNSET_ID
from midgram.errors import ConfigError, SocketInUse, TransportError
from midgram.wire.address import SUN_PATH_MAX

__all__ = [
    "SEND_BUFFER",
    "SO_SNDBUFFORCE",
    "UserDatabase",
    "bind_udp",
    "bind_unix",
    "enlarge_send_buffer",
    "pass_credentials",
    "remove_unix",
    "resolve_group",
    "resolve_owner",
    "resolve_udp",
    "resolve_user",
    "set_recv_timeout",
]

log = logging.getLogger(__name__)

_ABSTRACT_PREFIX: Final = "@"
_NUMERIC_ID = re.compile(r"\s*[+-]?[0-9]+\s*")  # what strtol() accepts, as OpenSIPS parses it


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
        family, address = _first_udp_address(name, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"failed to resolve {host}", host) from exc
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.setblocking(True)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot bind {target}: {_why(exc)}", target) from exc
    return sock


def resolve_udp(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """``(family, sockaddr)`` of a UDP destination (a HEP collector): the first getaddrinfo()
    result.

    Resolved once, when the server starts (OpenSIPS resolves a hep_id at each send).
    """
    try:
        return _first_udp_address(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"failed to resolve {host}: {exc}", host) from exc


def _first_udp_address(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    family, _kind, _proto, _canonical, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM
    )[0]
    return family, address


# --- the options every worker shares ------------------------------------------------------

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
    ``midgram.server.transport.Receiver`` turns into None. The socket itself stays blocking."""
    if seconds < 0:
        raise ValueError(f"a receive timeout cannot be negative: {seconds}")
    micros = round(seconds * 1_000_000)
    if seconds and not micros:
        micros = 1  # a zero timeval would mean "block forever"
    sock.settimeout(None)  # a Python-level timeout would make the socket O_NONBLOCK
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", *divmod(micros, 1_000_000))
    )


def pass_credentials(sock: socket.socket) -> None:
    """Have the kernel give, with each datagram of the UNIX socket ``sock``, its sender's
    pid, uid and gid (``SO_PASSCRED``; read as ``SCM_CREDENTIALS``). It costs a little on
    every datagram, so it is set only when an ``acl`` rule needs it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


class UserDatabase:
    """The users and groups an ``acl`` rule names, as the system's database (``pwd`` and
    ``grp``, through NSS) has them at start (``engine.access.Resolver``)."""

    def user(self, name: str) -> int:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise KeyError(f"no user named {name!r}") from None

    def group(self, spec: str | int) -> tuple[int, frozenset[int]]:
        """Its gid, and the uids of the members its entry lists. A gid with no entry is a
        group all the same (a container's, say), with no member listed."""
        try:
            entry = grp.getgrnam(spec) if isinstance(spec, str) else grp.getgrgid(spec)
        except KeyError:
            if isinstance(spec, int):
                return spec, frozenset()
            raise KeyError(f"no group named {spec!r}") from None
        return entry.gr_gid, frozenset(self._uids(entry.gr_mem))

    @staticmethod
    def _uids(names: list[str]) -> list[int]:
        uids = []
        for name in names:
            try:
                uids.append(pwd.getpwnam(name).pw_uid)
            except KeyError:
                continue  # listed but not a user: no process runs as it
        return uids
