"""Events: what a registry publishes, and raising one. Sans-IO.

A program declares its events on its registry, and raises them from anywhere: a command's
handler, a task of an ``AsyncServer`` program, another thread::

    mi = Registry("calls")
    calls_high = mi.event("E_CALLS_HIGH")           # listed by events_list

    @mi.command()
    def set_calls(n: int) -> str:
        if n > 100:
            calls_high.raise_event({"calls": n})   # every live subscriber gets a datagram
        return "OK"

``Events`` is the catalog: names and ids, in declaration order, as ``events_list`` lists them.
While a server serves the registry, the catalog holds that server's ``Publisher``
(``midgram.engine.publisher``: the subscribers' table shared by every process of the server,
and the sockets that deliver); raising an event hands it over. Outside a server, raising
delivers to nobody.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from midgram.engine.stats import Statistics
from midgram.wire.events import MAX_EVENT_NAME, EventParams

__all__ = ["Event", "Events", "Publisher"]


class Publisher(Protocol):
    """What raises a server's events (``midgram.engine.publisher.EventPublisher``)."""

    def publish(self, event: Event, params: EventParams) -> int:
        """Send ``event`` to its live subscribers; how many it reached."""
        ...


@dataclass(frozen=True)
class Event:
    """A published event: its name and its id (its place in ``events_list``)."""

    name: str
    id: int
    catalog: Events

    def raise_event(self, params: EventParams = None) -> int:
        """Send this event to every live subscriber, with params: an object (a dict), an
        array, or none. How many subscribers it reached. Thread-safe, and never blocks: a
        subscriber that cannot take it at once misses it (logged and counted)."""
        return self.catalog.raise_event(self, params)


class Events:
    """The events one registry publishes; while a server serves it, that server's
    publisher."""

    def __init__(self, stats: Statistics) -> None:
        self.stats = stats
        self._events: dict[str, Event] = {}
        self.publisher: Publisher | None = None

    def declare(self, name: str) -> Event:
        """Publish the event ``name`` (or get it, declared already). Before the server forks:
        a worker's own declaration would be unknown to the others."""
        existing = self._events.get(name)
        if existing is not None:
            return existing
        _check_name(name)
        if self.stats.slots is not None:
            raise RuntimeError(
                f"declare events before the server starts: {name!r} was declared after it forked"
            )
        event = Event(name, len(self._events), self)
        self._events[name] = event
        return event

    def get(self, name: str) -> Event | None:
        return self._events.get(name)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events.values())

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, name: object) -> bool:
        return name in self._events

    def raise_event(self, event: str | Event, params: EventParams = None) -> int:
        """Send ``event`` to every live subscriber; how many it reached (0 outside a
        server). ``KeyError`` for an event not declared here, ``TypeError`` for params
        that are not JSON."""
        found = self._events.get(event) if isinstance(event, str) else event
        if found is None or found.catalog is not self:
            raise KeyError(f"event {event!r} is not declared")
        _check_params(params)
        publisher = self.publisher
        return 0 if publisher is None else publisher.publish(found, params)


def _check_params(params: object) -> None:
    """Params of the wrong kind are a bug of the raiser's: refused whether or not anyone is
    subscribed now, so it shows at once, not on the day someone subscribes."""
    if params is None or isinstance(params, Mapping):
        return
    if isinstance(params, str | bytes | bytearray) or not isinstance(params, Sequence):
        raise TypeError(
            f"event params are an object (a dict), an array (a list) or None, not "
            f"{type(params).__name__}"
        )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"bad event name {name!r}: a non-empty name without spaces")
    if len(name.encode()) > MAX_EVENT_NAME:
        raise ValueError(f"bad event name {name!r}: longer than {MAX_EVENT_NAME} bytes")
