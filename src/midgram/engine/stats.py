"""Statistics shared by all worker processes of one server, and the API to declare them.

A program declares its statistics once, before the server starts::

    stats = Statistics()
    received = stats.counter("mi_datagram:received")     # incremental
    active = stats.gauge("calls:active")                  # non-incremental, never reset
    stats.function("core:uptime", lambda: int(time.monotonic() - started))

    stats.allocate(slots=4)      # in the parent, before fork(): creates the shared memory
    # ... in worker i, right after fork():
    stats.attach(i)              # this process now writes slot i
    received.inc()               # the hot path: no lock, no syscall

Why per-process slots: CPython has no atomic add on shared memory and a lock per request would
cost more than the request. So every process owns one row of int64 cells and is the only writer
of it; a read sums the column of every row. While each process writes only its own row, no
update is lost to a race (Gauge.set aside, see there), because no two processes write one cell.

Shared memory layout (one anonymous ``MAP_SHARED`` mmap, created by :meth:`Statistics.allocate`
in the parent and inherited by every child it forks; ``N`` = number of counters and gauges, each
with a column index ``i`` in declaration order; function statistics take no memory)::

    row 0            the process that called allocate() (the supervisor, or the only process)
    row 1 + s        the process that called attach(s), for s in 0 .. slots-1
    row slots + 1    baselines (one per stat)
    cell (row, i)    int64 at byte offset 8 * (row * N + i), native byte order

    value(i) = sum(cell(r, i) for r in 0 .. slots) - cell(slots + 1, i)

Reset is lock-free too: it stores the current sum as the baseline, so the owners' cells never
change under them. A respawned worker attaches to the slot of the dead one and carries on from
the count it left.

Before allocate() every counter and gauge keeps its cells in a private buffer, so a program that
never starts a server (or a test) can use them as plain numbers. allocate() copies those values
into row 0 of the shared memory. Fork only after allocate(): a buffer that is still private is
not shared with children.

The writing process caches its own cells' values in Python ints, so ``inc()`` is a single store
(about 80 ns in CPython 3.11, against about 105 ns for a read-modify-write of the cell). That is
only valid while no other process writes the same row. A fork in which the child does not
attach() leaves parent and child on one row, so on every fork both sides switch the row they
were on to read-modify-write (see :func:`_after_fork`): concurrent writes of that row may then
lose an update that races, like any unlocked counter, but neither side overwrites the other's
counts. attach() gives the process a row of its own again.

Within one process the writes are not thread-safe: two threads that write the same stat at the
same moment may lose one update. The servers write from one thread.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

__all__ = ["Counter", "FunctionStat", "Gauge", "Stat", "Statistics"]

_log = logging.getLogger(__name__)

_CELL_FORMAT: Final = "q"  # native int64: one cell of one stat in one row
_CELL_SIZE: Final = 8


class _Amount(Protocol):
    """What ``Counter.inc``, ``Gauge.add`` and ``Gauge.sub`` are: ``f(n=1)``."""

    def __call__(self, n: int = 1) -> None: ...


class _Move(Protocol):
    def __call__(self, view: memoryview, index: int, /, *, shared: bool) -> None: ...


def _writers(view: memoryview, index: int) -> tuple[_Amount, _Amount, _Move]:
    """Build ``add``/``sub`` closures over one int64 cell, and ``move`` to retarget them.

    Closures, because reading ``view``, ``index`` and ``total`` from closure cells is the
    cheapest lookup CPython has. ``move`` rebinds those cells in place, so the function objects
    never change: a caller that kept ``inc = counter.inc`` before allocate() or attach() keeps
    writing to the right place.

    ``total`` caches the cell's value, valid while this process is the cell's only writer; then a
    write is one store. After ``move(..., shared=True)`` each write re-reads the cell first.
    """
    total = view[index]
    reread = False

    def add(n: int = 1) -> None:
        nonlocal total
        if reread:
            total = view[index]
        total += n
        view[index] = total

    def sub(n: int = 1) -> None:
        nonlocal total
        if reread:
            total = view[index]
        total -= n
        view[index] = total

    def move(new_view: memoryview, new_index: int, *, shared: bool) -> None:
        nonlocal view, index, total, reread
        view, index, reread = new_view, new_index, shared
        total = view[index]

    inc: _Amount = add
    dec: _Amount = sub
    return inc, dec, move


@dataclass(frozen=True)
class _Layout:
    """Where each counter and gauge lives in a buffer of int64 cells (see the module doc).

    ``writers`` rows of ``stride`` cells, then one row of baselines.
    """

    view: memoryview
    stride: int
    writers: int

    @classmethod
    def shared(cls, slots: int, stride: int) -> _Layout:
        """Map the shared memory: row 0 for the allocating process, one row per slot."""
        writers = slots + 1
        size = max(1, (writers + 1) * stride) * _CELL_SIZE
        memory = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        return cls(memoryview(memory).cast(_CELL_FORMAT), stride, writers)

    @classmethod
    def private(cls) -> _Layout:
        """One stat's cells before allocate(): its own cell and its baseline."""
        return cls(memoryview(bytearray(2 * _CELL_SIZE)).cast(_CELL_FORMAT), 1, 1)

    def cell(self, row: int, i: int) -> int:
        return row * self.stride + i

    def column(self, i: int) -> slice:
        """Stat ``i``'s cell in every writer row: what a read sums."""
        return slice(i, self.writers * self.stride, self.stride)

    def baseline(self, i: int) -> int:
        return self.writers * self.stride + i


