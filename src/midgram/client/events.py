"""Event listeners that stay subscribed: ``Client.events`` and ``AsyncClient.events``.

::

    with Client("/run/opensips/mi.sock").events(["E_PIKE_BLOCKED", "E_CORE_THRESHOLD"]) as events:
        for event in events:                       # blocks; events.next(timeout) does not
            print(event.name, event.params)

    async with AsyncClient("udp:10.0.0.1:8080").events(["all"]) as events:
        async for event in events:
            ...

A stream binds one local socket (``listen``: where, and why there) and subscribes it to
every event named (``"all"``: every event ``events_list`` names) with ``event_subscribe``.
Subscriptions expire on the server, so a stream renews them when half of ``expire`` has
gone by, and at once when the server restarted (which forgets every subscription): it asks
the server's ``uptime`` every ``check_every`` seconds, and a changed ``Up since``, an ``Up
time`` that went down, or a server that could not be asked and answers again means a
restart. On close (the ``with`` block's end, a ``break`` out of the loop, an exception) it
unsubscribes (``expire`` 0) and removes its socket.

Nothing a stream does to stay subscribed raises: the server may be restarting, and the
listener must outlive that. Each renewal, failed check and unsubscription is logged (INFO)
and reported to ``on_upkeep`` (an ``Upkeep``). What fails when the stream opens (an unknown
event, an unreachable server, a socket that cannot be bound) raises, and nothing is left
subscribed. A stream is for one consumer (one thread or task) and is opened once.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, TypeVar, Unpack, cast

from midgram.client.exchange import Sockaddr
from midgram.client.listen import EventSocket, Received
from midgram.errors import BadReply, ClientError, ConnectError, RemoteError, ReplyTimeout
from midgram.wire.address import UdpAddress, UnixAddress, parse_event_socket
from midgram.wire.events import decode_notification
from midgram.wire.jsonrpc import Params

if TYPE_CHECKING:
    from midgram.client.calls import AsyncClient, Client

__all__ = [
    "ALL_EVENTS",
    "CHECK_EVERY",
    "LISTEN_EXPIRE",
    "MIN_EXPIRE",
    "AsyncEventStream",
    "Event",
    "EventStream",
    "StreamOptions",
    "Upkeep",
]

log = logging.getLogger(__name__)

#: Seconds each subscription is asked for. Shorter than OpenSIPS's default (3600): a listener
#: killed with SIGKILL cannot unsubscribe, and the server sends to (and, over UNIX, logs an
#: error for) its socket until the subscription expires. Renewing costs one datagram an
#: event every ``expire / 2`` seconds.
LISTEN_EXPIRE: Final = 300
#: The shortest ``expire``: a renewal comes after half of it, in whole seconds on the server.
MIN_EXPIRE: Final = 2
#: Seconds between two ``uptime`` checks for a server restart.
CHECK_EVERY: Final = 5.0
#: The name that stands for every event the server lists (``events_list``).
ALL_EVENTS: Final = "all"

UpkeepReason = Literal["expiry", "restart", "check", "close"]


@dataclass(frozen=True)
class Event:
    """A notification received: the event's ``name`` and ``params`` (an object, an array or
    None), who sent it (``sender``: ``udp:HOST:PORT``, ``unix:PATH`` or ``unix:(pid N)``),
    when (``received``: ``time.time()``) and its exact bytes (``data``)."""

    name: str
    params: Any
    sender: str
    received: float
    data: bytes


@dataclass(frozen=True)
class Upkeep:
    """What a stream did to stay subscribed: renewed its subscriptions because they were due
    (``"expiry"``) or because the server restarted (``"restart"``), asked the server's
    uptime (``"check"``: reported only when that failed), or unsubscribed (``"close"``).
    ``error`` is None when it worked."""

    reason: UpkeepReason
    error: ClientError | None = None


# --- what to do when (sans-IO) ---------------------------------------------------------------


def _uptime_marks(result: Any) -> tuple[Any, int]:
    """``Up since`` and the seconds of ``Up time`` ("12 [sec]") of an uptime result."""
    if not isinstance(result, dict):
        return result, -1
    seconds = str(result.get("Up time", "")).split(" ", 1)[0]
    return result.get("Up since"), int(seconds) if seconds.isdigit() else -1


class _Upkeep:
    """When to renew and when to check for a restart; what the server's uptime means."""

    def __init__(self, expire: int, check_every: float) -> None:
        self.expire = expire
        self.check_every = check_every
        now = time.monotonic()
        self._renew_at = now + expire / 2
        self._check_at = now + check_every
        self._pending: UpkeepReason | None = None
        self._marks: tuple[Any, int] | None = None  # None: the server cannot say
        self._lost = False

    def baseline(self, result: Any) -> None:
        """The uptime the server gave before the first subscription (None: it has none)."""
        self._marks = None if result is None else _uptime_marks(result)

    def step(self) -> UpkeepReason | None:
        """What is due now: a renewal (``expiry``, ``restart``), a ``check``, or nothing."""
        if self._pending is not None:
            return self._pending
        now = time.monotonic()
        if now >= self._renew_at:
            return "expiry"
        if self._marks is not None and now >= self._check_at:
            return "check"
        return None

    def wait(self) -> float:
        """Seconds until something is due."""
        due = self._renew_at if self._marks is None else min(self._renew_at, self._check_at)
        return 0.0 if self._pending is not None else max(0.0, due - time.monotonic())

    def checked(self, outcome: Any) -> Upkeep | None:
        """The uptime result or the ``ClientError`` of a check; a failed check is reported."""
        self._check_at = time.monotonic() + self.check_every
        if isinstance(outcome, ClientError):
            self._lost = True
            return Upkeep("check", outcome)
        marks = _uptime_marks(outcome)
        since, seconds = marks
        last_since, last_seconds = self._marks or marks
        if self._lost or since != last_since or seconds < last_seconds:
            self._pending = "restart"
        self._marks, self._lost = marks, False
        return None

    def renewed(self, reason: UpkeepReason, error: ClientError | None) -> Upkeep:
        """After a renewal; a failed one is tried again after ``check_every`` (or sooner)."""
        now = time.monotonic()
        self._pending = None
        wait = self.expire / 2 if error is None else min(self.check_every, self.expire / 2)
        self._renew_at = now + wait
        self._check_at = now + self.check_every
        return Upkeep(reason, error)


