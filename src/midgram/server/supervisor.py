"""The pre-fork supervisor: starts N workers, restarts the ones that die, stops them all.

Generic over its target: a worker is ``run_worker(slot) -> exit status`` in a forked child.
Signal handlers only record the signal (through ``signal.set_wakeup_fd``); the loop acts:

- SIGCHLD: reap; a worker that died unexpectedly is restarted in the same slot, at once if
  it had become ready (``WorkerStates``), with a growing back-off if it died at boot.
  Workers that keep dying at boot (``max_boot_failures`` in a row) stop the server instead
  of looping. A worker that died while serving is never a boot failure, however soon it
  died: its datagram killed it, not its start, and the log shows that datagram's first
  bytes, so no stream of datagrams can stop the server.
- SIGTERM / SIGINT: graceful stop. Each worker gets SIGTERM, finishes the datagram in hand
  and exits; whoever is still alive after ``stop_timeout`` gets SIGKILL.
- SIGHUP: re-open log files, here and in every worker.
- ``heartbeat`` (systemd's watchdog): called when due while every slot has a live worker;
  it pauses while one waits out its back-off.

Log lines name a worker by its number in ``ps`` (``worker 1`` is slot 0: the supervisor is
row 0 of the process table, the "attendant").

Workers never outlive the supervisor: each asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, even after a SIGKILL), and checks on each wake-up that its
parent is still the supervisor, where prctl is unavailable. A dead supervisor's pid may be
reused by any process, so a worker signals it only while it is still its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

from midgram.engine.runtime import reopen_log_files
from midgram.logs import shown
from midgram.server.process import prctl as libc_prctl

__all__ = [
    "IN_HAND_MAX",
    "Supervisor",
    "WorkerSignals",
    "WorkerStates",
    "held",
    "hold",
    "let_go",
    "worker_name",
]

log = logging.getLogger(__name__)

#: Without ``WorkerStates``, a worker that lived less than this long is counted as a boot
#: failure; with them, one that died before it became ready and this soon after, backs off.
BOOT_GRACE: Final = 1.0
#: How many of the first bytes of the datagram in hand a worker's record keeps.
IN_HAND_MAX: Final = 120
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: How often the watchdog looks (a quarter of worker_timeout, within these bounds).
WATCH_TICK_MIN: Final = 0.05
WATCH_TICK_MAX: Final = 1.0
#: The signals the supervisor's loop acts on.
HANDLED_SIGNALS: Final = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: prctl(2) option: the signal this process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG: Final = 1


@dataclass
class WorkerSignals:
    """What a worker's own signal handlers record, for its loop to act on.

    ``supervisor``: the pid of the supervisor that forked this worker (0: none, the worker
    is the whole server).
    """

    supervisor: int = 0
    stop: bool = False
    reopen_logs: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        # Ctrl-C reaches the whole process group: the supervisor decides, workers wait
        # for its SIGTERM so that the datagram in hand is always answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reopen_logs = True

    def should_stop(self) -> bool:
        """Whether the worker stops: SIGTERM came, or the supervisor died."""
        if self.supervisor and not self._supervised():
            self.stop = True  # the supervisor died and no SIGTERM came (no prctl)
        return self.stop

    def reopen_logs_if_asked(self) -> None:
        """SIGHUP came: re-open the log files (here, in the worker's loop: not in a signal
        handler, which may run in the middle of a log write)."""
        if self.reopen_logs:
            self.reopen_logs = False
            reopen_log_files()

    def stop_server(self) -> None:
        """The ``kill`` command: SIGTERM to the supervisor, which stops every worker. Only
        while it is alive and this worker's parent; without it, this worker stops alone."""
        if self.supervisor and self._supervised():
            os.kill(self.supervisor, signal.SIGTERM)
        else:
            self.stop = True

    def _supervised(self) -> bool:
        # A dead parent's children are re-parented at once (to init or a subreaper), so
        # getppid() names the supervisor only while it lives.
        return os.getppid() == self.supervisor


_READY, _HELD, _SINCE, _BYTES = 0, 8, 16, 24
_INT64: Final = struct.Struct("q")
#: The clock of a request's start time in a worker's record: the C loop reads the same one.
#: CLOCK_MONOTONIC_COARSE (linux/time.h; Python's time module does not name it): a few ms
#: of resolution for a read of a shared page, for every datagram, compared with seconds.
CLOCK: Final = 6


