"""The subscribers of a server's events: one table for every process of the server.

``event_subscribe`` served by one worker is honoured by every worker, by the supervisor and
by a worker that replaces a dead one: the table lives in shared memory made before the fork
(a ``memfd``, mapped ``MAP_SHARED``), like the statistics (``engine.stats``) and the process
table (``engine.runtime``). It has a fixed number of rows (``max_event_subscribers``): a
subscription beyond them is refused, and counted.

Layout: a header (the generation, bumped by every change, and the next creation number),
then one row per subscriber: whether it is in use, its creation number (lists are newest
first), the event's id, when it was made or renewed and for how long (whole seconds), where
it goes (``Destination``: resolved once, when subscribing, so that no process ever waits for
DNS to deliver) and its socket as the subscriber wrote it.

Writers (subscribe, and dropping rows that expired) hold a lock: ``fcntl`` record locks on
the memfd between processes (the kernel releases them when a process dies, so a worker killed
mid-write never leaves the table locked), and a thread lock within one process, since record
locks do not exclude threads of one process. A row is made visible last (its in-use cell), so
a writer killed half-way leaves no half-written subscriber.

Readers (raising an event, many times a second) take no lock: each process keeps the rows it
last read, with the generation it read them at, and reads them again (under the lock) only
when the generation changed. So raising an event nobody changed the subscriptions of costs a
read of one cell and a dictionary lookup.

Expiry follows OpenSIPS (docs/events.md, "Expiry"): times are whole seconds, and a subscriber
made at second ``since`` for ``expire`` seconds is live while ``since + expire >= now``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import mmap
import os
import socket
import struct
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from midgram.wire.address import UnixAddress

__all__ = [
    "Destination",
    "Subscriber",
    "SubscriptionTable",
    "TableFull",
]

#: The longest socket text a row holds, in UTF-8 bytes: ``udp:`` with a 253-byte host name
#: and a port fits, and so does any UNIX path ``sun_path`` can hold.
SOCKET_TEXT_MAX: Final = 272

# Header: generation, next creation number.
_HEADER: Final = struct.Struct("=qq")
# Row: in use, creation number, event id, since, expire, destination kind, port, scope id,
# address (16 bytes), socket text length, socket text.
_ROW: Final = struct.Struct(f"=qqqqqqqq16sq{SOCKET_TEXT_MAX}s")
_USED: Final = struct.Struct("=q")
_RENEW: Final = struct.Struct("=qq")  # since, expire: the cells a renewal writes
_RENEW_AT: Final = 3 * 8  # their offset in a row
_FREE, _IN_USE = 0, 1


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a subscriber's notifications go, resolved: what a process sends to, and what two
    subscriptions are the same subscriber by (docs/compatibility.md, difference 24).

    ``family`` is ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``; ``address`` the packed IP
    address, or the UNIX path (a leading NUL for an abstract name) in UTF-8.
    """

    family: int
    address: bytes
    port: int = 0
    scope_id: int = 0

    @classmethod
    def unix(cls, address: UnixAddress) -> Destination:
        """A UNIX subscriber's destination: its path, or its abstract name."""
        sockaddr = address.sockaddr()
        path = (
            sockaddr if isinstance(sockaddr, bytes) else sockaddr.encode("utf-8", "surrogateescape")
        )
        return cls(socket.AF_UNIX, path)

    @classmethod
    def ip(cls, family: int, host: str, port: int, scope_id: int = 0) -> Destination:
        """A UDP subscriber's destination, from an address literal (as getaddrinfo gives it)."""
        return cls(family, socket.inet_pton(family, host.partition("%")[0]), port, scope_id)

    def sockaddr(self) -> str | bytes | tuple[str, int] | tuple[str, int, int, int]:
        """The address as ``socket.sendto`` wants it."""
        if self.family == socket.AF_UNIX:
            if self.address.startswith(b"\0"):
                return self.address
            return self.address.decode("utf-8", "surrogateescape")
        host = socket.inet_ntop(self.family, self.address)
        if self.family == socket.AF_INET6:
            return (host, self.port, 0, self.scope_id)
        return (host, self.port)


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One row: a subscription of ``destination`` (written ``socket``) to event ``event``."""

    event: int
    socket: str
    destination: Destination
    since: int
    expire: int
    created: int

    def live(self, now: int) -> bool:
        """Still delivered to at second ``now`` (OpenSIPS's ``since + expire < now`` is gone)."""
        return self.since + self.expire >= now

    def ttl(self, now: int) -> int | str:
        """Seconds left as ``subscribers_list`` shows them: ``"expired"`` in the last one."""
        left = self.expire - (now - self.since)
        return left if left > 0 else "expired"

    def listed(self, now: int) -> dict[str, int | str]:
        return {"socket": self.socket, "expire": self.expire, "ttl": self.ttl(now)}


class TableFull(Exception):
    """Every row holds a live subscriber: a new one is refused."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"all {capacity} subscriber rows are taken")
        self.capacity = capacity


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The live rows as this process last read them."""

    generation: int
    rows: tuple[tuple[int, Subscriber], ...]  # (row index, subscriber), newest first
    by_event: dict[int, tuple[Subscriber, ...]]


_EMPTY: Final = _Snapshot(-1, (), {})


class SubscriptionTable:
    """The subscribers of every event of one server, ``capacity`` rows at most.

    Make it before the fork: every process of the server then shares it. Times are whole
    seconds (``int(time.time())``), passed in by the caller.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0, not {capacity}")
        self.capacity = capacity
        size = _HEADER.size + max(1, capacity) * _ROW.size
        self._fd = _shared_file(size)
        self._memory = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)
        self._thread_lock = threading.Lock()
        self._snapshot = _EMPTY
        _track_forks(self)

    def close(self) -> None:
        """Release this process's mapping (the others keep theirs)."""
        self._snapshot = _EMPTY
        self._memory.close()
        os.close(self._fd)

    # --- reading: no lock while nothing changed ---------------------------------------------

    def live(self, event: int, now: int) -> tuple[Subscriber, ...]:
        """The subscribers ``event`` is delivered to at second ``now``, newest first."""
        snapshot = self._current()
        subscribers = snapshot.by_event.get(event, ())
        if subscribers and not all(s.live(now) for s in subscribers):
            subscribers = tuple(s for s in subscribers if s.live(now))
        return subscribers

    def listed(self, now: int) -> tuple[Subscriber, ...]:
        """Every live subscriber, newest first; rows that expired are freed on the way."""
        with self._locked():
            self._drop_expired(now)
            return tuple(subscriber for _, subscriber in self._read().rows)

    def count(self, now: int) -> int:
        """How many subscribers are live."""
        return sum(1 for _, s in self._current().rows if s.live(now))

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot.generation == self._generation():
            return snapshot
        with self._locked():
            return self._read()

    def _generation(self) -> int:
        generation: int = _HEADER.unpack_from(self._memory, 0)[0]
        return generation

    def _read(self) -> _Snapshot:
        """The rows as they are now (the lock held), kept for the next reads."""
        generation = self._generation()
        if self._snapshot.generation == generation:
            return self._snapshot
        rows = sorted(self._rows(), key=lambda row: -row[1].created)
        by_event: dict[int, list[Subscriber]] = {}
        for _, subscriber in rows:
            by_event.setdefault(subscriber.event, []).append(subscriber)
        self._snapshot = _Snapshot(
            generation, tuple(rows), {event: tuple(subs) for event, subs in by_event.items()}
        )
        return self._snapshot

    def _rows(self) -> Iterator[tuple[int, Subscriber]]:
        memory = self._memory
        for index in range(self.capacity):
            offset = self._offset(index)
            if _USED.unpack_from(memory, offset)[0] != _IN_USE:
                continue
            _, created, event, since, expire, family, port, scope, address, size, text = (
                _ROW.unpack_from(memory, offset)
            )
            destination = Destination(
                family, _address_bytes(family, address, text, size), port, scope
            )
            socket_text = text[:size].decode("utf-8", "surrogateescape")
            yield index, Subscriber(event, socket_text, destination, since, expire, created)

    # --- writing: under the lock -------------------------------------------------------------

    def subscribe(
        self, event: int, socket_text: str, destination: Destination, expire: int, now: int
    ) -> bool:
        """Subscribe, or renew the subscription of the same destination (its ``expire``
        replaced, its socket text kept): True for a new subscriber. ``expire`` 0 removes it
        at once (and makes none). ``TableFull`` when no row is free."""
        encoded = socket_text.encode("utf-8", "surrogateescape")
        if len(encoded) > SOCKET_TEXT_MAX:
            raise ValueError(f"socket text longer than {SOCKET_TEXT_MAX} bytes")
        with self._locked():
            self._drop_expired(now)
            found = self._find(event, destination)
            if expire == 0:
                if found is not None:
                    self._free(found)
                return False
            if found is not None:
                _RENEW.pack_into(self._memory, self._offset(found) + _RENEW_AT, now, expire)
                self._changed()
                return False
            index = self._free_row()
            self._write(
                index, event=event, encoded=encoded, destination=destination, expire=expire, now=now
            )
            return True

    def find(self, event: int, destination: Destination, now: int) -> Subscriber | None:
        """The live subscriber of ``event`` at ``destination``, if any."""
        for subscriber in self.live(event, now):
            if subscriber.destination == destination:
                return subscriber
        return None

    def _find(self, event: int, destination: Destination) -> int | None:
        for index, subscriber in self._read().rows:
            if subscriber.event == event and subscriber.destination == destination:
                return index
        return None

    def _free_row(self) -> int:
        memory = self._memory
        for index in range(self.capacity):
            if _USED.unpack_from(memory, self._offset(index))[0] != _IN_USE:
                return index
        raise TableFull(self.capacity)

    def _write(
        self,
        index: int,
        *,
        event: int,
        encoded: bytes,
        destination: Destination,
        expire: int,
        now: int,
    ) -> None:
        generation, created = _HEADER.unpack_from(self._memory, 0)
        _HEADER.pack_into(self._memory, 0, generation, created + 1)
        address = b"" if destination.family == socket.AF_UNIX else destination.address
        _ROW.pack_into(
            self._memory,
            self._offset(index),
            _FREE,  # made visible last, below
            created,
            event,
            now,
            expire,
            destination.family,
            destination.port,
            destination.scope_id,
            address,
            len(encoded),
            encoded,
        )
        _USED.pack_into(self._memory, self._offset(index), _IN_USE)
        self._changed()

    def _free(self, index: int) -> None:
        _USED.pack_into(self._memory, self._offset(index), _FREE)
        self._changed()

    def _drop_expired(self, now: int) -> None:
        for index, subscriber in self._read().rows:
            if not subscriber.live(now):
                self._free(index)

    def _changed(self) -> None:
        generation, created = _HEADER.unpack_from(self._memory, 0)
        _HEADER.pack_into(self._memory, 0, generation + 1, created)

    def _offset(self, index: int) -> int:
        return _HEADER.size + index * _ROW.size

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock when it forked: the child has no
        # such thread, so the lock starts afresh.
        self._thread_lock = threading.Lock()


def _address_bytes(family: int, address: bytes, text: bytes, size: int) -> bytes:
    """A row's destination address: the packed IP, or the UNIX path from the socket text."""
    if family == socket.AF_UNIX:
        path = text[:size][len(b"unix:") :]
        return b"\0" + path[1:] if path.startswith(b"@") else path
    return address[: 4 if family == socket.AF_INET else 16]


def _shared_file(size: int) -> int:
    """An anonymous file of ``size`` bytes to map and to lock: a memfd where there is one."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("midgram-subscribers", os.MFD_CLOEXEC)
    else:  # pragma: no cover - not Linux
        handle, path = tempfile.mkstemp(prefix="midgram-subscribers-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, size)
    return fd


_TABLES: weakref.WeakSet[SubscriptionTable] = weakref.WeakSet()


def _track_forks(table: SubscriptionTable) -> None:
    if not _TABLES:
        _register_fork_hook()
    _TABLES.add(table)


def _after_fork_in_child() -> None:
    for table in list(_TABLES):
        table._after_fork_in_child()


@functools.cache
def _register_fork_hook() -> None:
    """Once per process (a hook cannot be unregistered), on the first table made."""
    os.register_at_fork(after_in_child=_after_fork_in_child)