# --- what both streams share -----------------------------------------------------------------


def _names(events: Sequence[str] | str) -> tuple[str, ...]:
    names = (events,) if isinstance(events, str) else tuple(events)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"events must be one or more event names, not {events!r}")
    return tuple(dict.fromkeys(names))


def _check_expire(expire: int) -> int:
    if isinstance(expire, bool) or not isinstance(expire, int) or expire < MIN_EXPIRE:
        raise ValueError(
            f"expire must be a whole number of seconds >= {MIN_EXPIRE}, not {expire!r}"
        )
    return expire


def _check_every(seconds: float) -> float:
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"check_every must be a positive number of seconds, not {seconds!r}")
    return float(seconds)


def _socket_option(
    value: str | UnixAddress | UdpAddress | None, parameter: str
) -> UnixAddress | UdpAddress | None:
    if isinstance(value, str):
        # Port 0 only where the listener binds: the port the kernel chooses is advertised.
        return parse_event_socket(value, parameter=parameter, any_port=parameter == "listen")
    return value


def _listed_names(result: Any, target: str) -> list[str]:
    """The names in an ``events_list`` result: ``{"Events": [{"name", "id"}...]}``."""
    listed = result.get("Events") if isinstance(result, dict) else None
    if not isinstance(listed, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in listed
    ):
        raise BadReply(f"{target} listed its events as {result!r}, not {{'Events': [...]}}")
    return [entry["name"] for entry in listed]