class WorkerStates:
    """What each worker tells the supervisor, in a record that outlives it: whether it became
    ready, and the datagram it has in hand (its length, when it started serving it, and its
    first ``IN_HAND_MAX`` bytes).

    An anonymous MAP_SHARED mapping made before the fork, like the runtime's process table.
    A worker writes only its own record; the supervisor reads it without locks, once the
    worker is dead, and while it lives for ``worker_timeout`` (a record read as it changes
    is read again). ``in_hand(slot)`` is the part a worker writes for each datagram (a
    length, a start time, then the bytes): the native loop writes it in C
    (``_batchio.BatchSocket``), the Python loops with ``hold``.
    """

    RECORD: Final = _BYTES + IN_HAND_MAX

    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, max(1, workers) * self.RECORD)
        self._view = memoryview(self._map)

    def _record(self, slot: int) -> memoryview:
        return self._view[slot * self.RECORD : (slot + 1) * self.RECORD]

    def reset(self, slot: int) -> None:
        """A fresh worker in ``slot``: not ready, nothing in hand."""
        self._record(slot)[:_BYTES] = bytes(_BYTES)

    def mark_ready(self, slot: int) -> None:
        _INT64.pack_into(self._record(slot), _READY, 1)

    def ready(self, slot: int) -> bool:
        return bool(_INT64.unpack_from(self._record(slot), _READY)[0])

    def in_hand(self, slot: int) -> memoryview:
        """The writable part of ``slot``'s record: a native-endian int64 length (0: nothing
        in hand), the int64 time (``CLOCK``, ns) it was taken, then up to ``IN_HAND_MAX``
        bytes of the datagram."""
        return self._record(slot)[_HELD:]

    def held(self, slot: int) -> tuple[int, bytes] | None:
        """The datagram ``slot``'s worker had in hand (its length and first bytes), if any."""
        return held(self.in_hand(slot))

    def busy_for(self, slot: int) -> float | None:
        """Seconds ``slot``'s worker has had its datagram in hand (None: nothing in hand).
        Read twice, so that a record changing under the read is not taken for an old one."""
        in_hand = self.in_hand(slot)
        since: int = _INT64.unpack_from(in_hand, _SINCE - _HELD)[0]
        if _INT64.unpack_from(in_hand, 0)[0] <= 0:
            return None
        if _INT64.unpack_from(in_hand, _SINCE - _HELD)[0] != since:
            return 0.0  # it just took another one
        return max(0.0, (time.clock_gettime_ns(CLOCK) - since) / 1e9)


_HEAD: Final = _BYTES - _HELD  # where the bytes start in the in_hand part


def held(in_hand: memoryview) -> tuple[int, bytes] | None:
    """The datagram in hand in a ``WorkerStates.in_hand`` part: its length and first bytes."""
    size = _INT64.unpack_from(in_hand, 0)[0]
    if size <= 0:
        return None
    return size, bytes(in_hand[_HEAD : _HEAD + min(size, len(in_hand) - _HEAD)])


def hold(in_hand: memoryview, data: bytes) -> None:
    """Write ``data`` as the datagram in hand, taken now, into a ``WorkerStates.in_hand``
    part."""
    size = min(len(data), len(in_hand) - _HEAD)
    in_hand[_HEAD : _HEAD + size] = data[:size]
    _INT64.pack_into(in_hand, _SINCE - _HELD, time.clock_gettime_ns(CLOCK))
    _INT64.pack_into(in_hand, 0, len(data))


def let_go(in_hand: memoryview) -> None:
    """Nothing in hand any more."""
    _INT64.pack_into(in_hand, 0, 0)


@dataclass
class _Slot:
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    respawn_at: float | None = None
    killed_stuck: bool = False
    #: The pid of the worker that last died in this slot, and how it died.
    last_pid: int = 0
    last_exit: str = ""


