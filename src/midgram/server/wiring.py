"""Wiring: from ``Settings`` to a server. ``serve(settings, registry)`` runs the daemon, and
what it does at start serves ``AsyncServer`` (``midgram.server.asyncserver``) too.

``serve`` binds the socket (permissions applied atomically), declares the statistics, and
then either forks ``children_count`` workers under a ``Supervisor`` or, with
``children_count = 0``, serves in the calling process (docs/compatibility.md, difference 8).
Either way the UNIX socket file is removed on the way out.

Tracing (``trace_destination``) is checked before any fork: the bw-list against the commands
served, the collector's name resolved. Each worker then makes its own HEP socket and
correlation ids after the fork. So are the ``acl`` rules: their commands against those served,
their users and groups against the system's database; the socket passes its senders'
credentials if a rule needs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from midgram.config.settings import Settings
from midgram.engine.access import AccessPolicy, build_policy
from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher
from midgram.engine.publisher import EventPublisher
from midgram.engine.registry import Registry
from midgram.engine.runtime import (
    LocalRuntime,
    ProcessTable,
    Runtime,
    SharedRuntime,
)
from midgram.engine.subscriptions import SubscriptionTable
from midgram.engine.tracing import CorrelationIds, PayloadFormat, TraceFilter, Tracer
from midgram.errors import ConfigError, TransportError
from midgram.local import default_target, squatted
from midgram.logs import LOG_FORMAT, formatter_for, logging_level, opensips_level
from midgram.server.batchio import native_status, version_line
from midgram.server.binding import (
    UserDatabase,
    bind_udp,
    bind_unix,
    enlarge_send_buffer,
    pass_credentials,
    remove_unix,
    resolve_owner,
    resolve_udp,
    set_recv_timeout,
)
from midgram.server.events import WORKER_RESTARTED, EventSender
from midgram.server.hooks import Tracing, allow_from
from midgram.server.process import name_attendant, name_worker
from midgram.server.service import Notifier
from midgram.server.supervisor import Supervisor, WorkerSignals, WorkerStates
from midgram.server.transport import HepSender
from midgram.server.worker import IDLE_WAKEUP, ServerStats, Worker
from midgram.wire.address import ANY_PORT, HepId, UdpAddress, UnixAddress, parse_socket_name

__all__ = [
    "LOG_FORMAT",
    "InProcess",
    "close_socket",
    "default_address",
    "importing_app",
    "in_process",
    "listening_address",
    "local_runtime",
    "open_socket",
    "own_logging",
    "refuse_during_app_import",
    "serve",
    "server_address",
]

log = logging.getLogger(__name__)

#: Where ``midgram serve`` listens when told nothing: where the client calls by default.
default_address = default_target


# The ``module:attribute`` that ``midgram serve --app`` is importing, while it does.
_importing_app: str | None = None


@contextlib.contextmanager
def importing_app(spec: str) -> Iterator[None]:
    """While ``midgram serve --app`` imports ``spec``'s module: a server started by that
    import is refused (``ConfigError``). It would serve elsewhere, block the import, and then
    leave its registry's statistics allocated for another number of workers."""
    global _importing_app  # one import at a time, in the CLI's main thread
    _importing_app = spec
    try:
        yield
    finally:
        _importing_app = None


def refuse_during_app_import() -> None:
    if _importing_app is not None:
        raise ConfigError(
            "--app",
            _importing_app,
            "its module starts a server when imported: put that call under "
            '`if __name__ == "__main__":` (midgram serve --app serves the registry itself)',
        )


def _check_slots(settings: Settings, registry: Registry) -> None:
    """A registry served before keeps its shared statistics: the same number of workers."""
    slots = registry.stats.slots
    if slots is not None and settings.children_count not in (0, slots):
        raise ConfigError(
            "children_count",
            settings.children_count,
            f"this Registry's statistics are already shared by {slots} worker(s) (it was "
            f"served before): serve it again with children_count = {slots}, or serve a new "
            "Registry",
        )


def server_address(settings: Settings) -> UnixAddress | UdpAddress:
    return settings.address or parse_socket_name(default_address())


def listening_address(settings: Settings, sock: socket.socket) -> str:
    """Where the server bound ``sock`` listens, as its log, banner and process titles say
    it: ``socket_name`` (or the default), with the port the kernel chose for port 0."""
    address = settings.address
    if address is None:
        return default_address()
    if isinstance(address, UdpAddress) and address.port == ANY_PORT:
        return str(UdpAddress(address.host, sock.getsockname()[1]))
    return str(address)


def _opensips_level(settings: Settings) -> int:
    """``settings.log_level`` as the ``log_level`` command reports and workers apply it."""
    return opensips_level(logging_level(settings.log_level))


