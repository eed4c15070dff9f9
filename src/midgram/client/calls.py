"""``Client`` (blocking) and ``AsyncClient`` (asyncio): call MI commands over datagrams.

::

    with Client("/run/opensips/mi.sock", timeout=2.5) as mi:
        mi.call("uptime")                                  # -> {"Now": ..., "Up since": ...}
        mi.call("get_statistics", statistics=["core:"])    # named params
        mi.call("which", "uptime")                         # positional params

    async with AsyncClient("udp:[::1]:8080") as mi:
        await mi.call("ps")

Targets use the server's ``socket_name`` grammar: ``/path``, ``@abstract``,
``udp:host:port``, ``udp:[v6]:port``. Errors are the ``ClientError`` tree of
``midgram.errors``: ``RemoteError`` (a JSON-RPC error reply), ``PlainTextError``
(``400 Parse_error``/``500 Internal error``), ``ReplyTimeout``, ``ConnectError`` (no socket,
refused, permission), ``BadReply`` (truncated or not JSON-RPC).

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
(``_Origin``): the path or abstract name the server is bound to (midgram, Kamailio), or the
host and port for UDP. OpenSIPS answers UNIX calls from a separate, unbound socket: such a
reply is accepted only when the kernel's credentials of its sender (``SCM_CREDENTIALS``)
name root, the caller's own user or the owner of the socket file called. An abstract name
has no owner: there, an unbound sender must be root or the caller's user. A reply from
anywhere else is ignored, like a stray datagram.

So a client holds no socket and no lock on the I/O path: it is thread-safe and any number of
threads or tasks may share it. The reply address of a UNIX call is an abstract name chosen by
the kernel (Linux "autobind"): nothing is created on disk, nothing is left behind, and a
server running as any user can answer it. With ``reply_dir`` (or off Linux) it is a socket in
a fresh private directory instead, removed after the call.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

from midgram.client.codec import (
    MAX_REQUEST_ID,
    Dialect,
    Response,
    check_params,
    decode_response,
    encode_request,
    get_dialect,
    make_params,
)
from midgram.errors import BadReply, ClientError, ConnectError, ReplyTimeout, RequestTooLarge
from midgram.local import default_target, squatted
from midgram.logs import peer_label
from midgram.wire.address import (
    HostKind,
    UdpAddress,
    UnixAddress,
    parse_target,
)
from midgram.wire.jsonrpc import Params

__all__ = [
    "DEFAULT_TIMEOUT",
    "REPLY_BUF_SIZE",
    "AsyncClient",
    "Client",
    "Exchange",
]

log = logging.getLogger(__name__)

#: Seconds to wait for a reply. python-opensips's 0.1 s fails slow commands; kamcli waits 4 s.
DEFAULT_TIMEOUT: Final = 5.0
#: The receive buffer: the server's ``socket_buf_size`` is at most 1 MiB and its replies are
#: shorter than that. Only the pages a reply fills are touched, so the size costs ~10 us.
REPLY_BUF_SIZE: Final = 1 << 20
# Linux reports ICMP errors (port unreachable -> ECONNREFUSED) on an unconnected UDP socket
# only with these options (the socket is not connect()ed: ECONNREFUSED must not wait for the
# timeout, and replies are checked by _Origin instead). The numbers are Linux's.
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
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_CREDENTIALS.size)

T = TypeVar("T")
Sockaddr = str | bytes | tuple[Any, ...]


@dataclass(frozen=True)
class Exchange:
    """One request and its reply (None when none came), for ``on_exchange`` hooks (``-v``)."""

    target: str
    request: bytes
    reply: bytes | None
    elapsed: float


class _Ids:
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


def _oserror(target: str, exc: OSError, size: int | None = None) -> ClientError:
    if exc.errno == errno.EMSGSIZE:
        return RequestTooLarge(target, size, exc.strerror or str(exc))
    return ConnectError(target, exc.strerror or str(exc), exc.errno)


def _check_timeout(timeout: float) -> float:
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


class _Endpoint:
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

    def _bind_unix(self, reply_dir: str | None) -> None:
        # Each datagram then carries its sender's credentials, as the kernel knows them.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if reply_dir is None and _ABSTRACT_REPLY:
            self.sock.bind(b"")  # autobind: the kernel picks a free abstract name
            return
        self._dir = tempfile.mkdtemp(prefix="midgram-", dir=reply_dir)  # mode 0700
        path = os.path.join(self._dir, _REPLY_SOCKET_NAME)
        self.sock.bind(path)
        # Race-free: the directory stays 0700 until the socket has its final mode.
        os.chmod(path, _REPLY_SOCKET_MODE)
        os.chmod(self._dir, _REPLY_DIR_MODE)

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            for remove, path in (
                (os.unlink, os.path.join(self._dir, _REPLY_SOCKET_NAME)),
                (os.rmdir, self._dir),
            ):
                with contextlib.suppress(FileNotFoundError):
                    remove(path)
            self._dir = None


def _udp_resolution(address: UdpAddress) -> tuple[str, int, int]:
    """(host, port, getaddrinfo flags): literals are never sent to DNS."""
    flags = 0 if address.host_kind is HostKind.NAME else socket.AI_NUMERICHOST
    return address.host, address.port, flags


def _first_address(
    infos: list[tuple[Any, Any, Any, Any, Any]], target: str
) -> tuple[int, Sockaddr]:
    if not infos:
        raise ConnectError(target, "the host name has no address")
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


def _gaierror(target: str, exc: OSError) -> ConnectError:
    return ConnectError(target, f"cannot resolve the host: {exc.strerror or exc}", exc.errno)


@dataclass(frozen=True)
class _Origin:
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
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
            _pid, uid, _gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
            return int(uid)
    return None


def _unix_origin(address: UnixAddress) -> _Origin:
    trusted = {0, os.geteuid()}
    if not address.abstract:
        with contextlib.suppress(OSError):  # no file: sending says so
            trusted.add(os.stat(address.path).st_uid)
    return _Origin(address.sockaddr(), frozenset(trusted))


class _ClientBase:
    """What both clients share: settings, ids, request encoding, reply checking."""

    def __init__(
        self,
        target: str | UnixAddress | UdpAddress | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        dialect: str | Dialect = "opensips",
        reply_dir: str | None = None,
        bufsize: int = REPLY_BUF_SIZE,
        on_exchange: Callable[[Exchange], None] | None = None,
    ) -> None:
        if target is None:
            target = default_target()
        self.address = parse_target(target) if isinstance(target, str) else target
        self.target = str(self.address)
        self.timeout = _check_timeout(timeout)
        self.dialect = get_dialect(dialect)
        self.reply_dir = reply_dir
        if bufsize < 1:
            raise ValueError(f"bufsize must be positive, not {bufsize!r}")
        self.bufsize = bufsize
        self.on_exchange = on_exchange
        self._ids = _Ids()
        address = self.address
        self._default_place = (
            isinstance(address, UnixAddress)
            and not address.abstract
            and address.path == default_target()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, dialect={self.dialect.name!r})"

    def _check_place(self) -> None:
        """The default socket lives where any user can create a file first (/tmp): one that
        another user put there is not called (it would read the request and could answer
        anything). Checked before sending, and again once the reply came, since a squatter
        may have bound in between."""
        if not self._default_place:
            return
        reason = squatted(self.target)
        if reason is not None:
            raise ConnectError(
                self.target, f"{reason}; another user may have put it there: not calling it"
            )

    def _origin(self, sockaddr: Sockaddr) -> _Origin:
        """Where this call's reply may come from (``sockaddr``: the address resolved)."""
        if isinstance(self.address, UnixAddress):
            return _unix_origin(self.address)
        return _Origin(sockaddr)

    def encode(self, method: str, params: Params = None) -> bytes:
        """The request datagram a call would send (with a fresh id): for ``--dry-run``."""
        return encode_request(method, check_params(params, self.dialect), self._ids.take())

    def _prepare(self, method: str, params: Params, timeout: float | None) -> _Call:
        request_id = self._ids.take()
        data = encode_request(method, check_params(params, self.dialect), request_id)
        budget = self.timeout if timeout is None else _check_timeout(timeout)
        return _Call(self, request_id, data, budget)


