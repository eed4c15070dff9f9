"""The worker's batch loop: read a batch -> dispatch each -> reply to the batch.

One loop serves every way midgram serves: the forked workers and ``children_count = 0``
drive it with a blocking receive (:meth:`Worker.run`), ``AsyncServer`` from its event loop's
reader callback (:meth:`Worker.serve_ready`, without blocking).

Several workers (forked by the supervisor) block in a receive on the one shared socket; the
kernel wakes exactly one of them per datagram, so there is no thundering herd. A woken
worker takes every datagram already waiting (up to ``batchio.SLOTS``) with one
``recvmmsg()`` and sends their replies ``FLUSH`` at a time with ``sendmmsg()``
(``midgram.server.batchio``), so under load a request costs less than the two syscalls of a
bare echo loop.

A batch is served one of two ways, counted and replied to by the same code:

- the reference path (:meth:`Worker.serve_batch`): each datagram held (``WorkerStates``),
  admitted, dispatched, observed (``midgram.server.hooks``: ``allow_from``, tracing, debug
  logging plug in there), its reply sent ``FLUSH`` at a time, or on its own when observed;
- the fast path (``BatchSocket.serve``, in C): the same loop for a worker with no hook, while
  no reply waits for a slow client; Python settles what is not an OK reply. A worker whose
  one hook is HEP tracing has it too (``BatchSocket.serve_traced``): C serves and traces a
  call without params answered OK, and hands anything else to the reference path's steps.

The socket's ``SO_RCVTIMEO`` wakes an idle worker every ``IDLE_WAKEUP`` to look at its stop
flag and its log level. While a reply waits for a client whose queue is full
(``socket_timeout``), or ``async def`` calls are in flight (``midgram.server.inflight``), the
worker waits in ``select`` or its event loop instead, with a timeout that is the next retry,
so it keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from midgram.engine.access import Credentials
from midgram.engine.dispatch import Answer, Dispatcher, Guarded, Outcome, Pending, Status
from midgram.engine.runtime import apply_log_level
from midgram.engine.stats import Counter, Statistics
from midgram.errors import TransportError
from midgram.logs import RateLimitedLog, peer_label, shown
from midgram.server.batchio import (
    BatchIO,
    Datagram,
    Leftover,
    NativeIO,
    Reply,
    TraceHooks,
    batch_io,
)
from midgram.server.budget import SendBudget
from midgram.server.hooks import Admission, DebugLog, Observer, Tracing, observing
from midgram.server.inflight import AsyncCalls
from midgram.server.supervisor import IN_HAND_MAX, held, hold, let_go
from midgram.server.transport import (
    WITHHELD,
    PeerAddress,
    ReplySender,
    SendStatus,
    passes_credentials,
)
from midgram.wire.jsonrpc import INTERNAL_ERROR_REPLY

__all__ = ["IDLE_WAKEUP", "ServerStats", "Worker"]

log = logging.getLogger(__name__)

GROUP: Final = "mi_datagram"
#: How often an idle worker wakes up (the socket's SO_RCVTIMEO, set before the fork) to look
#: at its stop flag and its log level.
IDLE_WAKEUP: Final = 0.2
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
    denied: Counter

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
            Status.FORBIDDEN: self.denied.inc,
        }


class _NativeTracing(NamedTuple):
    """The fast path of a worker that traces (``NativeIO.serve_traced``)."""

    io: NativeIO
    hooks: TraceHooks
    #: Counts the packets the native loop sent (``mi_datagram:traced``).
    counted: Callable[[int], None]


class _Dispatching(NamedTuple):
    """What the loop asks of the ``Dispatcher``: its entry points are named here only."""

    #: A datagram's answer: the reply's bytes in the common case (OK, nothing to count).
    answer: Answer
    #: The same, always an Outcome (or a Pending, or a Guarded to run): for the observers,
    #: who need one each.
    handle: Callable[[bytes], Outcome | Pending | Guarded]
    #: What a datagram larger than the buffer gets.
    oversize: Callable[[int], Outcome]


def _dispatching(dispatcher: Dispatcher, io: BatchIO) -> _Dispatching:
    return _Dispatching(
        dispatcher.answer_function(io.fast_answer), dispatcher.handle, dispatcher.handle_oversize
    )


class Worker:
    """Serves the datagrams of ``sock``: :meth:`run` until told to stop, or a batch at a time
    (:meth:`serve_ready`) for a driver of its own.

    ``admission`` and ``observers``: the hooks (``midgram.server.hooks``). ``in_hand``: where
    each datagram is noted before it is answered (``WorkerStates``), for the supervisor to
    name the one that killed this process, or held it past ``worker_timeout``. ``log_level``:
    the level to follow (the process table's row), ``stop_requested``: whether the ``kill``
    command was served, and ``on_stop_requested`` what to do then. ``event_loop`` and
    ``on_reply_waits``: for a driver that runs the async calls and retries itself
    (``AsyncServer``).
    """

    def __init__(
        self,
        sock: socket.socket,
        dispatcher: Dispatcher,
        stats: ServerStats,
        *,
        socket_timeout_ms: int,
        admission: Sequence[Admission] = (),
        observers: Sequence[Observer] = (),
        log_level: Callable[[], int] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        io: BatchIO | None = None,
        in_hand: memoryview | None = None,
        worker_timeout: float = 0.0,
        event_loop: asyncio.AbstractEventLoop | None = None,
        on_reply_waits: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        self.stats = stats
        self._in_hand = in_hand
        # Unread UNIX replies stay charged to the socket: big ones meet its budget.
        budget = SendBudget(sock) if sock.family == socket.AF_UNIX else None
        big = budget.small if budget is not None else None
        # The senders' credentials are read when the socket passes them: when an acl rule
        # names users or groups (wiring).
        self._credentials = passes_credentials(sock)
        self.io = (
            io
            if io is not None
            else batch_io(
                sock,
                dispatcher.buf_size,
                in_hand=in_hand,
                big=big,
                credentials=self._credentials,
            )
        )
        self._log = RateLimitedLog(log)
        self.sender = ReplySender(
            sock, socket_timeout_ms, on_drop=self._dropped, budget=budget, on_wait=on_reply_waits
        )
        self._dispatching = _dispatching(dispatcher, self.io)
        self._admission = tuple(admission)
        self._observing = tuple(observers)
        self._debug_log = DebugLog(log)
        self._log_level = log_level
        self._applied_level: int | None = None
        self._on_stop_requested = on_stop_requested
        self._stop_requested = stop_requested
        self._by_status = stats.by_status()
        # Bound once: these run for every datagram or batch.
        self._recv = self.io.recv
        self._send_batch = self.io.send
        self._send = self.sender.send
        self._received = stats.received.inc
        self._replied = stats.replied.inc
        self._readable = (sock,)
        self._fd = sock.fileno()
        self._worker_timeout = worker_timeout
        self._calls = AsyncCalls(
            self.finish, self._stuck, timeout=worker_timeout, in_hand=in_hand, loop=event_loop
        )
        # How long a wait runs the calls at most: the socket's own wake-up, and often enough
        # that a healthy worker's record never looks older than worker_timeout.
        self._tick = min(IDLE_WAKEUP, worker_timeout / 4) if worker_timeout else IDLE_WAKEUP
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._plug_hooks()

    def _plug_hooks(self) -> None:
        """Which path serves, from the hooks in place (debug logging comes and goes with the
        log level): the fast one only without any."""
        observer = observing(self._observing + ((self._debug_log,) if self._debug else ()))
        self._observer = observer
        observed = observer is not None
        self._answer = self._dispatching.handle if observed else self._dispatching.answer
        self._flush = 1 if observed else FLUSH
        plain = not observed and not self._admission
        self._fast = self.io if plain and isinstance(self.io, NativeIO) else None
        self._traced = None if self._admission else self._native_tracing(observer)

    def _native_tracing(self, observer: Observer | None) -> _NativeTracing | None:
        """The traced fast path, for a worker whose one hook is tracing, with the native
        module and a collector its socket could connect to, on a socket that does not pass
        its senders' credentials (the traced path does not read them: acl rules that name
        users or groups are checked on the reference path)."""
        io = self.io
        if not isinstance(observer, Tracing) or not isinstance(io, NativeIO):
            return None
        if self._credentials:
            return None
        if not observer.sender.connected:
            return None
        hooks = TraceHooks(
            observer.sender.fileno(),
            observer.tracer.bare,
            observer.tracer.reply,
            self._finish_traced,
            self._refused_traced,
            observer.send,
        )
        return _NativeTracing(io, hooks, observer.counted)

    # --- driven by a blocking receive: forked workers, children_count = 0 -----------------

    def run(
        self, should_stop: Callable[[], bool], *, chores: Sequence[Callable[[], object]] = ()
    ) -> None:
        """The loop. Returns when ``should_stop()`` is true; the async calls in flight
        complete and replies still queued get up to their own ``socket_timeout`` to go out.

        Housekeeping (``chores``, the ``kill`` command, the log level, then ``should_stop``)
        runs between bursts of up to ``BURST`` batches, and whenever the socket is idle, not
        once a request.
        """
        try:
            while True:
                for chore in chores:
                    chore()
                self.housekeeping()
                if should_stop():
                    break
                try:
                    self._burst()
                except TransportError:
                    raise  # the socket itself failed: nothing to serve any more
                except Exception as exc:
                    self.survive(exc)
            self._calls.drain(self._tick)  # answered before the worker stops
            self._flush_queued()
        finally:
            self._calls.close()  # a later run() makes a new loop

    def _burst(self) -> None:
        serve_once = self.serve_once
        for _ in range(BURST):
            if not serve_once():
                return

    def serve_once(self) -> bool:
        """Wait for datagrams (bounded by SO_RCVTIMEO, the next retry, or an async call
        completing) and serve those read. False when none came, or when a ``kill`` asks for
        housekeeping at once."""
        if self._calls or self.sender.pending():
            if not self._wait():
                return False
            received = self.serve_ready(block=False)
        elif self._fast is not None:  # serve_ready(block=True) without asking again
            received = self._serve_fast(self._fast, True)
        elif self._traced is not None:
            received = self._serve_traced(self._traced, True)
        else:
            received = self._serve_read(True)
        return received > 0 and not self._stop_requested()

    def _wait(self) -> bool:
        """Until the socket is readable or the next retry is due, running the async calls in
        flight meanwhile (then also until one completes, and at ``ASYNC_MAX`` calls without
        watching the socket); retries what is due. Whether the socket is readable."""
        wait = self.sender.next_retry_in()
        if self._calls:
            wait = self._tick if wait is None else min(wait, self._tick)
            readable = self._calls.wait(None if self._calls.full else self._fd, wait)
        else:
            # select(), not poll(): its timeout has microsecond resolution, so the first
            # retries for a client whose queue was full (tens of microseconds) are not rounded
            # up to a millisecond, which is what a busy client's latency would pay.
            readable = bool(select.select(self._readable, (), (), wait)[0])
        self.sender.retry_due(woken=readable)
        return readable

    def _flush_queued(self) -> None:
        """On the way out: keep retrying queued replies until each one's deadline."""
        while self.sender.pending():
            wait = self.sender.next_retry_in()
            if wait:
                select.select([], [], [], wait)
            self.sender.retry_due()

    def housekeeping(self) -> None:
        """Between bursts (and after each wake-up of ``AsyncServer``): relay a ``kill``, and
        follow the log level, which turns debug logging on and off."""
        if self._stop_requested() and self._on_stop_requested is not None:
            self._on_stop_requested()
        if self._log_level is not None:
            level = self._log_level()
            if level != self._applied_level:
                apply_log_level(level)
                self._applied_level = level
        debug = log.isEnabledFor(logging.DEBUG)
        if debug != self._debug:
            self._debug = debug
            self._plug_hooks()

    def in_flight(self) -> int:
        """How many ``async def`` calls are running (their replies still to come)."""
        return len(self._calls)

    def cancel_calls(self) -> list[asyncio.Task[None]]:
        """Cancel the async calls in flight (nobody answers them); their tasks, to await."""
        return self._calls.cancel()

    # --- one batch ----------------------------------------------------------------------

    def serve_ready(self, block: bool) -> int:
        """Read a batch (with ``block``, waiting for its first datagram up to the socket's
        SO_RCVTIMEO) and serve it; how many datagrams it had (0: none came). The fast path
        serves it when it can: no hook, and no reply waiting for its client (the C loop
        sends directly, and a client's replies must keep their order)."""
        if self.sender.pending():
            return self._serve_read(block)
        if self._fast is not None:
            return self._serve_fast(self._fast, block)
        if self._traced is not None:
            return self._serve_traced(self._traced, block)
        return self._serve_read(block)

    def _serve_read(self, block: bool) -> int:
        """The reference path's read: a batch for ``serve_batch``; its size."""
        batch = self._recv(block)
        if batch:
            self.serve_batch(batch)
        return len(batch)

    def serve_batch(self, batch: list[Datagram]) -> None:
        """The reference path: serve datagrams read together, in order; their replies go
        out ``FLUSH`` at a time, an observed one on its own."""
        self._received(len(batch))
        answer = self._answer
        admission = self._admission
        in_hand = self._in_hand
        flush = self._flush
        replies: list[Reply] = []
        handled: bytes | Outcome | Pending | Guarded
        for data, peer, truncated, credentials in batch:
            if in_hand is not None:
                hold(in_hand, data)
            try:
                if admission and self._refused(peer):
                    continue
                # bytes in the common case: an OK reply, nothing to count
                handled = self._dispatching.oversize(len(data)) if truncated else answer(data)
                reply = (
                    handled
                    if isinstance(handled, bytes)
                    else self._settle(handled, peer, data, credentials)
                )
            except Exception as exc:
                reply = self._failed(exc, data)
            if reply is None:
                continue
            replies.append((reply, peer))
            if len(replies) >= flush:
                self._reply(replies)
                replies = []
        if replies:
            self._reply(replies)
        if in_hand is not None:
            let_go(in_hand)

    def _settle(
        self,
        handled: Outcome | Pending | Guarded,
        peer: PeerAddress,
        data: bytes,
        credentials: Credentials | None,
    ) -> bytes | None:
        """The reply to send with the batch, if any: a guarded call is run (or refused) for
        its sender, an async call is started (replied to when it completes), an observed
        outcome is finished on its own."""
        settled = self._unguarded(handled, peer, credentials)
        if type(settled) is bytes:
            return settled
        if type(settled) is Pending:
            self._calls.start(settled, peer, data)
            return None
        if self._observer is not None:
            self.finish(settled, peer)  # type: ignore[arg-type]
            return None
        return self._count(settled)  # type: ignore[arg-type]

    def _unguarded(
        self,
        handled: Outcome | Pending | Guarded,
        peer: PeerAddress,
        credentials: Credentials | None,
    ) -> bytes | Outcome | Pending:
        """A guarded call run (or refused: ``403`` bytes) for its sender; anything else as
        it is. Both paths settle through here, so neither can skip the acl."""
        if type(handled) is Guarded:
            return handled.run(peer, credentials)
        return handled  # type: ignore[return-value]

    def _refused(self, peer: PeerAddress) -> bool:
        """Whether a rule refuses a datagram from ``peer`` (counted and logged)."""
        for rule in self._admission:
            if not rule.allows(peer):
                self.stats.refused.inc()
                # Any sender can repeat this: one line per interval, counting the rest.
                self._log.log(
                    ("refused", rule.reason),
                    logging.WARNING,
                    "ignoring a datagram from %s: %s",
                    peer_label(peer),
                    rule.reason,
                )
                return True
        return False

    def _serve_fast(self, io: NativeIO, block: bool) -> int:
        """``serve_batch`` with its loop in C (``NativeIO.serve``); Python settles what is not
        an OK reply (``_settle_native``) and sends what C left (``_send_leftovers``)."""
        received, replied, leftovers = io.serve(self._answer, block, FLUSH, self._settle_native)
        if received:
            self._received(received)
            if leftovers is not None:
                replied += self._send_leftovers(leftovers)
            if replied:
                self._replied(replied)
        return received

    def _settle_native(
        self,
        data: bytes,
        handled: Outcome | Pending | Guarded | None,
        peer: PeerAddress,
        credentials: Credentials | None,
    ) -> bytes | Pending | None:
        """For the fast path, in the batch's order: the reply to a datagram whose answer is
        an Outcome, or that was truncated (``handled`` None); a guarded call is run (or
        refused) for its sender first; a Pending comes back as it is, a leftover that
        ``_send_leftovers`` starts."""
        try:
            if handled is None:
                handled = self._dispatching.oversize(len(data))
            settled = self._unguarded(handled, peer, credentials)
            if type(settled) is bytes or type(settled) is Pending:
                return settled
            return self._count(settled)  # type: ignore[arg-type]
        except Exception as exc:
            return self._failed(exc, data)

    def _serve_traced(self, traced: _NativeTracing, block: bool) -> int:
        """``serve_batch`` for a traced worker, its common case in C
        (``NativeIO.serve_traced``), the rest through ``_finish_traced`` and
        ``_refused_traced``."""
        received, replied, sent = traced.io.serve_traced(
            self._dispatching.answer, block, FLUSH, traced.hooks
        )
        if received:
            self._received(received)
            if replied:
                self._replied(replied)
            if sent:
                traced.counted(sent)
        return received

    def _finish_traced(
        self,
        data: bytes,
        peer: PeerAddress,
        truncated: bool,
        handled: Outcome | Pending | Guarded | None,
    ) -> bool:
        """For the traced fast path, in the batch's order: a datagram it does not serve,
        served as ``serve_batch`` serves it (``handled`` None: not answered yet). Whether
        replies may still go out directly (none waits for its client)."""
        try:
            if handled is None:
                dispatching = self._dispatching
                handled = dispatching.oversize(len(data)) if truncated else dispatching.handle(data)
            # No credentials here: a socket that passes them is never served this way.
            reply = self._settle(handled, peer, data, None)
        except Exception as exc:
            reply = self._failed(exc, data)
        if reply is not None and self._send(reply, peer) is not _DROPPED:
            self._replied()
        return not self.sender.pending()

    def _refused_traced(self, seen: object, reply: bytes, peer: PeerAddress) -> bool:
        """For the traced fast path: a reply it could not send (refused by the kernel, too
        long for it, to an unbound client), sent or queued by ``ReplySender`` and traced
        as it went. Whether replies may still go out directly."""
        sent = self._send(reply, peer) is not _DROPPED
        if sent:
            self._replied()
        if self._observer is not None:
            self._observer.replied(seen, reply, sent)
        return not self.sender.pending()

    def _send_leftovers(self, leftovers: list[Leftover]) -> int:
        """What the fast path left (a reply it could not send: refused, to an unbound client,
        and every one after a refused one; an async call to start), in order; how many
        replies went (or wait)."""
        replied = 0
        for data, peer, _truncated, reply in leftovers:
            if type(reply) is Pending:
                self._calls.start(reply, peer, data)
            elif self._send(reply, peer) is not _DROPPED:
                replied += 1
        return replied

    # --- replies and counts -------------------------------------------------------------

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
        """One outcome served on its own (an async call that completed, an observed one):
        counted, its observers told, its reply sent."""
        reply = self._count(outcome)
        observer = self._observer
        seen = observer.seen(outcome, peer) if observer is not None else None
        if reply is None:
            return
        sent = self._send(reply, peer) is not _DROPPED
        if sent:
            self._replied()
        if observer is not None:
            observer.replied(seen, reply, sent)

    def _dropped(self, reason: str) -> None:
        self.stats.dropped_replies.inc()
        if reason in WITHHELD:
            self.stats.withheld_replies.inc()

    # --- what goes wrong ----------------------------------------------------------------

    def survive(self, error: Exception) -> None:
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