@contextlib.contextmanager
def own_logging(settings: Settings) -> Iterator[None]:
    """Meanwhile, midgram's logger is at ``settings.log_level`` (in every process, as the
    ``log_level`` command reports it) and, if the program set up no logging at all, writes
    to stderr (Python would show warnings only, without midgram's format). The root logger
    and the program's own handlers are left as they are."""
    logger = logging.getLogger("midgram")
    handler: logging.Handler | None = None
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter_for(sys.stderr))
        logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging_level(settings.log_level))
    try:
        yield
    finally:
        logger.setLevel(previous)
        if handler is not None:
            logger.removeHandler(handler)


def open_socket(settings: Settings) -> socket.socket:
    """Bind the server socket as ``settings`` says (path, owner, mode; or UDP host:port)."""
    address = server_address(settings)
    if isinstance(address, UdpAddress):
        return bind_udp(address.host, address.port)
    _check_folder(address)
    uid, gid = resolve_owner(settings.unix_socket_user, settings.unix_socket_group)
    path = str(address)
    if path == default_address():
        _refuse_squatted(path, uid)
    return bind_unix(path, mode=settings.unix_socket_mode, uid=uid, gid=gid)


def _refuse_squatted(path: str, owner: int) -> None:
    """The default socket's place is shared (/tmp): never take over, nor be refused by, a
    file another user put there (they would then answer this server's clients)."""
    reason = squatted(path, trusted=(owner,) if owner != -1 else ())
    if reason is not None:
        raise TransportError(
            f"refusing the default socket {path}: {reason}; another user may have put it "
            "there: choose another socket_name",
            path,
        )


def _check_folder(address: UnixAddress) -> None:
    """A socket file's folder must exist: said in one line, not as a bare ENOENT."""
    folder = os.path.dirname(address.path) or "."
    if not address.abstract and not os.path.isdir(folder):
        raise TransportError(
            f"cannot bind {address}: no folder {folder}: create it first (writable by the "
            "user midgram runs as)",
            str(address),
        )


def close_socket(sock: socket.socket, settings: Settings) -> None:
    address = server_address(settings)
    sock.close()
    if isinstance(address, UnixAddress) and not address.abstract:
        remove_unix(address.path)


def _dispatcher(
    settings: Settings, registry: Registry, runtime: Runtime, sock: socket.socket
) -> Dispatcher:
    served = with_builtins(registry, runtime)
    return Dispatcher(
        served,
        pretty=settings.pretty_printing,
        buf_size=settings.socket_buf_size,
        json_errors=settings.json_errors,
        access=_access_policy(settings, served, sock),
    )


def _access_policy(
    settings: Settings, served: Registry, sock: socket.socket
) -> AccessPolicy | None:
    """The ``acl`` rules and the commands' own defaults, checked against the commands
    served and the user and group database (an unknown one stops the server here, named);
    the socket then passes its senders' credentials if a rule needs them. None: no rule."""
    if not settings.acl and not any(command.acl for command in served):
        return None
    udp = isinstance(server_address(settings), UdpAddress)
    policy = build_policy(settings.acl, served, UserDatabase(), udp=udp)
    for warning in policy.warnings:
        log.warning("%s", warning)
    if policy.needs_credentials:
        pass_credentials(sock)
    log.info(
        "acl: %s guarded, every other command open to anyone who can reach the socket",
        ", ".join(policy.guards) or "no command",
    )
    return policy


@dataclass(frozen=True)
class _TracePlan:
    """Tracing as checked at start, before any fork; ``start`` it in each worker."""

    settings: Settings
    target: HepId
    collector: tuple[int, tuple[Any, ...]]
    server: Any
    traced: TraceFilter
    startup: int

    def start(self, counted: Callable[[int], None]) -> Tracing:
        """This process's tracer and HEP socket (its own pid and random source); ``counted``
        counts the traces sent."""
        settings = self.settings
        tracer = Tracer(
            self.server,
            CorrelationIds(os.getpid(), self.startup),
            capture_id=settings.hep_capture_id,
            payload=PayloadFormat(settings.homer5_on, settings.homer5_delim),
            traced=self.traced,
        )
        return Tracing(tracer, HepSender(*self.collector), counted)