def _expanded(names: tuple[str, ...], listed: list[str]) -> tuple[str, ...]:
    """The names with ``all`` replaced by every event listed."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(listed if name == ALL_EVENTS else [name])
    return tuple(dict.fromkeys(expanded))


def _unreachable(error: ClientError) -> bool:
    """After this error, asking the server anything more only waits for nothing."""
    return isinstance(error, ReplyTimeout | ConnectError)


class StreamOptions(TypedDict, total=False):
    """What ``Client.events`` takes besides the names (each defaults as its constant says)."""

    #: Seconds each subscription lasts; it is renewed at half (``LISTEN_EXPIRE``).
    expire: int
    #: Seconds between two checks of the server's uptime (``CHECK_EVERY``).
    check_every: float
    #: Where to bind, ``udp:HOST:PORT`` or ``unix:PATH`` (``listen`` says the default).
    listen: str | UnixAddress | UdpAddress | None
    #: The ``socket`` the server is told, when it is not where the socket is bound.
    advertise: str | UnixAddress | UdpAddress | None
    #: Called with each renewal, failed check and failed unsubscription.
    on_upkeep: Callable[[Upkeep], None] | None


class _Stream:
    """Settings, the socket and the sans-IO half both streams share."""

    def __init__(
        self,
        client: Client | AsyncClient,
        events: Sequence[str] | str,
        *,
        expire: int = LISTEN_EXPIRE,
        check_every: float = CHECK_EVERY,
        listen: str | UnixAddress | UdpAddress | None = None,
        advertise: str | UnixAddress | UdpAddress | None = None,
        on_upkeep: Callable[[Upkeep], None] | None = None,
    ) -> None:
        if not client.dialect.named_params:
            raise ValueError(
                f"the {client.dialect.name} dialect has no event interface "
                "(event_subscribe is OpenSIPS's, and midgram's)"
            )
        self.names = _names(events)
        self.expire = _check_expire(expire)
        self.check_every = _check_every(check_every)
        self.listen = _socket_option(listen, "listen")
        self.advertise = _socket_option(advertise, "advertise")
        self.on_upkeep = on_upkeep
        self.target = client.target
        #: The ``socket`` subscribed (``udp:HOST:PORT`` or ``unix:PATH``), once open.
        self.socket: str | None = None
        self._socket: EventSocket | None = None
        self._upkeep = _Upkeep(self.expire, self.check_every)
        self._closed = False
        self._subscribed: list[str] = []

    def __repr__(self) -> str:
        where = self.socket or "not open"
        return f"{type(self).__name__}({self.target!r}, {list(self.names)!r}, {where})"

    def _bind(self, address: UnixAddress | UdpAddress, resolved: tuple[int, Sockaddr]) -> None:
        if self._closed:
            raise RuntimeError("this event stream is closed: open a new one")
        self._socket = EventSocket.open(address, resolved, self.listen, self.advertise)
        self.socket = self._socket.advertised

    def _params(self, name: str, expire: int) -> dict[str, Any]:
        assert self.socket is not None
        return {"event": name, "socket": self.socket, "expire": expire}

    def _note(self, upkeep: Upkeep | None) -> None:
        if upkeep is None:
            return
        if upkeep.error is None:
            log.info(
                "%s: subscriptions renewed (%s) for %s", self.target, upkeep.reason, self.socket
            )
        else:
            log.info("%s: %s failed: %s", self.target, upkeep.reason, upkeep.error)
        if self.on_upkeep is not None:
            self.on_upkeep(upkeep)

    def _take(self, received: Received) -> Event | None:
        """The event a datagram carries, if it is a notification of one subscribed to."""
        try:
            notice = decode_notification(received.data)
        except ValueError as exc:
            log.info("%s: ignored a datagram from %s: %s", self.socket, received.sender, exc)
            return None
        if notice.event not in self.names:
            log.info(
                "%s: ignored %s from %s: not subscribed", self.socket, notice.event, received.sender
            )
            return None
        return Event(notice.event, notice.params, received.sender, received.received, received.data)

    def _detach(self) -> EventSocket | None:
        """The socket to close, once: close() again does nothing."""
        self._closed = True
        sock, self._socket = self._socket, None
        return sock

    def _poll(self, deadline: float | None) -> tuple[Event | None, float | None]:
        """An event waiting on the socket, or how long to wait for one (None: no longer;
        0: look again, a datagram that was not an event was dropped)."""
        assert self._socket is not None
        received = self._socket.read()
        if received is None:
            return None, _left(deadline, self._upkeep.wait())
        event = self._take(received)
        # Dropped: look again at once, unless the time is up (a flood must not hold next).
        return event, 0.0 if event is not None else _left(deadline, 0.0)

    # The MI requests a stream makes, as plans (generators) that yield each request as
    # ``(method, params)`` and get back its result or its ``ClientError``: one plan for the
    # blocking and the asyncio stream, each carrying out the requests its own way (``_run``).

    def _opening(self) -> _Plan[None]:
        names = self.names
        if ALL_EVENTS in names:
            listed = _listed_names(_result((yield ("events_list", None))), self.target)
            names = _expanded(names, listed)
        uptime = yield ("uptime", None)
        if isinstance(uptime, RemoteError):
            uptime = None  # no uptime command: restarts go unseen, renewals still come
        self._upkeep.baseline(_result(uptime))
        for name in names:
            _result((yield ("event_subscribe", self._params(name, self.expire))))
            self._subscribed.append(name)
        self.names = names

    def _keeping_up(self) -> _Plan[None]:
        while (step := self._upkeep.step()) is not None:
            if step == "check":
                self._note(self._upkeep.checked((yield ("uptime", None))))
                continue
            error = yield from self._subscribing(self.expire)
            self._note(self._upkeep.renewed(step, error))

    def _closing(self) -> _Plan[None]:
        error = yield from self._subscribing(0)
        self._subscribed.clear()
        if error is not None:
            self._note(Upkeep("close", error))

    def _subscribing(self, expire: int) -> _Plan[ClientError | None]:
        """``event_subscribe`` for every event subscribed; the first error, if any."""
        first: ClientError | None = None
        for name in self._subscribed:
            outcome = yield ("event_subscribe", self._params(name, expire))
            if isinstance(outcome, ClientError):
                first = first or outcome
                if _unreachable(outcome):
                    break
        return first


T = TypeVar("T")
#: A stream's MI requests: yields ``(method, params)``, is sent the result or the error.
_Plan = Generator[tuple[str, Params], Any, T]


def _result(outcome: Any) -> Any:
    """A request's result; its error raised."""
    if isinstance(outcome, ClientError):
        raise outcome
    return outcome


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None, wait: float) -> float | None:
    """How long to wait for a datagram; None once ``deadline`` has passed."""
    if deadline is None:
        return wait
    left = deadline - time.monotonic()
    return None if left <= 0 else min(wait, left)