class Stat(ABC):
    """One named statistic: ``group:short``, e.g. ``core:rcv_requests``.

    ``name``, ``group``, ``short`` and ``incremental`` are read-only. ``incremental`` is what
    ``list_statistics`` reports: OpenSIPS calls a stat "non-incremental" exactly when it cannot
    be reset (``STAT_NO_RESET`` or ``STAT_IS_FUNC``).
    """

    __slots__ = ("group", "incremental", "name", "short")

    def __init__(self, group: str, short: str, *, incremental: bool) -> None:
        self.group = group
        self.short = short
        self.name = f"{group}:{short}"
        self.incremental = incremental

    @property
    @abstractmethod
    def value(self) -> int:
        """The current total over every process (since the last reset)."""

    @abstractmethod
    def reset(self) -> None:
        """Reset the value to 0 where OpenSIPS would; a no-op for the other kinds."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _CellStat(Stat):
    """A stat stored in int64 cells: a private buffer, then the shared memory."""

    __slots__ = ("_base", "_column", "_index", "_move", "_view")

    def __init__(self, group: str, short: str, index: int, *, incremental: bool) -> None:
        super().__init__(group, short, incremental=incremental)
        self._index = index
        private = _Layout.private()
        add, sub, self._move = _writers(private.view, 0)
        self._adopt(add, sub)
        self._bind(private, 0, row=0, shared=False)

    @abstractmethod
    def _adopt(self, add: _Amount, sub: _Amount) -> None:
        """Publish the write closures under the names this kind offers."""

    @property
    def value(self) -> int:
        view = self._view
        return sum(view[self._column]) - view[self._base]

    def _bind(self, layout: _Layout, i: int, *, row: int, shared: bool) -> None:
        """Read from column ``i`` of ``layout`` and write its cell in ``row``."""
        self._view = layout.view
        self._column = layout.column(i)
        self._base = layout.baseline(i)
        self._move(layout.view, layout.cell(row, i), shared=shared)

    def _relocate(self, layout: _Layout) -> None:
        """Carry the value (and baseline) over into row 0 of ``layout``, then use it."""
        i = self._index
        layout.view[layout.cell(0, i)] = sum(self._view[self._column])
        layout.view[layout.baseline(i)] = self._view[self._base]
        self._bind(layout, i, row=0, shared=False)


class Counter(_CellStat):
    """An incremental statistic (OpenSIPS flags 0): listed "incremental", reset to 0.

    ``inc(n=1)`` adds ``n`` (which may be negative, as OpenSIPS's ``update_stat`` allows).
    It is the hot path: a plain function, not a method, so ``counter.inc`` may be kept in a
    local. The total must stay within int64.
    """

    __slots__ = ("inc",)
    inc: _Amount

    def __init__(self, group: str, short: str, index: int) -> None:
        super().__init__(group, short, index, incremental=True)

    def _adopt(self, add: _Amount, sub: _Amount) -> None:
        self.inc = add

    def reset(self) -> None:
        """Make the value 0 for every process: the current sum becomes the baseline.

        Lock-free: an increment that lands during the reset is either before the baseline or
        counted after it, never lost or counted twice.
        """
        view = self._view
        view[self._base] = sum(view[self._column])


class Gauge(_CellStat):
    """A non-incremental statistic (OpenSIPS ``STAT_NO_RESET``), e.g. active calls.

    ``add(n=1)`` and ``sub(n=1)`` are the hot path, like ``Counter.inc``. ``reset()`` does
    nothing, as in OpenSIPS: a gauge measures a state, and zeroing it would make it wrong.
    """

    __slots__ = ("add", "sub")
    add: _Amount
    sub: _Amount

    def __init__(self, group: str, short: str, index: int) -> None:
        super().__init__(group, short, index, incremental=False)

    def _adopt(self, add: _Amount, sub: _Amount) -> None:
        self.add = add
        self.sub = sub

    def set(self, value: int) -> None:
        """Make the total ``value`` by adjusting this process's own cell.

        Exact unless another process writes this gauge at the same moment: its change may then
        be lost, as with any read-then-write without a lock.
        """
        self.add(value - self.value)

    def reset(self) -> None:
        """Do nothing: OpenSIPS never resets a non-incremental statistic."""


class FunctionStat(Stat):
    """A statistic computed at read time, in the reading process (OpenSIPS ``STAT_IS_FUNC``).

    OpenSIPS lists every function statistic as "non-incremental"; ``incremental=True`` lets a
    program list a monotonic one as "incremental" instead. It is never reset. An exception
    raised by the function propagates to the reader.
    """

    __slots__ = ("_fn",)

    def __init__(self, group: str, short: str, fn: Callable[[], int], *, incremental: bool) -> None:
        super().__init__(group, short, incremental=incremental)
        self._fn = fn

    @property
    def value(self) -> int:
        return int(self._fn())

    def reset(self) -> None:
        """Do nothing: a computed value cannot be reset (OpenSIPS skips these too)."""


_S = TypeVar("_S", bound=Stat)
_C = TypeVar("_C", bound="_CellStat")


def _split(name: str) -> tuple[str, str]:
    """``"group:short"`` -> ``("group", "short")``; a ValueError says what is wrong."""
    group, sep, short = name.partition(":")
    if not sep or not group or not short or ":" in short:
        raise ValueError(
            f"bad statistic name {name!r}: expected 'group:name', "
            "both parts non-empty and without ':'"
        )
    return group, short


class Statistics:
    """All the statistics of one server: declarations, shared memory and queries.

    Names are case-insensitive, as OpenSIPS looks them up: declaring ``Calls:Active`` after
    ``calls:active`` returns the same stat, and a group keeps the spelling it was first declared
    with. Iteration is in declaration order grouped by group (groups in the order they first
    appear), which is the order OpenSIPS prints ``get_statistics all``.
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], Stat] = {}
        self._groups: dict[str, list[Stat]] = {}
        self._first_by_short: dict[str, Stat] = {}
        self._cells: list[_CellStat] = []
        self._layout: _Layout | None = None
        self._row = 0
        self._row_shared = False

    # -- declaring -------------------------------------------------------------------------

    def counter(self, name: str) -> Counter:
        """Declare (or get) the incremental counter ``name`` ("group:name")."""
        return self._declare(name, Counter, lambda g, s: self._add_cell(Counter(g, s, self._n)))

    def gauge(self, name: str) -> Gauge:
        """Declare (or get) the non-incremental gauge ``name`` ("group:name")."""
        return self._declare(name, Gauge, lambda g, s: self._add_cell(Gauge(g, s, self._n)))

    def function(self, name: str, fn: Callable[[], int], incremental: bool = False) -> FunctionStat:
        """Declare (or get) a statistic whose value is ``fn()``, called by each reader.

        If ``name`` is already a function statistic, that one is returned and ``fn`` is unused.
        """
        if not callable(fn):
            raise TypeError(f"statistic function for {name!r} is not callable: {fn!r}")
        return self._declare(
            name, FunctionStat, lambda g, s: FunctionStat(g, s, fn, incremental=incremental)
        )

    @property
    def _n(self) -> int:
        return len(self._cells)

    def _add_cell(self, stat: _C) -> _C:
        self._cells.append(stat)
        return stat

    def _declare(self, name: str, kind: type[_S], build: Callable[[str, str], _S]) -> _S:
        """Return the stat ``name`` if it exists with this kind, else create it.

        Creating is refused after allocate(): the shared memory has a fixed size, and a stat
        declared in one process only would not exist in the others.
        """
        group, short = _split(name)
        key = (group.lower(), short.lower())
        existing = self._stats.get(key)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(
                    f"statistic {existing.name!r} is already declared as a "
                    f"{type(existing).__name__}, not a {kind.__name__}"
                )
            return existing
        if self._layout is not None:
            raise RuntimeError(
                "declare statistics before the server starts: "
                f"{name!r} was declared after allocate()"
            )
        members = self._groups.setdefault(key[0], [])
        stat = build(members[0].group if members else group, short)
        members.append(stat)
        self._stats[key] = stat
        self._first_by_short.setdefault(key[1], stat)
        return stat

    # -- shared memory ---------------------------------------------------------------------

    @property
    def slots(self) -> int | None:
        """The number of worker slots allocated, or None before allocate()."""
        return None if self._layout is None else self._layout.writers - 1

    @property
    def slot(self) -> int | None:
        """The slot this process writes, or None for row 0 (the allocating process)."""
        return None if self._row == 0 else self._row - 1

    def allocate(self, slots: int) -> None:
        """Create the shared memory for ``slots`` worker processes; call it before forking.

        The values counted so far move into the calling process's row. Calling it again with
        the same number of slots does nothing; with another number it raises RuntimeError.
        """
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        if self._layout is not None:
            if self._layout.writers - 1 == slots:
                return
            raise RuntimeError(
                f"statistics are already allocated for {self._layout.writers - 1} slots, "
                f"not {slots}"
            )
        layout = _Layout.shared(slots, len(self._cells))
        for stat in self._cells:
            stat._relocate(layout)
        self._layout = layout
        _track_forks(self)
        _log.debug(
            "statistics: %d cells x %d slots in %d bytes of shared memory",
            len(self._cells),
            slots,
            layout.view.nbytes,
        )

    def attach(self, slot: int) -> None:
        """Write ``slot`` from now on: call it in a forked worker, before it counts anything.

        A worker that replaces a dead one attaches to the dead one's slot and goes on from its
        counts. Two live processes must never attach to the same slot.
        """
        layout = self._layout
        if layout is None:
            raise RuntimeError("attach() needs the shared memory: call allocate() first")
        if not 0 <= slot < layout.writers - 1:
            raise ValueError(f"slot {slot} is out of range 0..{layout.writers - 2}")
        self._row = slot + 1
        self._row_shared = False
        self._rebind()

    def _share_row(self) -> None:
        """After a fork: another process may now write this row too (see the module doc)."""
        if self._layout is not None and not self._row_shared:
            self._row_shared = True
            self._rebind()

    def _rebind(self) -> None:
        layout = self._layout
        assert layout is not None
        for stat in self._cells:
            stat._bind(layout, stat._index, row=self._row, shared=self._row_shared)

    # -- queries ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Stat]:
        """Every stat, group by group, each group in declaration order."""
        for members in self._groups.values():
            yield from members

    def __len__(self) -> int:
        return len(self._stats)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> Stat | None:
        """The stat with the full name ``group:name`` (case-insensitive), or None."""
        group, _, short = name.partition(":")
        return self._stats.get((group.lower(), short.lower()))

    def find(self, short: str) -> Stat | None:
        """OpenSIPS's ``get_stat``: the first declared stat whose short name is ``short``.

        Case-insensitive. A ``group:name`` never matches (short names have no ':'). This is the
        lookup ``reset_statistics`` uses for each of its items.
        """
        return self._first_by_short.get(short.lower())

    def groups(self) -> list[str]:
        """The group names, in the order they were first declared."""
        return [members[0].group for members in self._groups.values()]

    def select(self, items: Iterable[str], *, allow_all: bool = True) -> list[Stat]:
        """The stats named by ``items``, as ``get_statistics`` (OpenSIPS) reads them.

        Each item is ``"all"`` (every stat; exact, lowercase, as OpenSIPS compares it),
        ``"group:"`` (every stat of that group, case-insensitive) or a bare stat name (see
        :meth:`find`). A single ``"group:name"`` matches nothing, as in OpenSIPS. Items that
        match nothing are skipped. The result is in iteration order, without duplicates.

        ``allow_all=False`` treats ``"all"`` as a plain name, as ``list_statistics`` does.
        """
        if isinstance(items, str):
            raise TypeError("select() takes an iterable of names, not a single str")
        chosen: set[Stat] = set()
        for item in items:
            if allow_all and item == "all":
                return list(self)
            chosen.update(self._match(item))
        return [stat for stat in self if stat in chosen]

    def _match(self, item: str) -> list[Stat]:
        if len(item) > 1 and item.endswith(":"):
            return self._groups.get(item[:-1].lower(), [])
        stat = self.find(item)
        return [] if stat is None else [stat]

    def reset_all(self) -> None:
        """Reset every stat that can be reset (``reset_all_statistics``)."""
        for stat in self:
            stat.reset()


_ALLOCATED: weakref.WeakSet[Statistics] = weakref.WeakSet()


def _track_forks(stats: Statistics) -> None:
    """From now on, every fork switches ``stats`` to shared rows (:func:`_after_fork`). The
    hook is registered by the first allocate(), not on import: importing the engine has no
    effect on the process."""
    if not _ALLOCATED:
        _register_fork_hook()
    _ALLOCATED.add(stats)


def _after_fork() -> None:
    """Runs in parent and child after every os.fork(): they now share their rows.

    Both switch to read-modify-write on the row they were writing, so neither overwrites the
    other's counts with a cached total. A child that attach()es gets a row of its own again.
    """
    for stats in list(_ALLOCATED):
        stats._share_row()


@functools.cache
def _register_fork_hook() -> None:
    """Once per process (a hook cannot be unregistered)."""
    os.register_at_fork(after_in_parent=_after_fork, after_in_child=_after_fork)
