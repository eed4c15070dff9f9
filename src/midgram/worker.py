"""One worker's loop: recv -> dispatch -> reply, until told to stop.

Several workers (forked by the supervisor) block in ``recvfrom`` on the one shared socket;
the kernel wakes exactly one of them per datagram, so there is no thundering herd and each
request costs the same two syscalls as a bare echo loop. The socket's ``SO_RCVTIMEO``
wakes an idle worker a few times a second to look at its stop flag and its log level.
While a reply waits for a client whose queue is full (``socket_timeout``), the worker polls
instead, with a timeout that is the next retry, so it keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from midgram.commands import Dispatcher, Outcome, Pending, Status
from midgram.runtime import apply_log_level
from midgram.stats import Counter, Statistics
from midgram.transport import Receiver, ReplySender, SendStatus

__all__ = ["ServerStats", "Worker", "source_filter"]

log = logging.getLogger(__name__)

GROUP: Final = "mi_datagram"


@dataclass(frozen=True)
class ServerStats:
    """The server's own statistics, group ``mi_datagram``."""

    received: Counter
    replied: Counter
    parse_errors: Counter
    oversize_requests: Counter
    invalid_requests: Counter
    unknown_methods: Counter
    command_errors: Counter
    oversize_replies: Counter
    dropped_replies: Counter
    refused: Counter

    @classmethod
    def declare(cls, stats: Statistics) -> ServerStats:
        names = cls.__dataclass_fields__
        return cls(**{name: stats.counter(f"{GROUP}:{name}") for name in names})

    def by_status(self) -> dict[Status, Callable[[], None]]:
        """The counter each outcome adds to (lookup table, not an if/elif chain)."""
        return {
            Status.PARSE_ERROR: self.parse_errors.inc,
            Status.OVERSIZE: self.oversize_requests.inc,
            Status.INVALID_REQUEST: self.invalid_requests.inc,
            Status.UNKNOWN_METHOD: self.unknown_methods.inc,
            Status.INVALID_PARAMS: self.command_errors.inc,
            Status.COMMAND_ERROR: self.command_errors.inc,
            Status.SERVER_ERROR: self.command_errors.inc,
            Status.REPLY_TOO_BIG: self.oversize_replies.inc,
        }


def source_filter(networks: Sequence[str]) -> Callable[[Any], bool] | None:
    """``allow_from`` (DESIGN.md difference 9): which UDP peers may send. None: everyone."""
    if not networks:
        return None
    parsed = [ipaddress.ip_network(net) for net in networks]

    def allowed(peer: Any) -> bool:
        try:
            address = ipaddress.ip_address(peer[0])
        except (ValueError, TypeError, IndexError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in parsed)

    return allowed


class Worker:
    """Serves datagrams from ``sock`` until ``should_stop()`` says so."""

    def __init__(
        self,
        sock: socket.socket,
        dispatcher: Dispatcher,
        stats: ServerStats,
        *,
        socket_timeout_ms: int,
        allowed: Callable[[Any], bool] | None = None,
        log_level: Callable[[], int] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sock = sock
        self.dispatcher = dispatcher
        self.stats = stats
        self.receiver = Receiver(sock, dispatcher.buf_size)
        self.sender = ReplySender(sock, socket_timeout_ms, on_drop=self._dropped)
        self._allowed = allowed
        self._log_level = log_level
        self._applied_level: int | None = None
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._on_stop_requested = on_stop_requested
        self._stop_requested = stop_requested
        self._count = stats.by_status()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def run(self, should_stop: Callable[[], bool]) -> None:
        """The loop. Returns when ``should_stop()`` is true; replies still queued get up to
        their own ``socket_timeout`` to go out."""
        try:
            while not should_stop():
                self._follow_log_level()
                self.serve_once()
            self._flush()
        finally:
            if self._loop is not None:
                self._loop.close()

    def serve_once(self) -> None:
        """Wait for one datagram (bounded by SO_RCVTIMEO or the next retry) and serve it."""
        if self.sender.pending():
            item = self._poll_then_recv(self.sender.next_retry_in())
            self.sender.retry_due()
        else:
            item = self.receiver.recv(block=True)
        if item is not None:
            self.serve(*item)

    def serve(self, data: bytes, peer: Any, truncated: bool) -> None:
        """One datagram: dispatch it, send the reply, count what happened."""
        handled = self.dispatch(data, peer, truncated)
        if handled is None:
            return
        self.finish(handled if type(handled) is Outcome else self._await(handled), peer)  # type: ignore[arg-type]

    def dispatch(self, data: bytes, peer: Any, truncated: bool) -> Outcome | Pending | None:
        """Admit and dispatch one datagram (None: refused by ``allow_from``)."""
        self.stats.received.inc()
        if self._allowed is not None and not self._allowed(peer):
            self.stats.refused.inc()
            log.warning("ignoring a datagram from %s: not in allow_from", peer)
            return None
        if truncated:
            return self.dispatcher.handle_oversize(len(data))
        return self.dispatcher.handle(data)

    def finish(self, outcome: Outcome, peer: Any) -> None:
        """Count the outcome, send its reply, and act on a ``kill``."""
        count = self._count.get(outcome.status)
        if count is not None:
            count()
        if self._debug:
            log.debug("%s from %s: %s", outcome.method, peer, outcome.status.value)
        if outcome.reply is not None and (
            self.sender.send(outcome.reply, peer) is not SendStatus.DROPPED
        ):
            self.stats.replied.inc()
        if self._stop_requested() and self._on_stop_requested is not None:
            self._on_stop_requested()

    def _await(self, pending: Pending) -> Outcome:
        """Run an ``async def`` command to completion on this worker's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            result = self._loop.run_until_complete(pending.coroutine)
        except Exception as exc:
            return pending.finish(error=exc)
        return pending.finish(result)

    def _poll_then_recv(self, wait: float | None) -> tuple[bytes, Any, bool] | None:
        # Round up: a wait under a millisecond must not become a busy poll(0) loop.
        timeout_ms = -1 if wait is None else max(0, math.ceil(wait * 1000))
        if self._poller.poll(timeout_ms):
            return self.receiver.recv(block=False)
        return None

    def _flush(self) -> None:
        """On the way out: keep retrying queued replies until each one's deadline."""
        while self.sender.pending():
            wait = self.sender.next_retry_in()
            if wait:
                select.select([], [], [], wait)
            self.sender.retry_due()

    def _dropped(self, reason: str) -> None:
        self.stats.dropped_replies.inc()

    def _follow_log_level(self) -> None:
        if self._log_level is None:
            return
        level = self._log_level()
        if level != self._applied_level:
            apply_log_level(level)
            self._applied_level = level
            self._debug = log.isEnabledFor(logging.DEBUG)
