"""The publisher of a server's events: its subscribers' table, its delivery, its statistics.

The server makes one before it forks (``midgram.server.wiring``) and hands it to the
registry's catalog (``Events.publisher``): every process of the server then subscribes into
the same shared table (``engine.subscriptions``) and raises through its own sockets
(``Delivery``: ``midgram.server.events.EventSender``, which makes them after the fork).

Raising encodes the notification once (``wire.events``) and sends it to the live subscribers
without blocking; the ``event_datagram`` statistics count what was raised, delivered and
dropped. Several threads of one process may raise at once: the statistics' cells (whose
writes are not thread-safe) are written under a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from midgram.engine.events import Event, Events
from midgram.engine.stats import Counter, Statistics
from midgram.engine.subscriptions import Destination, Subscriber, SubscriptionTable
from midgram.wire.address import UdpAddress, UnixAddress
from midgram.wire.events import EventParams, encode_notification

__all__ = ["STATS_GROUP", "Delivery", "EventPublisher", "EventStats"]

#: The group of the event statistics (named after OpenSIPS's module).
STATS_GROUP: Final = "event_datagram"


class Delivery(Protocol):
    """How a server reaches its subscribers (``midgram.server.events.EventSender``)."""

    def resolve(self, address: UdpAddress) -> Destination:
        """A UDP subscriber's destination (a host name resolved now); ``OSError`` if none."""
        ...

    def send(self, event: str, datagram: bytes, subscribers: Sequence[Subscriber]) -> int:
        """Send ``event``'s ``datagram`` to each subscriber without blocking; how many it
        reached."""
        ...


@dataclass(frozen=True)
class EventStats:
    """The ``event_datagram`` statistics (docs/operations.md, "Events")."""

    #: Events raised while someone was subscribed to them.
    raised: Counter
    #: Notifications sent, one a subscriber.
    delivered: Counter
    #: Notifications that could not be sent (subscriber gone, its queue full, too big).
    dropped: Counter
    #: Subscriptions refused: every row of the table held a live subscriber.
    refused: Counter

    @classmethod
    def declare(cls, stats: Statistics, subscribers: Callable[[], int]) -> EventStats:
        """Declare them (and ``subscribers``, the live ones, counted when read)."""
        names = cls.__dataclass_fields__
        declared = cls(**{name: stats.counter(f"{STATS_GROUP}:{name}") for name in names})
        stats.function(f"{STATS_GROUP}:subscribers", subscribers)
        return declared


class EventPublisher:
    """Raises ``events`` to the subscribers in ``table`` through ``delivery``."""

    def __init__(
        self,
        events: Events,
        table: SubscriptionTable,
        delivery: Delivery,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.table = table
        self.delivery = delivery
        self._clock = clock
        self.stats = EventStats.declare(events.stats, self._live_count)
        self._lock = threading.Lock()

    def now(self) -> int:
        """The current second, as subscriptions count time."""
        return int(self._clock())

    def publish(self, event: Event, params: EventParams) -> int:
        subscribers = self.table.live(event.id, self.now())
        if not subscribers:
            return 0
        return self.deliver(event, encode_notification(event.name, params), subscribers)

    def deliver(self, event: Event, datagram: bytes, subscribers: Sequence[Subscriber]) -> int:
        """Send an encoded notification to ``subscribers``, counted; how many it reached."""
        with self._lock:
            reached = self.delivery.send(event.name, datagram, subscribers)
            self.stats.raised.inc()
            self.stats.delivered.inc(reached)
            self.stats.dropped.inc(len(subscribers) - reached)
        return reached

    def destination(self, address: UnixAddress | UdpAddress) -> Destination:
        """Where ``address`` delivers: a UDP host name is resolved now (``OSError``)."""
        if isinstance(address, UnixAddress):
            return Destination.unix(address)
        return self.delivery.resolve(address)

    def _live_count(self) -> int:
        return self.table.count(self.now())