# --- blocking -----------------------------------------------------------------------------


class EventStream(_Stream):
    """Events from one server, blocking (``Client.events`` makes one; its arguments there)."""

    def __init__(
        self, client: Client, events: Sequence[str] | str, **options: Unpack[StreamOptions]
    ) -> None:
        super().__init__(client, events, **options)
        self.client = client

    def __enter__(self) -> EventStream:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        try:
            while True:
                event = self.next()
                if event is not None:
                    yield event
        finally:
            self.close()

    def open(self) -> None:
        """Bind the socket and subscribe it (done by ``with`` and by the first ``next``)."""
        if self._socket is not None:
            return
        self._bind(self.client.address, self.client.resolve())
        try:
            self._run(self._opening())
        except BaseException:
            self.close()
            raise

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None if none came within ``timeout`` seconds (None: wait)."""
        self.open()
        deadline = _deadline(timeout)
        while True:
            self._run(self._keeping_up())
            event, wait = self._poll(deadline)
            if event is not None or wait is None:
                return event
            if wait and self._socket is not None:
                select.select([self._socket], [], [], wait)

    def close(self) -> None:
        """Unsubscribe (``expire`` 0) and remove the socket; again: nothing happens."""
        sock = self._detach()
        if sock is not None:
            try:
                self._run(self._closing())
            finally:
                sock.close()

    def _run(self, plan: _Plan[T]) -> T:
        """Carry out ``plan``'s requests one after the other; its return value."""
        outcome: Any = None
        while True:
            try:
                method, params = plan.send(outcome)
            except StopIteration as done:
                return cast(T, done.value)
            try:
                outcome = self.client.request(method, params)
            except ClientError as exc:
                outcome = exc


# --- asyncio ------------------------------------------------------------------------------


class AsyncEventStream(_Stream):
    """Events from one server, in asyncio (``AsyncClient.events`` makes one)."""

    def __init__(
        self, client: AsyncClient, events: Sequence[str] | str, **options: Unpack[StreamOptions]
    ) -> None:
        super().__init__(client, events, **options)
        self.client = client

    async def __aenter__(self) -> AsyncEventStream:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self.next()
                if event is not None:
                    yield event
        finally:
            await self.aclose()

    async def open(self) -> None:
        """Bind the socket and subscribe it (done by ``async with`` and the first ``next``)."""
        if self._socket is not None:
            return
        self._bind(self.client.address, await self.client.resolve())
        try:
            await self._run(self._opening())
        except BaseException:
            await self.aclose()
            raise

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None if none came within ``timeout`` seconds (None: wait)."""
        await self.open()
        deadline = _deadline(timeout)
        while True:
            await self._run(self._keeping_up())
            event, wait = self._poll(deadline)
            if event is not None or wait is None:
                return event
            if wait and self._socket is not None:
                await _readable(self._socket, wait)

    async def aclose(self) -> None:
        """Unsubscribe (``expire`` 0) and remove the socket; again: nothing happens."""
        sock = self._detach()
        if sock is not None:
            try:
                await self._run(self._closing())
            finally:
                sock.close()

    async def _run(self, plan: _Plan[T]) -> T:
        """Carry out ``plan``'s requests one after the other; its return value."""
        outcome: Any = None
        while True:
            try:
                method, params = plan.send(outcome)
            except StopIteration as done:
                return cast(T, done.value)
            try:
                outcome = await self.client.request(method, params)
            except ClientError as exc:
                outcome = exc


async def _readable(sock: EventSocket, timeout: float) -> None:
    """Return when ``sock`` has a datagram, or after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock.fileno(), _set_ready, ready)
    try:
        await asyncio.wait((ready,), timeout=timeout)
    finally:
        loop.remove_reader(sock.fileno())


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
