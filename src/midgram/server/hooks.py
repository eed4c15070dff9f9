"""Where features plug into the worker's batch loop (``midgram.server.worker``).

The loop calls two kinds of hook, from its one reference path:

- **admission**, for each datagram before it is dispatched: ``allow_from`` (docs/
  compatibility.md, difference 9), and any later rule that decides by who sends. A refused
  datagram is not answered; the loop counts it (``mi_datagram:refused``) and logs it, at most
  once per interval and rule, with the rule's reason.
- **observation**, for each outcome: :meth:`Observer.seen` once the command has run, before
  its reply goes out, and :meth:`Observer.replied` once the reply went out (or could not).
  HEP tracing (the request's trace before the reply, the reply's after, as OpenSIPS does)
  and debug logging (one line a datagram) are observers.

A loop with no hook serves each batch on the fast path (``BatchSocket.serve``, in C), which
calls none; the first hook turns it to the reference path, where each datagram of a batch is
served on its own. An observed one goes out with its reply before the next is dispatched, so
that its traces stay in order.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from midgram.engine.access import in_networks
from midgram.engine.dispatch import Outcome
from midgram.engine.tracing import Trace, Tracer
from midgram.logs import peer_label, shown
from midgram.server.transport import HepSender, PeerAddress
from midgram.wire.jsonrpc import INTERNAL_ERROR_REPLY

__all__ = ["Admission", "DebugLog", "Observer", "Tracing", "allow_from", "observing"]


@dataclass(frozen=True)
class Admission:
    """A rule each datagram must pass to be dispatched."""

    #: Whether a datagram from this peer may be served.
    allows: Callable[[PeerAddress], bool]
    #: Why a refused one is ignored, as its log line says it.
    reason: str


def allow_from(networks: Sequence[str]) -> Admission | None:
    """``allow_from`` (docs/compatibility.md, difference 9): the UDP peers that may send.
    None: everyone."""
    if not networks:
        return None
    parsed = tuple(ipaddress.ip_network(net) for net in networks)
    return Admission(lambda peer: in_networks(parsed, peer), "not in allow_from")


class Observer(Protocol):
    """Told of each outcome the loop serves, reply included."""

    def seen(self, outcome: Outcome, peer: PeerAddress) -> Any:
        """The command has run (or the datagram was refused by dispatching, or is a
        notification); its reply, if any, goes out next. What this returns is given back
        to ``replied``."""

    def replied(self, seen: Any, reply: bytes, sent: bool) -> None:
        """The reply went out (``sent``; queued for a slow client counts), or was dropped."""


class _Together:
    """Several observers as one, told in their order."""

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self._observers = observers

    def seen(self, outcome: Outcome, peer: PeerAddress) -> list[Any]:
        return [observer.seen(outcome, peer) for observer in self._observers]

    def replied(self, seen: list[Any], reply: bytes, sent: bool) -> None:
        for observer, observed in zip(self._observers, seen, strict=True):
            observer.replied(observed, reply, sent)


def observing(observers: Sequence[Observer]) -> Observer | None:
    """The observer the loop tells: None for none, the one itself (most often: tracing, or
    debug logging), or several together."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return _Together(tuple(observers))


class DebugLog:
    """Debug logging: a line for each outcome, on the loop's logger (while it is at DEBUG)."""

    def __init__(self, log: logging.Logger) -> None:
        self._debug = log.debug

    def seen(self, outcome: Outcome, peer: PeerAddress) -> None:
        self._debug("%s from %s: %s", shown(outcome.method), peer_label(peer), outcome.status.value)

    def replied(self, seen: None, reply: bytes, sent: bool) -> None:
        pass


@dataclass(frozen=True)
class Tracing:
    """HEP tracing (``trace_destination``): what a worker traces with, the packets' builder
    and the collector's sender, and what counts a trace sent (``mi_datagram:traced``)."""

    tracer: Tracer
    sender: HepSender
    counted: Callable[[int], None]

    def seen(self, outcome: Outcome, peer: PeerAddress) -> Trace | None:
        """The request's trace, before its reply goes out (None: not traced)."""
        trace = self.tracer.request(outcome, peer, time.time_ns())
        if trace is not None:
            self.send(trace.packet)
        return trace

    def replied(self, seen: Trace | None, reply: bytes, sent: bool) -> None:
        """The reply's trace, as sent: ``500 Internal error`` when it could not be, as
        OpenSIPS traces a failed send."""
        if seen is not None:
            traced = reply if sent else INTERNAL_ERROR_REPLY
            self.send(self.tracer.reply(seen, traced, time.time_ns()))

    def close(self) -> None:
        self.sender.close()

    def send(self, packet: bytes) -> None:
        """Send one packet to the collector, counted when it went."""
        if self.sender.send(packet):
            self.counted(1)
