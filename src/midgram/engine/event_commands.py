"""The MI commands of OpenSIPS's Event Interface: ``event_subscribe``, ``events_list``,
``subscribers_list`` and ``raise_event``, with OpenSIPS 3.6's recipes, reply shapes, codes and
texts (docs/events.md), but where OpenSIPS is wrong (docs/compatibility.md, differences 22
to 28).

They read the registry's catalog (``Events``) and, while a server serves it, its publisher;
``events_list`` works without one, the others answer ``500 Events are not served here``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from midgram.engine.events import Event, Events
from midgram.engine.publisher import EventPublisher
from midgram.engine.subscriptions import Destination, Subscriber, TableFull
from midgram.errors import AddressError, InvalidParams, MIError
from midgram.logs import RateLimitedLog, shown
from midgram.wire.address import UdpAddress, UnixAddress, event_socket_text, parse_event_socket
from midgram.wire.events import DEFAULT_EXPIRE, encode_notification, mi_event_params
from midgram.wire.jsonrpc import C_INT_MAX

__all__ = ["event_commands"]

log = logging.getLogger(__name__)

_NOT_REGISTERED: Final = (404, "Event not registered")
_NOT_PUBLISHED: Final = (404, "Event not published")
_NO_SUBSCRIBER: Final = (404, "Subscriber does not exist")
_UNAVAILABLE: Final = (480, "Temporarily Unavailable")
_BAD_VALUE: Final = (400, "Bad parameter value")
_TABLE_FULL: Final = (500, "Too many subscribers")
_NOT_SERVED: Final = (500, "Events are not served here")
#: ``raise_event`` without ``params``: unlike ``"params": null`` (``400 No Params``).
_NO_PARAMS: Final[Any] = object()

_HELP: Final = {
    "event_subscribe": "subscribes an event to the Event Interface",
    "events_list": "lists all the events advertised through the Event Interface",
    "subscribers_list": (
        "lists all the Event Interface subscribers; Params: [ event [ subscriber ]]"
    ),
    "raise_event": "raises an event through the Event Interface; Params: event [ params ]",
}


def event_commands(events: Events) -> list[tuple[Callable[..., Any], str]]:
    """The four commands, in the order OpenSIPS 3.6's ``which`` lists them, with their help
    texts."""
    commands = _Commands(events)
    handlers = (
        commands.event_subscribe,
        commands.events_list,
        commands.subscribers_list,
        commands.raise_event,
    )
    return [(handler, _HELP[handler.__name__]) for handler in handlers]


class _Commands:
    def __init__(self, events: Events) -> None:
        self._events = events
        self._log = RateLimitedLog(log)

    def events_list(self) -> dict[str, list[dict[str, Any]]]:
        return {"Events": [{"name": e.name, "id": e.id} for e in self._events]}

    def event_subscribe(self, event: str, socket: str, expire: int = DEFAULT_EXPIRE) -> str:
        _not_empty(event, "event")
        _not_empty(socket, "socket")
        if expire < 0:
            raise InvalidParams("Negative expire value")
        found = self._events.get(event)
        if found is None:
            self._log.log("event", logging.INFO, "invalid event name %s", shown(event))
            raise MIError(*_BAD_VALUE)
        publisher = self._publisher()
        where = self._destination(publisher, socket)
        if where is None:
            raise MIError(*_BAD_VALUE)
        address, destination = where
        try:
            publisher.table.subscribe(
                found.id,
                event_socket_text(address),
                destination,
                min(expire, C_INT_MAX),  # as OpenSIPS keeps it, in a C int
                publisher.now(),
            )
        except TableFull as exc:
            publisher.stats.refused.inc()
            self._log.log(
                "full",
                logging.WARNING,
                "event_subscribe %s %s refused: %s (max_event_subscribers)",
                shown(event),
                shown(socket),
                exc,
            )
            raise MIError(*_TABLE_FULL, f"max_event_subscribers is {exc.capacity}") from None
        return "OK"

    def subscribers_list(
        self, event: str | None = None, socket: str | None = None
    ) -> dict[str, Any]:
        publisher = self._served()
        now = publisher.now() if publisher is not None else 0
        listed = publisher.table.listed(now) if publisher is not None else ()
        if event is None:
            every = (_listing(e, listed, now) for e in self._events)
            return {"Events": [listing for listing in every if listing]}
        found = self._events.get(event)
        if found is None:
            raise MIError(*_NOT_PUBLISHED)
        if socket is None:
            return {"Event": _listing(found, listed, now)}
        where = self._destination(publisher, socket) if publisher is not None else None
        for subscriber in listed:
            if where is not None and (subscriber.event, subscriber.destination) == (
                found.id,
                where[1],
            ):
                listing = {"name": found.name, "id": found.id, "Subscriber": subscriber.listed(now)}
                return {"Event": listing}
        raise MIError(*_NO_SUBSCRIBER)

    def raise_event(self, event: str, params: Any = _NO_PARAMS) -> str:
        # The checks in OpenSIPS's order: the event, a subscriber, then the params.
        found = self._events.get(event)
        if found is None:
            raise MIError(*_NOT_REGISTERED)
        publisher = self._publisher()
        subscribers = publisher.table.live(found.id, publisher.now())
        if not subscribers:
            raise MIError(*_UNAVAILABLE)
        sent = None if params is _NO_PARAMS else mi_event_params(params)
        publisher.deliver(found, encode_notification(found.name, sent), subscribers)
        return "OK"

    def _served(self) -> EventPublisher | None:
        publisher = self._events.publisher
        return publisher if isinstance(publisher, EventPublisher) else None

    def _publisher(self) -> EventPublisher:
        publisher = self._served()
        if publisher is None:
            raise MIError(*_NOT_SERVED)
        return publisher

    def _destination(
        self, publisher: EventPublisher, socket: str
    ) -> tuple[UnixAddress | UdpAddress, Destination] | None:
        """``socket`` parsed, and where it delivers (a UDP host name resolved now); None,
        logged, when it cannot be."""
        try:
            address = parse_event_socket(socket)
        except AddressError as exc:
            self._log.log(
                "socket", logging.INFO, "event socket %s refused: %s", shown(socket), exc.reason
            )
            return None
        try:
            return address, publisher.destination(address)
        except OSError as exc:
            self._log.log("resolve", logging.INFO, "cannot resolve %s: %s", shown(socket), exc)
            return None


def _listing(event: Event, listed: tuple[Subscriber, ...], now: int) -> dict[str, Any]:
    """An event with its subscribers, newest first; ``{}`` when it has none."""
    subscribers = [s.listed(now) for s in listed if s.event == event.id]
    if not subscribers:
        return {}
    return {"name": event.name, "id": event.id, "Subscribers": subscribers}


def _not_empty(value: str, name: str) -> None:
    """An empty ``event`` or ``socket`` is a bad value of its type (docs/compatibility.md,
    difference 27: OpenSIPS's text there is whatever error came last in that process)."""
    if not value:
        raise InvalidParams(f"Bad type for parameter '{name}'")