def _trace_plan(
    settings: Settings, sock: socket.socket, dispatcher: Dispatcher
) -> _TracePlan | None:
    target = settings.trace_target
    if target is None:
        return None
    # An unknown command in trace_bwlist stops the server here, naming it (as OpenSIPS).
    traced = TraceFilter.from_bwlist(settings.trace_bwlist, dispatcher.registry)
    collector = resolve_udp(target.address.host, target.address.port)
    named = "" if str(settings.trace_destination).startswith("udp:") else f" (hep_id {target.name})"
    log.info(
        "tracing MI commands to %s%s as HEP3 over UDP, capture id %d, %s payloads%s",
        target.address,
        named,
        settings.hep_capture_id,
        "HOMER 5 text" if settings.homer5_on else "JSON",
        f", trace_bwlist {settings.trace_bwlist!r}" if settings.trace_bwlist else "",
    )
    return _TracePlan(settings, target, collector, sock.getsockname(), traced, int(time.time()))


def serve(
    settings: Settings,
    registry: Registry | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until stopped (SIGTERM, SIGINT or the ``kill`` command). Returns an exit status:
    0 after a clean stop, 1 when the workers kept dying at start-up."""
    registry = registry if registry is not None else Registry()
    refuse_during_app_import()
    _check_slots(settings, registry)
    with own_logging(settings):
        return _serve(settings, registry, on_ready)


def _serve(settings: Settings, registry: Registry, on_ready: Callable[[str], None] | None) -> int:
    for warning in settings.warnings():
        log.warning("%s", warning)
    notifier = Notifier.from_environment()
    sock = open_socket(settings)
    told = _Told(listening_address(settings, sock), settings.children_count, on_ready, notifier)
    try:
        set_recv_timeout(sock, IDLE_WAKEUP)
        enlarge_send_buffer(sock)
        _log_start()  # native I/O is decided here, once, before the workers fork
        if settings.children_count == 0:
            return _serve_inline(sock, settings, registry, told)
        return _serve_forked(sock, settings, registry, told)
    finally:
        close_socket(sock, settings)
        if told.listening:  # a server that never listened did not stop: its error says it all
            log.info("stopped")


@dataclass
class _Told:
    """Where the server says how it is doing: its log, the program (``on_ready``) and the
    service manager (``notifier``: systemd's READY, STATUS and STOPPING)."""

    where: str
    children: int
    on_ready: Callable[[str], None] | None
    notifier: Notifier
    listening: bool = False
    restarts: int = 0

    def ready(self) -> None:
        log.info("listening on %s", self._serving())
        self.listening = True
        if self.on_ready is not None:
            self.on_ready(self.where)
        self.notifier.ready(f"listening on {self._serving()}")

    def spawned(self) -> None:
        """A worker was forked: after the first ones, a restart (counted in the status)."""
        if self.listening:
            self.restarts += 1
            self.notifier.status(f"listening on {self._serving()}; {self.restarts} restart(s)")

    def stopping(self, why: str) -> None:
        self.notifier.stopping(f"stopping ({why})" if why else "stopping")

    def _serving(self) -> str:
        processes = f"{self.children} worker(s)" if self.children else "in-process"
        return f"{self.where} ({processes})"


def _log_start() -> None:
    """What runs: midgram's version, Python's, and whether native I/O is on (a warning when
    off: the server then serves at a fraction of its rate)."""
    log.log(logging.INFO if native_status().on else logging.WARNING, "%s", version_line())


def _serve_inline(sock: socket.socket, settings: Settings, registry: Registry, told: _Told) -> int:
    """``children_count = 0``: this process is the one worker (embedding, debugging)."""
    signals = WorkerSignals()
    served = in_process(
        sock, settings, registry, local_runtime(settings), on_stop_requested=signals.stop_server
    )
    restore = _install_inline_signals(signals)
    told.ready()
    try:
        # The heartbeat goes between bursts and when idle (every IDLE_WAKEUP): it stops
        # when the loop hangs.
        served.worker.run(
            signals.should_stop, chores=(signals.reopen_logs_if_asked, told.notifier.heartbeat)
        )
        told.stopping("")
    finally:
        restore()
        served.close()
    _report(served.worker.stats)
    return 0


def _install_inline_signals(worker_signals: WorkerSignals) -> Callable[[], None]:
    """SIGTERM and SIGINT stop the loop; only possible (and only ours) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    worker_signals.install()
    signal.signal(signal.SIGINT, signal.getsignal(signal.SIGTERM))

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _serve_events(settings: Settings, registry: Registry) -> Callable[[], None]:
    """Serve ``registry``'s events: its subscribers' table (made before any fork, shared by
    every process) and this process's sender. Returns what ends it."""
    subscribers = SubscriptionTable(settings.max_event_subscribers)
    sender = EventSender()
    registry.events.publisher = EventPublisher(registry.events, subscribers, sender)

    def end() -> None:
        registry.events.publisher = None
        sender.close()
        subscribers.close()

    return end


def _raise_restarts(registry: Registry) -> Callable[[int, int, int, str], None]:
    """``E_MIDGRAM_WORKER_RESTARTED``, raised by the supervisor for each worker replaced."""
    restarted = registry.event(WORKER_RESTARTED)
    count = 0

    def raise_restart(slot: int, pid: int, old_pid: int, why: str) -> None:
        nonlocal count
        count += 1
        params = {"id": slot + 1, "pid": pid, "old_pid": old_pid, "reason": why}
        restarted.raise_event({**params, "restarts": count})

    return raise_restart


def _serve_forked(sock: socket.socket, settings: Settings, registry: Registry, told: _Told) -> int:
    children, where = settings.children_count, told.where
    table = ProcessTable(children, level=_opensips_level(settings))
    table.register(0, os.getpid())
    runtime = SharedRuntime(table, 0, time.time(), os.getpid())
    dispatcher = _dispatcher(settings, registry, runtime, sock)
    plan = _trace_plan(settings, sock, dispatcher)
    server_stats = ServerStats.declare(registry.stats)
    on_restart = _raise_restarts(registry)
    end_events = _serve_events(settings, registry)  # shared memory, before the fork
    registry.stats.allocate(children)  # shared memory, before the fork
    states = WorkerStates(children)  # shared too: readiness and the datagram in hand

    def spawned(slot: int, pid: int) -> None:
        table.register(slot + 1, pid)
        told.spawned()

    def run_worker(slot: int) -> int:
        name_worker(slot + 1, where)
        registry.stats.attach(slot)
        table.register(slot + 1, os.getpid())
        worker_signals = WorkerSignals(supervisor=runtime.supervisor_pid)
        worker_signals.install()
        worker = _worker(
            sock,
            settings,
            dispatcher,
            server_stats,
            plan.start(server_stats.traced.inc) if plan is not None else None,
            log_level=lambda: table.level(slot + 1),
            stop_requested=lambda: runtime.stop_requested,
            on_stop_requested=worker_signals.stop_server,
            in_hand=states.in_hand(slot),
        )
        states.mark_ready(slot)
        worker.run(worker_signals.should_stop, chores=(worker_signals.reopen_logs_if_asked,))
        return 0

    supervisor = Supervisor(
        children,
        run_worker,
        states=states,
        worker_timeout=settings.worker_timeout,
        on_stuck=lambda slot: server_stats.stuck_requests.inc(),
        on_spawn=spawned,
        on_exit=lambda slot: table.unregister(slot + 1),
        on_restart=on_restart,
        on_started=told.ready,
        on_stop=told.stopping,
        heartbeat=told.notifier.heartbeat,
    )
    name_attendant(where)
    try:
        status = supervisor.run()
    finally:
        end_events()
    _report(server_stats)
    return status


def _worker(
    sock: socket.socket,
    settings: Settings,
    dispatcher: Dispatcher,
    server_stats: ServerStats,
    tracing: Tracing | None,
    **options: Any,
) -> Worker:
    """The batch loop as ``settings`` say, with its hooks: ``allow_from``, tracing."""
    admission = allow_from(settings.allow_from)
    return Worker(
        sock,
        dispatcher,
        server_stats,
        socket_timeout_ms=settings.socket_timeout,
        admission=() if admission is None else (admission,),
        observers=() if tracing is None else (tracing,),
        worker_timeout=settings.worker_timeout,
        **options,
    )


def local_runtime(settings: Settings) -> LocalRuntime:
    """The runtime of a server that is this one process."""
    return LocalRuntime(level=_opensips_level(settings))


@dataclass(frozen=True)
class InProcess:
    """A server that is this one process (``children_count = 0``, ``AsyncServer``)."""

    worker: Worker
    tracing: Tracing | None
    end_events: Callable[[], None]

    def close(self) -> None:
        self.end_events()
        if self.tracing is not None:
            self.tracing.close()


def in_process(
    sock: socket.socket,
    settings: Settings,
    registry: Registry,
    runtime: LocalRuntime,
    **options: Any,
) -> InProcess:
    """The worker of a server that is this one process, serving ``sock``; ``options`` go to
    ``Worker``."""
    dispatcher = _dispatcher(settings, registry, runtime, sock)
    plan = _trace_plan(settings, sock, dispatcher)
    stats = ServerStats.declare(registry.stats)
    tracing = plan.start(stats.traced.inc) if plan is not None else None
    worker = _worker(
        sock,
        settings,
        dispatcher,
        stats,
        tracing,
        stop_requested=lambda: runtime.stop_requested,
        **options,
    )
    return InProcess(worker, tracing, _serve_events(settings, registry))


def _report(stats: ServerStats) -> None:
    """The totals at exit: every request a worker read has been answered or counted."""
    log.info(
        "served %d datagrams: %d replies sent, %d dropped",
        stats.received.value,
        stats.replied.value,
        stats.dropped_replies.value,
    )