@dataclass
class Supervisor:
    """Keeps ``workers`` children running ``run_worker(slot)`` until told to stop."""

    workers: int
    run_worker: Callable[[int], int]
    stop_timeout: float = 10.0
    max_boot_failures: int = 5
    on_spawn: Callable[[int, int], None] = lambda slot, pid: None
    on_exit: Callable[[int], None] = lambda slot: None
    #: Called once the signal handlers are in place and the first workers forked.
    on_started: Callable[[], None] = lambda: None
    #: Called when SIGTERM or SIGINT begins the stop, with the signal's name.
    on_stop: Callable[[str], None] = lambda why: None
    #: Called while every worker is alive (the service manager's watchdog): returns in how
    #: many seconds it wants to be called again (None: never).
    heartbeat: Callable[[], float | None] | None = None
    clock: Callable[[], float] = time.monotonic
    #: Set by workers that say when they are ready (``mark_ready``) and what they serve.
    states: WorkerStates | None = None
    #: The watchdog (with ``states``): a worker that has held one datagram longer than this
    #: many seconds is killed and replaced (0: never), and ``on_stuck(slot)`` called.
    worker_timeout: float = 0.0
    on_stuck: Callable[[int], None] = lambda slot: None
    #: Called in the supervisor once a worker that died is replaced: the slot, the new pid,
    #: the dead one's pid and how it died ("was killed by SIGKILL").
    on_restart: Callable[[int, int, int, str], None] = lambda slot, pid, old, why: None
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False
    _failed: str | None = None
    _beat_at: float | None = None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (0) or until workers keep dying at boot (1). Whatever
        ``on_started`` raises is raised here, once every worker has stopped."""
        self._slots = [_Slot() for _ in range(self.workers)]
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(write_fd)
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            self.on_started()
            while not self._stopping:
                self._beat()
                self._wait_for_signal(read_fd, self._next_wake_in())
                self._respawn_due()
                self._watch()
        finally:
            # Also when on_started or the loop raised: no worker outlives a failed start.
            self._stop_all()
            self._restore_signals(previous)
            os.close(read_fd)
            os.close(write_fd)
        if self._failed:
            log.error("%s", self._failed)
            return 1
        return 0

    def pids(self) -> list[int]:
        return [slot.pid for slot in self._slots if slot.pid]

    # --- signals ---------------------------------------------------------------------------

    def _install_signals(self, write_fd: int) -> dict[int, object]:
        previous: dict[int, object] = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        previous[-1] = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            # The handler does nothing: the wakeup fd carries the signal number to the loop.
            signal.signal(sig, _record)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))  # type: ignore[arg-type]
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _wait_for_signal(self, read_fd: int, timeout: float | None) -> None:
        readable, _, _ = select.select([read_fd], [], [], timeout)
        if not readable:
            return
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(read_fd, 256):
                self._on_signal(signum)
        self._reap()  # SIGCHLDs coalesce: always reap everything that has exited

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(signum).name
            log.info("stopping (%s)", name)
            self._stopping = True
            self.on_stop(name)
        elif signum == signal.SIGHUP:
            reopen_log_files()
            self._signal_all(signal.SIGHUP)

    # --- workers ---------------------------------------------------------------------------

    def _spawn(self, slot: int, again: bool = False) -> None:
        if self.states is not None:
            self.states.reset(slot)
        supervisor, prctl = os.getpid(), libc_prctl()  # looked up once, not in each child
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            _end_with(supervisor, prctl)
            status = 1
            signal.set_wakeup_fd(-1)  # the supervisor's loop is not the child's
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            try:
                status = self.run_worker(slot)
            except BaseException:
                log.exception("%s crashed", worker_name(slot))
            finally:
                logging.shutdown()
                os._exit(status)
        state = self._slots[slot]
        state.pid, state.started, state.respawn_at = pid, self.clock(), None
        state.killed_stuck = False
        self.on_spawn(slot, pid)
        # A restart follows a death (logged as a warning): the pair tells the whole story.
        log.log(
            logging.WARNING if again else logging.DEBUG,
            "%s %s (pid %d)",
            worker_name(slot),
            "restarted" if again else "started",
            pid,
        )
        if again:
            self.on_restart(slot, pid, state.last_pid, state.last_exit)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_worker_exit(pid, status)

    def _on_worker_exit(self, pid: int, status: int) -> None:
        index = next((i for i, s in enumerate(self._slots) if s.pid == pid), None)
        if index is None:
            return  # not one of ours (a handler's own child process)
        state = self._slots[index]
        state.pid = 0
        self.on_exit(index)
        if self._stopping:
            return
        lived = self.clock() - state.started
        at_boot = self._died_at_boot(index, lived)
        state.last_pid = pid
        state.last_exit = _describe(status)
        if state.killed_stuck:
            state.last_exit += f" (stuck past worker_timeout, {self.worker_timeout:g} s)"
        log.warning(
            "%s (pid %d) %s after %.1f s%s",
            worker_name(index),
            pid,
            _describe(status),
            lived,
            self._last_words(index, at_boot),
        )
        state.failures = state.failures + 1 if at_boot else 0
        if state.failures >= self.max_boot_failures:
            self._failed = f"{worker_name(index)} died at start-up {state.failures} times in a row"
            self._stopping = True
            return
        delay = 0.0 if state.failures == 0 else min(BACKOFF_MAX, BACKOFF_FIRST * 2**state.failures)
        state.respawn_at = self.clock() + delay

    def _died_at_boot(self, index: int, lived: float) -> bool:
        """Before it became ready (with ``states``), or within BOOT_GRACE (without)."""
        if self.states is None:
            return lived < BOOT_GRACE
        return not self.states.ready(index)

    def _last_words(self, index: int, at_boot: bool) -> str:
        """What the worker was doing when it died, for its log line."""
        if self.states is None:
            return ""
        if at_boot:
            return ", before it became ready"
        held = self.states.held(index)
        if held is None:
            return ", while idle"
        size, head = held
        return f", while serving a datagram of {size} bytes: {shown(head, IN_HAND_MAX)}"

    def _next_wake_in(self) -> float | None:
        """Until the next restart, heartbeat or look of the watchdog is due (None: none is)."""
        due = [s.respawn_at for s in self._slots if s.respawn_at is not None]
        if self._beat_at is not None:
            due.append(self._beat_at)
        wait = max(0.0, min(due) - self.clock()) if due else None
        tick = self._watch_tick()
        if tick is None:
            return wait
        return tick if wait is None else min(wait, tick)

    def _beat(self) -> None:
        """The heartbeat, while every worker is alive: not while one waits for its restart
        (a worker that keeps dying at start-up stops the heartbeat, then the server)."""
        self._beat_at = None
        if self.heartbeat is not None and all(slot.pid for slot in self._slots):
            wait = self.heartbeat()
            if wait is not None:
                self._beat_at = self.clock() + wait

    def _watch_tick(self) -> float | None:
        if not self.worker_timeout or self.states is None:
            return None
        return min(WATCH_TICK_MAX, max(WATCH_TICK_MIN, self.worker_timeout / 4))

    def _watch(self) -> None:
        """The watchdog: kill each worker that has held one datagram past worker_timeout
        (its record says since when); it is then replaced like any worker that died."""
        states = self.states
        if not self.worker_timeout or states is None:
            return
        for index, state in enumerate(self._slots):
            if not state.pid or state.killed_stuck:
                continue
            busy = states.busy_for(index)
            if busy is None or busy <= self.worker_timeout:
                continue
            log.error(
                "%s (pid %d) spent %.1f s on one request, beyond worker_timeout "
                "(%g s): killing it (nobody answers that request)%s",
                worker_name(index),
                state.pid,
                busy,
                self.worker_timeout,
                self._last_words(index, at_boot=False),
            )
            state.killed_stuck = True
            self.on_stuck(index)
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)

    def _respawn_due(self) -> None:
        now = self.clock()
        for index, state in enumerate(self._slots):
            if state.respawn_at is not None and state.respawn_at <= now and not self._stopping:
                self._spawn(index, again=True)

    def _signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait up to ``stop_timeout``, then SIGKILL the rest. The
        watchdog goes on meanwhile: a worker stuck past worker_timeout is killed sooner."""
        self._stopping = True  # their exits are expected: none is restarted or reported
        self._signal_all(signal.SIGTERM)
        deadline = self.clock() + self.stop_timeout
        tick = self._watch_tick()
        while self.pids() and self.clock() < deadline:
            wait = deadline - self.clock()
            self._wait_any(wait if tick is None else min(wait, tick))
            self._watch()
        if self.pids():
            log.warning(
                "workers %s did not stop in %.1f s: killing them", self.pids(), self.stop_timeout
            )
            self._signal_all(signal.SIGKILL)
            while self.pids():
                self._wait_any(None)

    def _wait_any(self, timeout: float | None) -> None:
        """Reap one exited worker, waiting at most ``timeout`` seconds (None: forever)."""
        if timeout is None:
            pid, status = os.waitpid(-1, 0)
            self._on_worker_exit(pid, status)
            return
        end = self.clock() + timeout
        while self.clock() < end:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                self._on_worker_exit(pid, status)
                return
            # No portable waitpid-with-timeout: a short poll keeps shutdown prompt.
            select.select([], [], [], min(0.02, max(0.0, end - self.clock())))


def worker_name(slot: int) -> str:
    """The worker in ``slot`` as log lines name it: by its ID in ``ps`` (slot + 1)."""
    return f"worker {slot + 1}"


def _end_with(supervisor: int, prctl: Callable[..., int] | None) -> None:
    """In a new worker: SIGTERM (the graceful stop) when the supervisor dies, and an exit
    now if it died before the kernel was asked."""
    if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != supervisor:
        os._exit(0)


def _record(signum: int, frame: FrameType | None) -> None:
    """Signal handler: nothing to do, the wakeup fd already carries the signal."""


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
