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

Each call has a socket of its own, and takes a reply only from the address it called
(``exchange`` says how, and why). So a client holds no socket and no lock on the I/O path: it
is thread-safe and any number of threads or tasks may share it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, Unpack

from midgram.client.codec import (
    Dialect,
    Response,
    check_params,
    encode_request,
    get_dialect,
    make_params,
)
from midgram.client.exchange import (
    CREDENTIALS_SPACE,
    Call,
    Endpoint,
    Exchange,
    RequestIds,
    Sockaddr,
    first_address,
    origin_of,
    resolve_error,
    send_error,
    send_once,
    udp_resolution,
)
from midgram.errors import BadReply, ConnectError
from midgram.local import default_target, squatted
from midgram.wire.address import UdpAddress, UnixAddress, parse_target
from midgram.wire.jsonrpc import MAX_BUF_SIZE, Params

if TYPE_CHECKING:
    from midgram.client.events import AsyncEventStream, EventStream, StreamOptions

__all__ = [
    "DEFAULT_TIMEOUT",
    "REPLY_BUF_SIZE",
    "AsyncClient",
    "Client",
]

#: Seconds to wait for a reply. python-opensips's 0.1 s fails slow commands; kamcli waits 4 s.
DEFAULT_TIMEOUT: Final = 5.0
#: The receive buffer: a server's replies are no longer than its ``socket_buf_size``, at most
#: MAX_BUF_SIZE (1 MiB). Only the pages a reply fills are touched, so the size costs ~10 us.
REPLY_BUF_SIZE: Final = MAX_BUF_SIZE

T = TypeVar("T")


def _check_timeout(timeout: float) -> float:
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


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
        self._ids = RequestIds()
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

    def encode(self, method: str, params: Params = None) -> bytes:
        """The request datagram a call would send (with a fresh id): for ``--dry-run``."""
        return encode_request(method, check_params(params, self.dialect), self._ids.take())

    def _prepare(self, method: str, params: Params, timeout: float | None) -> Call:
        request_id = self._ids.take()
        data = encode_request(method, check_params(params, self.dialect), request_id)
        budget = self.timeout if timeout is None else _check_timeout(timeout)
        return Call(self.address, (request_id, data), budget, self.bufsize, self.on_exchange)

    def _unix_resolution(self, address: UnixAddress) -> tuple[int, Sockaddr]:
        self._check_place()
        return socket.AF_UNIX, address.sockaddr()

    def _open(self, call: Call, resolved: tuple[int, Sockaddr]) -> Endpoint:
        """The socket for ``call`` to ``resolved`` (family, sockaddr), and where its reply
        may come from."""
        family, sockaddr = resolved
        call.origin = origin_of(self.address, sockaddr)
        return Endpoint.open(family, self.reply_dir)


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
        data = encode_request(method, make_params(args, kwargs, self.dialect))
        send_once(self.address, self.resolve(), data, self.reply_dir)

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

    def resolve(self) -> tuple[int, Sockaddr]:
        """The target's (family, sockaddr), as a call sends to it."""
        if isinstance(self.address, UnixAddress):
            return self._unix_resolution(self.address)
        host, port, flags = udp_resolution(self.address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
        except socket.gaierror as exc:
            raise resolve_error(self.target, exc) from exc
        return first_address(infos, self.target)

    def events(self, events: Sequence[str] | str, **options: Unpack[StreamOptions]) -> EventStream:
        """A stream of the server's notifications of ``events`` (``"all"``: every event it
        lists) that stays subscribed until closed::

            with client.events(["E_CORE_THRESHOLD"]) as stream:
                for event in stream:
                    print(event.name, event.params)

        ``options`` (``StreamOptions``): ``expire``, ``check_every``, ``listen``,
        ``advertise``, ``on_upkeep``; ``midgram.client.events`` says how renewal works.
        """
        # Imported here: `midgram call`'s cold start does not load the listener.
        from midgram.client.events import EventStream  # noqa: PLC0415

        return EventStream(self, events, **options)

    def _exchange(self, call: Call) -> Response:
        resolved = self.resolve()
        endpoint = self._open(call, resolved)
        try:
            self._send(endpoint.sock, call, resolved[1])
            response = self._receive(endpoint.sock, call)
            self._check_place()
            return response
        finally:
            endpoint.close()
            call.report()

    def _send(self, sock: socket.socket, call: Call, sockaddr: Sockaddr) -> None:
        while not call.send(sock, sockaddr):
            time.sleep(call.send_pause())

    def _receive(self, sock: socket.socket, call: Call) -> Response:
        while True:
            sock.settimeout(call.remaining())
            try:
                received = sock.recvmsg(self.bufsize, CREDENTIALS_SPACE)
            except TimeoutError:
                raise call.timed_out() from None
            except OSError as exc:
                raise send_error(self.address, exc) from exc
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
        data = encode_request(method, make_params(args, kwargs, self.dialect))
        send_once(self.address, await self.resolve(), data, self.reply_dir)

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

    async def resolve(self) -> tuple[int, Sockaddr]:
        """The target's (family, sockaddr), as a call sends to it."""
        if isinstance(self.address, UnixAddress):
            return self._unix_resolution(self.address)
        host, port, flags = udp_resolution(self.address)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
        except socket.gaierror as exc:
            raise resolve_error(self.target, exc) from exc
        return first_address(infos, self.target)

    def events(
        self, events: Sequence[str] | str, **options: Unpack[StreamOptions]
    ) -> AsyncEventStream:
        """``Client.events`` for asyncio::

        async with client.events(["E_CORE_THRESHOLD"]) as stream:
            async for event in stream:
                print(event.name, event.params)
        """
        from midgram.client.events import AsyncEventStream  # noqa: PLC0415

        return AsyncEventStream(self, events, **options)

    async def _exchange(self, call: Call) -> Response:
        resolved = await self.resolve()
        endpoint = self._open(call, resolved)
        try:
            await self._send(endpoint.sock, call, resolved[1])
            response = await self._receive(endpoint.sock, call)
            self._check_place()
            return response
        finally:
            endpoint.close()
            call.report()

    async def _send(self, sock: socket.socket, call: Call, sockaddr: Sockaddr) -> None:
        while not call.send(sock, sockaddr):
            await asyncio.sleep(call.send_pause())

    async def _receive(self, sock: socket.socket, call: Call) -> Response:
        while True:
            try:
                received = await _recvmsg(sock, self.bufsize)
            except OSError as exc:
                raise send_error(self.address, exc) from exc
            response = call.accept(received)
            if response is not None:
                return response


async def _within(call: Call, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` until the call's deadline; ``ReplyTimeout`` after it."""
    try:
        async with asyncio.timeout_at(_loop_deadline(call)):
            return await work
    except TimeoutError:
        raise call.timed_out() from None


def _loop_deadline(call: Call) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (call.deadline - time.monotonic())


async def _recvmsg(sock: socket.socket, bufsize: int) -> tuple[bytes, Any, int, Any]:
    """``sock.recvmsg`` when a datagram is there; asyncio has no ``sock_recvmsg``."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recvmsg(bufsize, CREDENTIALS_SPACE)
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
