"""One worker's loop: read a batch -> dispatch each -> reply to the batch, until told to stop.

Several workers (forked by the supervisor) block in a receive on the one shared socket; the
kernel wakes exactly one of them per datagram, so there is no thundering herd. A woken
worker takes every datagram already waiting (up to ``batchio.SLOTS``) with one
``recvmmsg()`` and sends their replies ``FLUSH`` at a time with ``sendmmsg()``
(``midgram.server.batchio``), so under load a request costs less than the two syscalls of a bare
echo loop. Each datagram
goes through ``Dispatcher.answer``, whose common case is one flat function.

The socket's ``SO_RCVTIMEO`` wakes an idle worker a few times a second to look at its stop
flag and its log level. While a reply waits for a client whose queue is full
(``socket_timeout``), the worker polls instead, with a timeout that is the next retry, so it
keeps serving everyone else.

With tracing on (``Tracing``) or debug logging, each datagram of a batch is served on its
own, reply included: the request's HEP trace goes once the command has run and the reply's
once the reply is sent, as OpenSIPS does. With both off, they cost one check per batch.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from midgram.engine.dispatch import Dispatcher, Outcome, Pending, Status
from midgram.engine.runtime import apply_log_level
from midgram.engine.stats import Counter, Statistics
from midgram.engine.tracing import Tracer
from midgram.errors import TransportError
from midgram.logs import RateLimitedLog, peer_label, shown
from midgram.server.batchio import BatchIO, Datagram, Leftover, NativeIO, Reply, batch_io
from midgram.server.budget import SendBudget
from midgram.server.inflight import AsyncCalls
from midgram.server.supervisor import IN_HAND_MAX, held, hold, let_go
from midgram.server.transport import (
    RECV_TIMEOUT,
    WITHHELD,
    HepSender,
    PeerAddress,
    ReplySender,
    SendStatus,
)
from midgram.wire.jsonrpc import INTERNAL_ERROR_REPLY

__all__ = ["ServerStats", "Tracing", "Worker", "source_filter"]

log = logging.getLogger(__name__)

GROUP: Final = "mi_datagram"
#: Reads (batches) served back to back between two housekeeping checks.
BURST: Final = 64
#: Replies sent together while a batch is served. The first replies of a batch reach their
#: clients while the rest is served, so a busy client's next requests are already waiting
#: when the batch is done: a worker that replied only then would find the socket empty and
#: sleep once a batch, and each sleep and wake-up costs more than the syscalls batching
#: saves. Measured with bench/ (uptime, 8 and 64 in flight): 1 and 2 did best, 4 and 8
#: worse, a whole batch worst.
FLUSH: Final = 2
_DROPPED: Final = SendStatus.DROPPED


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
    withheld_replies: Counter
    stuck_requests: Counter
    refused: Counter
    traced: Counter

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


@dataclass(frozen=True)
class Tracing:
    """What a worker traces with: the packets' builder and the collector's sender."""

    tracer: Tracer
    sender: HepSender


def source_filter(networks: Sequence[str]) -> Callable[[Any], bool] | None:
    """``allow_from`` (docs/compatibility.md, difference 9): which UDP peers may send.
    None: everyone."""
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
        tracing: Tracing | None = None,
        io: BatchIO | None = None,
        in_hand: memoryview | None = None,
        worker_timeout: float = 0.0,
    ) -> None:
        self.sock = sock
        self.dispatcher = dispatcher
        self.stats = stats
        # in_hand (WorkerStates): where each datagram is noted before it is answered, for
        # the supervisor to name the one that killed this process, if one ever does.
        self._in_hand = in_hand
        # Unread UNIX replies stay charged to the socket: big ones meet its budget.
        budget = SendBudget(sock) if sock.family == socket.AF_UNIX else None
        big = budget.small if budget is not None else None
        self.io = (
            io if io is not None else batch_io(sock, dispatcher.buf_size, in_hand=in_hand, big=big)
        )
        self._log = RateLimitedLog(log)
        self.sender = ReplySender(sock, socket_timeout_ms, on_drop=self._dropped, budget=budget)
        self._allowed = allowed
        self._log_level = log_level
        self._applied_level: int | None = None
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._on_stop_requested = on_stop_requested
        self._stop_requested = stop_requested
        self._tracing = tracing
        self._by_status = stats.by_status()
        # Bound once: these run for every datagram or batch.
        self._recv = self.io.recv
        self._send_batch = self.io.send
        self._send = self.sender.send
        self._handle = dispatcher.handle
        self._answer = dispatcher.answer_function(self.io.fast_answer)
        # The native loop serves a batch's common case in C: only without what needs each
        # datagram in Python (tracing, allow_from; debug logging is checked per batch).
        self._native = self.io if isinstance(self.io, NativeIO) else None
        self._plain = tracing is None and allowed is None
        self._received = stats.received.inc
        self._replied = stats.replied.inc
        self._readable = (sock,)
        self._fd = sock.fileno()
        # async def calls run beside the rest (midgram.server.inflight), replied to as they
        # complete.
        self._worker_timeout = worker_timeout
        self._calls = AsyncCalls(self.finish, self._stuck, timeout=worker_timeout, in_hand=in_hand)
        # How long a wait runs the calls at most: the socket's own wake-up, and often enough
        # that a healthy worker's record never looks older than worker_timeout.
        self._tick = min(RECV_TIMEOUT, worker_timeout / 4) if worker_timeout else RECV_TIMEOUT

    def run(self, should_stop: Callable[[], bool]) -> None:
        """The loop. Returns when ``should_stop()`` is true; replies still queued get up to
        their own ``socket_timeout`` to go out.

        Housekeeping (the stop flag, a ``kill``, the log level) runs between bursts of up
        to ``BURST`` datagrams, and whenever the socket is idle, not once a request.
        """
        try:
            while not should_stop():
                if self._stop_requested() and self._on_stop_requested is not None:
                    self._on_stop_requested()
                self._follow_log_level()
                try:
                    self._burst()
                except TransportError:
                    raise  # the socket itself failed: nothing to serve any more
                except Exception as exc:
                    self._survive(exc)
            self._calls.drain(self._tick)  # answered before the worker stops
            self._flush()
        finally:
            self._calls.close()  # a later run() makes a new loop

    def _survive(self, error: Exception) -> None:
        """What escaped serving a batch (the steps of each datagram have their own guard,
        ``_failed``): a bug, logged with the datagram in hand if known, never a reason to
        stop serving everyone else. The rest of that batch is lost."""
        what = "a batch"
        if self._in_hand is not None:
            in_hand = held(self._in_hand)
            let_go(self._in_hand)
            if in_hand is not None:
                what = f"a datagram of {in_hand[0]} bytes: {shown(in_hand[1], IN_HAND_MAX)}"
        self._log_bug(error, what)

    def _failed(self, error: Exception, data: bytes) -> bytes:
        """What escaped serving one datagram (a bug): logged, and answered as OpenSIPS
        answers a reply it cannot build; the rest of the batch is served as usual."""
        self._log_bug(error, f"a datagram of {len(data)} bytes: {shown(data)}")
        return INTERNAL_ERROR_REPLY

    def _log_bug(self, error: Exception, what: str) -> None:
        self._log.log(
            ("bug", type(error)),
            logging.ERROR,
            "serving %s failed: the worker goes on",
            what,
            exc_info=(type(error), error, error.__traceback__),
        )

    def _burst(self) -> None:
        serve_once = self.serve_once
        for _ in range(BURST):
            if not serve_once():
                return

    def serve_once(self) -> bool:
        """Wait for datagrams (bounded by SO_RCVTIMEO or the next retry) and serve those
        read. False when none came, or when a ``kill`` asks for housekeeping at once."""
        if self._calls:
            return self._serve_beside_calls()
        if self.sender.pending():
            batch = self._poll_then_recv(self.sender.next_retry_in())
            self.sender.retry_due()
        elif self._native is not None and self._plain and not self._debug:
            return self._serve_native(self._native)
        else:
            batch = self._recv(True)
        if not batch:
            return False
        self.serve_batch(batch)
        return not self._stop_requested()

    def in_flight(self) -> int:
        """How many ``async def`` calls are running (their replies still to come)."""
        return len(self._calls)

    def _serve_beside_calls(self) -> bool:
        """``serve_once`` while async calls are in flight: the loop runs them until the socket
        is readable (or one completes, or the next retry is due), then what is there is read
        without blocking. At ``ASYNC_MAX`` calls, nothing is read until one completes."""
        wait = self._tick
        retry = self.sender.next_retry_in()
        if retry is not None:
            wait = min(wait, retry)
        room = not self._calls.full
        readable = self._calls.wait(self._fd if room else None, wait)
        self.sender.retry_due()
        if not readable:
            return False
        if self._native is not None and self._plain and not self._debug:
            return self._serve_native(self._native, block=False)
        batch = self._recv(False)
        if not batch:
            return False
        self.serve_batch(batch)
        return not self._stop_requested()

    def _serve_native(self, io: NativeIO, block: bool = True) -> bool:
        """``serve_batch`` with its loop in C (``NativeIO.serve``); Python finishes the rest."""
        received, replied, leftovers = io.serve(self._answer, block, FLUSH, self._settle_now)
        if not received:
            return False
        self._received(received)
        if leftovers is not None:
            replied += self._finish(leftovers)
        if replied:
            self._replied(replied)
        return not self._stop_requested()

    def _settle_now(self, data: bytes, handled: Outcome | Pending | None) -> bytes | Pending | None:
        """For the native loop, in the batch's order: the reply to a datagram whose answer is
        an Outcome, or that was truncated (``handled`` None); a Pending comes back as it is,
        a leftover that ``_finish`` starts (its reply comes when it completes)."""
        try:
            if handled is None:
                handled = self.dispatcher.handle_oversize(len(data))
            if type(handled) is Pending:
                return handled
            return self._count(handled)  # type: ignore[arg-type]
        except Exception as exc:
            return self._failed(exc, data)

    def _finish(self, leftovers: list[Leftover]) -> int:
        """The replies the native loop could not send (refused, to an unbound client, and
        every one after a refused one), in order, through ReplySender; how many went (or
        wait). With ``settle`` given, a leftover always carries its reply's bytes."""
        replied = 0
        for data, peer, _truncated, reply in leftovers:
            if type(reply) is Pending:
                self._calls.start(reply, peer, data)
            elif self._send(reply, peer) is not _DROPPED:
                replied += 1
        return replied

    def _reply_of(
        self, handled: bytes | Outcome | Pending | None, peer: PeerAddress, data: bytes
    ) -> bytes | None:
        """The reply to send now for what dispatching gave (counting its outcome), if any;
        an async call is started, and replied to when it completes."""
        if handled is None or isinstance(handled, bytes):
            return handled
        if type(handled) is Pending:
            self._calls.start(handled, peer, data)
            return None
        return self._count(handled)  # type: ignore[arg-type]

    def serve_batch(self, batch: list[Datagram]) -> None:
        """Serve datagrams read together; their replies go out together, in order."""
        self._received(len(batch))
        if self._tracing is not None or self._debug:
            self._serve_each(batch)
            return
        answer = self._answer
        allowed = self._allowed
        in_hand = self._in_hand
        replies: list[Reply] = []
        handled: bytes | Outcome | Pending
        for data, peer, truncated in batch:
            if allowed is not None and self._refused(peer):
                continue
            if in_hand is not None:
                hold(in_hand, data)
            try:
                # bytes in the common case: an OK reply, nothing to count
                handled = self.dispatcher.handle_oversize(len(data)) if truncated else answer(data)
                reply = (
                    handled if isinstance(handled, bytes) else self._reply_of(handled, peer, data)
                )
            except Exception as exc:
                reply = self._failed(exc, data)
            if reply is None:
                continue
            replies.append((reply, peer))
            if len(replies) == FLUSH:
                self._reply(replies)
                replies = []
        if replies:
            self._reply(replies)
        if in_hand is not None:
            let_go(in_hand)

    def _serve_each(self, batch: list[Datagram]) -> None:
        """Tracing or debug logging: each datagram on its own, its reply sent before the next."""
        in_hand = self._in_hand
        for data, peer, truncated in batch:
            if in_hand is not None:
                hold(in_hand, data)
            try:
                handled = self._admit(data, peer, truncated)
                if type(handled) is Pending:
                    self._calls.start(handled, peer, data)
                elif handled is not None:
                    self.finish(handled, peer)  # type: ignore[arg-type]
            except Exception as exc:
                self._send(self._failed(exc, data), peer)
        if in_hand is not None:
            let_go(in_hand)

    def dispatch(self, data: bytes, peer: PeerAddress, truncated: bool) -> Outcome | Pending | None:
        """Count, admit and dispatch one datagram (None: refused by ``allow_from``)."""
        self._received()
        return self._admit(data, peer, truncated)

    def _admit(self, data: bytes, peer: PeerAddress, truncated: bool) -> Outcome | Pending | None:
        if self._refused(peer):
            return None
        if truncated:
            return self.dispatcher.handle_oversize(len(data))
        return self._handle(data)

    def _refused(self, peer: PeerAddress) -> bool:
        """``allow_from``: whether to ignore a datagram from ``peer`` (counted and logged)."""
        if self._allowed is None or self._allowed(peer):
            return False
        self.stats.refused.inc()
        # Any sender can repeat this: one line per interval, counting the rest.
        self._log.log(
            "refused",
            logging.WARNING,
            "ignoring a datagram from %s: not in allow_from",
            peer_label(peer),
        )
        return True

    def _count(self, outcome: Outcome) -> bytes | None:
        """Add the outcome to its statistic; its reply."""
        count = self._by_status.get(outcome.status)
        if count is not None:
            count()
        return outcome.reply

    def _reply(self, replies: list[Reply]) -> None:
        """Send a batch's replies: all at once while no client's queue is full; from the first
        one that could not go, through the ReplySender (queue, retry, drop, log), in order."""
        sent = 0 if self.sender.pending() else self._send_batch(replies, 0)
        replied = sent
        send = self._send
        for index in range(sent, len(replies)):
            data, peer = replies[index]
            if send(data, peer) is not _DROPPED:
                replied += 1
        if replied:
            self._replied(replied)

    def finish(self, outcome: Outcome, peer: PeerAddress) -> None:
        """Count the outcome and send its reply."""
        reply = self._count(outcome)
        if self._debug:
            log.debug(
                "%s from %s: %s", shown(outcome.method), peer_label(peer), outcome.status.value
            )
        if self._tracing is not None:
            self._finish_traced(self._tracing, outcome, peer)
            return
        if reply is not None and self._send(reply, peer) is not _DROPPED:
            self._replied()

    def _finish_traced(self, tracing: Tracing, outcome: Outcome, peer: Any) -> None:
        """``finish`` with HEP traces: the request's before the reply goes out, the reply's
        after, as sent (``500 Internal error`` when it could not be, as OpenSIPS traces a
        failed send). A reply queued for a slow client counts as sent."""
        tracer = tracing.tracer
        trace = tracer.request(outcome, peer, time.time_ns())
        if trace is not None:
            self._hep(tracing, trace.packet)
        reply = outcome.reply
        if reply is None:
            return
        sent = self._send(reply, peer) is not _DROPPED
        if sent:
            self._replied()
        if trace is not None:
            traced = reply if sent else INTERNAL_ERROR_REPLY
            self._hep(tracing, tracer.reply(trace, traced, time.time_ns()))

    def _hep(self, tracing: Tracing, packet: bytes) -> None:
        if tracing.sender.send(packet):
            self.stats.traced.inc()

    def _stuck(self, pending: Pending, data: bytes) -> None:
        """An async call ran past worker_timeout: cancelled, answered by nobody."""
        self.stats.stuck_requests.inc()
        self._log.log(
            "stuck",
            logging.ERROR,
            "an async call ran past worker_timeout (%g s): cancelled, nobody answers it: "
            "a datagram of %d bytes: %s",
            self._worker_timeout,
            len(data),
            shown(data),
        )

    def _poll_then_recv(self, wait: float | None) -> list[Datagram]:
        # select(), not poll(): its timeout has microsecond resolution, so the first retries
        # for a client whose queue was full (tens of microseconds) are not rounded up to a
        # millisecond, which is what a busy client's latency would pay.
        readable, _, _ = select.select(self._readable, (), (), wait)
        if readable:
            return self._recv(False)
        return []

    def _flush(self) -> None:
        """On the way out: keep retrying queued replies until each one's deadline."""
        while self.sender.pending():
            wait = self.sender.next_retry_in()
            if wait:
                select.select([], [], [], wait)
            self.sender.retry_due()

    def _dropped(self, reason: str) -> None:
        self.stats.dropped_replies.inc()
        if reason in WITHHELD:
            self.stats.withheld_replies.inc()

    def _follow_log_level(self) -> None:
        if self._log_level is None:
            return
        level = self._log_level()
        if level != self._applied_level:
            apply_log_level(level)
            self._applied_level = level
            self._debug = log.isEnabledFor(logging.DEBUG)