class _Call:
    """One request in flight: its id, bytes, deadline and what the reply must look like."""

    def __init__(self, client: _ClientBase, request_id: int, data: bytes, timeout: float) -> None:
        self.client = client
        self.request_id = request_id
        self.data = data
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.reply: bytes | None = None
        self.origin = _Origin("")  # admits nothing until the exchange has resolved the target
        self.ignored = ""  # why the last reply dropped for its sender was

    def remaining(self) -> float:
        """Seconds left; ``ReplyTimeout`` once there are none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def timed_out(self) -> ReplyTimeout:
        return ReplyTimeout(self.client.target, self.timeout, self.ignored)

    def accept(self, received: tuple[bytes, Any, int, Any]) -> Response | None:
        """The decoded reply if it answers this call; None for a stray datagram."""
        data, ancillary, flags, sender = received
        if not self.origin.admits(sender, ancillary):
            self.ignored = _ignored_note(sender)
            log.debug("%s: %s", self.client.target, self.ignored)
            return None
        if flags & socket.MSG_TRUNC:
            raise BadReply(
                f"reply from {self.client.target} truncated: it is larger than the "
                f"{self.client.bufsize}-byte receive buffer"
            )
        self.reply = data
        response = decode_response(data)
        if response.answers(self.request_id):
            return response
        log.debug(
            "%s: dropped a reply to id %r (waiting for %r)",
            self.client.target,
            response.id,
            self.request_id,
        )
        return None

    def report(self) -> None:
        hook = self.client.on_exchange
        if hook is not None:
            elapsed = time.monotonic() - self.started
            hook(Exchange(self.client.target, self.data, self.reply, elapsed))


def _ignored_note(sender: Any) -> str:
    """Why the reply from ``sender`` was not taken, naming it as every log line does."""
    why = "not the address called" if sender else "not from root, this user or the socket's owner"
    return f"a reply from {peer_label(sender)} was ignored: {why}"


def _check_names(result: Any, target: str) -> list[str]:
    if not isinstance(result, list) or not all(isinstance(name, str) for name in result):
        raise BadReply(f"{target} listed its commands as {result!r}, not a list of names")
    return result


def _check_recipes(result: Any, target: str) -> list[list[str]]:
    if not isinstance(result, list) or not all(
        isinstance(recipe, list) and all(isinstance(name, str) for name in recipe)
        for recipe in result
    ):
        raise BadReply(f"{target} gave recipes as {result!r}, not lists of names")
    return result


def _help_params(dialect: Dialect, command: str) -> Params:
    return {"mi_cmd": command} if dialect.named_params else [command]


class Client(_ClientBase):
    """A blocking client. Thread-safe: share one between any number of threads.

    ``target``: a ``socket_name`` text or a parsed address (default: the server's default
    socket). ``timeout``: seconds, fractions welcome. ``dialect``: ``"opensips"`` (also for
    midgram) or ``"kamailio"`` (jsonrpcs). ``reply_dir``: bind UNIX reply sockets in a private
    directory under this one instead of the abstract namespace (for a server in another
    network namespace); the server's user must be able to traverse it, so not a 0700 one.
    ``bufsize``: the receive buffer. ``on_exchange``: called after each call with the bytes
    sent and received.
    """

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (sockets live for one call); here for ``with`` and symmetry."""

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` with positional ``args`` or named ``kwargs``; return its result."""
        return self.request(method, make_params(args, kwargs, self.dialect))

    def request(self, method: str, params: Params = None, *, timeout: float | None = None) -> Any:
        """Run ``method`` with ``params`` (a list, a dict or None); return its result."""
        return self._exchange(self._prepare(method, params, timeout)).unwrap()

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no id): nothing is waited for, no error can be seen."""
        params = make_params(args, kwargs, self.dialect)
        family, sockaddr = self._resolve()
        endpoint = _Endpoint(family, self.reply_dir)
        try:
            endpoint.sock.sendto(encode_request(method, params), sockaddr)
        except OSError as exc:
            raise _oserror(self.target, exc) from exc
        finally:
            endpoint.close()

    def methods(self) -> list[str]:
        """The server's command names (``which``; Kamailio: ``system.listMethods``)."""
        return _check_names(self.request(self.dialect.list_method), self.target)

    def recipes(self, command: str) -> list[list[str]] | None:
        """The parameter-name lists ``command`` accepts; None if the dialect cannot tell."""
        if self.dialect.recipes_method is None:
            return None
        result = self.request(self.dialect.recipes_method, {"command": command})
        return _check_recipes(result, self.target)

    def help(self, command: str) -> Any:
        """The server's help for ``command`` (``help``; Kamailio: ``system.methodHelp``)."""
        return self.request(self.dialect.help_method, _help_params(self.dialect, command))

    def _resolve(self) -> tuple[int, Sockaddr]:
        if isinstance(self.address, UnixAddress):
            self._check_place()
            return socket.AF_UNIX, self.address.sockaddr()
        host, port, flags = _udp_resolution(self.address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
        except socket.gaierror as exc:
            raise _gaierror(self.target, exc) from exc
        return _first_address(infos, self.target)

    def _exchange(self, call: _Call) -> Response:
        family, sockaddr = self._resolve()
        call.origin = self._origin(sockaddr)
        try:
            endpoint = _Endpoint(family, self.reply_dir)
        except OSError as exc:
            raise ClientError(f"cannot open a reply socket: {exc}") from exc
        try:
            self._send(endpoint.sock, call, sockaddr)
            response = self._receive(endpoint.sock, call)
            self._check_place()
            return response
        finally:
            endpoint.close()
            call.report()

    def _send(self, sock: socket.socket, call: _Call, sockaddr: Sockaddr) -> None:
        pause = _SEND_RETRY_FIRST
        while True:
            try:
                sock.sendto(call.data, sockaddr)
                return
            except BlockingIOError:
                # The server's queue is full: it is busy, not gone. Wait for room.
                time.sleep(min(pause, call.remaining()))
                pause = min(pause * 2, _SEND_RETRY_MAX)
            except OSError as exc:
                raise _oserror(self.target, exc, len(call.data)) from exc

    def _receive(self, sock: socket.socket, call: _Call) -> Response:
        while True:
            sock.settimeout(call.remaining())
            try:
                received = sock.recvmsg(self.bufsize, _CREDENTIALS_SPACE)
            except TimeoutError:
                raise call.timed_out() from None
            except OSError as exc:
                raise _oserror(self.target, exc) from exc
            response = call.accept(received)
            if response is not None:
                return response


class AsyncClient(_ClientBase):
    """The asyncio client: the same arguments and methods as ``Client``, as coroutines.

    Any number of tasks may share one; cancelling a call closes its socket at once.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to release (sockets live for one call); here for ``async with``."""

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` with positional ``args`` or named ``kwargs``; return its result."""
        return await self.request(method, make_params(args, kwargs, self.dialect))

    async def request(
        self, method: str, params: Params = None, *, timeout: float | None = None
    ) -> Any:
        """Run ``method`` with ``params`` (a list, a dict or None); return its result."""
        call = self._prepare(method, params, timeout)
        response = await _within(call, self._exchange(call))
        return response.unwrap()

    async def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no id): nothing is waited for, no error can be seen."""
        params = make_params(args, kwargs, self.dialect)
        family, sockaddr = await self._resolve()
        endpoint = _Endpoint(family, self.reply_dir)
        try:
            endpoint.sock.sendto(encode_request(method, params), sockaddr)
        except OSError as exc:
            raise _oserror(self.target, exc) from exc
        finally:
            endpoint.close()

    async def methods(self) -> list[str]:
        """The server's command names (``which``; Kamailio: ``system.listMethods``)."""
        return _check_names(await self.request(self.dialect.list_method), self.target)

    async def recipes(self, command: str) -> list[list[str]] | None:
        """The parameter-name lists ``command`` accepts; None if the dialect cannot tell."""
        if self.dialect.recipes_method is None:
            return None
        result = await self.request(self.dialect.recipes_method, {"command": command})
        return _check_recipes(result, self.target)

    async def help(self, command: str) -> Any:
        """The server's help for ``command`` (``help``; Kamailio: ``system.methodHelp``)."""
        return await self.request(self.dialect.help_method, _help_params(self.dialect, command))

    async def _resolve(self) -> tuple[int, Sockaddr]:
        if isinstance(self.address, UnixAddress):
            self._check_place()
            return socket.AF_UNIX, self.address.sockaddr()
        host, port, flags = _udp_resolution(self.address)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
        except socket.gaierror as exc:
            raise _gaierror(self.target, exc) from exc
        return _first_address(infos, self.target)

    async def _exchange(self, call: _Call) -> Response:
        family, sockaddr = await self._resolve()
        call.origin = self._origin(sockaddr)
        try:
            endpoint = _Endpoint(family, self.reply_dir)
        except OSError as exc:
            raise ClientError(f"cannot open a reply socket: {exc}") from exc
        try:
            await self._send(endpoint.sock, call, sockaddr)
            response = await self._receive(endpoint.sock, call)
            self._check_place()
            return response
        finally:
            endpoint.close()
            call.report()

    async def _send(self, sock: socket.socket, call: _Call, sockaddr: Sockaddr) -> None:
        pause = _SEND_RETRY_FIRST
        while True:
            try:
                sock.sendto(call.data, sockaddr)
                return
            except BlockingIOError:
                await asyncio.sleep(min(pause, call.remaining()))
                pause = min(pause * 2, _SEND_RETRY_MAX)
            except OSError as exc:
                raise _oserror(self.target, exc, len(call.data)) from exc

    async def _receive(self, sock: socket.socket, call: _Call) -> Response:
        while True:
            try:
                received = await _recvmsg(sock, self.bufsize)
            except OSError as exc:
                raise _oserror(self.target, exc) from exc
            response = call.accept(received)
            if response is not None:
                return response


async def _within(call: _Call, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` until the call's deadline; ``ReplyTimeout`` after it."""
    try:
        async with asyncio.timeout_at(_loop_deadline(call)):
            return await work
    except TimeoutError:
        raise call.timed_out() from None


def _loop_deadline(call: _Call) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (call.deadline - time.monotonic())


async def _recvmsg(sock: socket.socket, bufsize: int) -> tuple[bytes, Any, int, Any]:
    """``sock.recvmsg`` when a datagram is there; asyncio has no ``sock_recvmsg``."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recvmsg(bufsize, _CREDENTIALS_SPACE)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _set_ready, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
