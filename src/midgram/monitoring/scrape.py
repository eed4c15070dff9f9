"""One scrape of one MI server: every statistic, its type, the uptime and the processes.

Statistics are fetched group by group, never with one ``get_statistics all``: a reply must
fit in one datagram (65457 bytes by default), and a server with many workers or many
statistics has more than that (VoIPGRID's exporter broke so at 128 workers). The groups'
requests go out together, a few in flight at a time, so the server's workers answer them
in parallel.

- OpenSIPS and midgram: ``list_statistics`` names every statistic and says whether it is
  incremental (a counter) or not (a gauge); then ``get_statistics GROUP: ...``, groups packed
  into requests whose replies should take a quarter of a datagram (one request per group
  costs the server a request each: ``OpenSIPSReader``). When
  a reply is still too large (the server answers ``500 Internal error``, or -32603 with
  midgram's ``json_errors``), the request is split in halves until the parts fit: the
  groups of a listing, the statistics of a group. A listing of everything that does not fit
  is replaced by listings of the groups the exporter knows of: the servers' own groups,
  the modules that export the server's commands (``which``, then ``help``), those seen
  before on this target and those given with ``--group``.
- Kamailio (jsonrpcs, kex): ``cnt.grps_list`` names the groups (the ``counters`` module),
  then ``stats.fetchn GROUP:`` per group; without ``counters``, one ``stats.fetchn all``.
  Kamailio does not say which statistics are counters: they are exported untyped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from midgram.client.calls import AsyncClient
from midgram.errors import ClientError, PlainTextError, RemoteError
from midgram.wire.jsonrpc import Params

__all__ = [
    "IN_FLIGHT",
    "MI",
    "Kind",
    "Process",
    "Reading",
    "Snapshot",
    "Stat",
    "StatsReader",
    "too_big",
]

#: Requests in flight to one server during a scrape: enough to keep a few workers busy,
#: few enough not to fill a UNIX socket's queue (10 datagrams by default) with one scrape.
IN_FLIGHT: Final = 8
#: JSON-RPC "Internal error": what midgram's json_errors sends for a reply too large.
_INTERNAL_ERROR: Final = -32603
#: OpenSIPS's "500 Internal error": what it sends for a reply larger than its buffer.
_PLAIN_INTERNAL_ERROR: Final = 500
_NOT_FOUND: Final = 404
_UP_TIME_RE: Final = re.compile(r"\s*([0-9]+)")


class Kind(enum.Enum):
    """A statistic's type: what list_statistics calls incremental is a counter."""

    COUNTER = "counter"
    GAUGE = "gauge"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Stat:
    """One statistic's value: ``group:short`` as the server names it."""

    group: str
    short: str
    value: float
    kind: Kind


@dataclass(frozen=True)
class Process:
    """One server process: its number (``ps`` ID, Kamailio's IDX), pid and description."""

    id: int
    pid: int
    desc: str


@dataclass(frozen=True)
class Reading:
    """A value that is not a statistic, from a collector: ``<prefix>_<stem>``."""

    stem: str
    value: float
    kind: Kind
    help: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class Snapshot:
    """What one scrape of one target found. ``up`` is False when the server did not answer
    (``error`` says why); ``failed_groups`` answered with an error or did not fit."""

    target: str
    up: bool = False
    seconds: float = 0.0
    stats: list[Stat] = field(default_factory=list)
    uptime: float | None = None
    processes: list[Process] | None = None
    readings: list[Reading] = field(default_factory=list)
    failed_groups: list[str] = field(default_factory=list)
    error: str | None = None


def too_big(exc: ClientError) -> bool:
    """Whether the server refused to build a reply larger than its buffer."""
    if isinstance(exc, PlainTextError):
        return exc.status == 500
    return isinstance(exc, RemoteError) and exc.code == _INTERNAL_ERROR


def _not_found(exc: ClientError) -> bool:
    return isinstance(exc, RemoteError) and exc.code == _NOT_FOUND


class MI:
    """A target's client during one scrape: at most ``IN_FLIGHT`` requests at a time."""

    def __init__(self, client: AsyncClient, in_flight: int = IN_FLIGHT) -> None:
        self.client = client
        self.dialect = client.dialect
        self._slots = asyncio.Semaphore(in_flight)

    async def call(self, method: str, params: Params = None) -> Any:
        async with self._slots:
            return await self.client.request(method, params)


class StatsReader(Protocol):
    """How one server family's statistics are read (one reader per target: it may learn)."""

    async def read(self, mi: MI, wanted: Sequence[str] | None) -> tuple[list[Stat], list[str]]:
        """Every statistic (of the ``wanted`` groups only, if given), and the groups that
        could not be read. Raises ``ClientError`` when the server does not answer at all."""
        ...


# --- OpenSIPS and midgram ----------------------------------------------------------------

#: Statistic groups the servers themselves register, whatever their modules: OpenSIPS's
#: core (statistics.c, core_stats.c, pt_load.c and the db/cachedb/dns layers) and midgram's.
CORE_GROUPS: Final = (
    "core",
    "shmem",
    "rpmem",
    "net",
    "load",
    "pkmem",
    "dns",
    "sql",
    "cdb",
    "mi_datagram",
)
Catalogue = dict[str, dict[str, Kind]]  # group -> short name -> kind
Halved = tuple[dict[str, Any], list[str]]


async def halving(
    fetch: Callable[[list[str]], Awaitable[dict[str, Any]]], items: list[str]
) -> Halved:
    """``fetch(items)``, split in halves while its reply is too large; (merged replies, the
    items that did not fit even alone). A 404 (nothing found) is an empty reply."""
    try:
        return await fetch(items), []
    except ClientError as exc:
        if _not_found(exc):
            return {}, []
        if not too_big(exc):
            raise
        if len(items) == 1:
            return {}, items
    middle = len(items) // 2
    parts = await asyncio.gather(halving(fetch, items[:middle]), halving(fetch, items[middle:]))
    merged: dict[str, Any] = {}
    failed: list[str] = []
    for replied, lost in parts:
        merged.update(replied)
        failed += lost
    return merged, failed


def _kind(text: Any) -> Kind:
    return Kind.COUNTER if text == "incremental" else Kind.GAUGE


def _catalogue(listed: Mapping[str, Any]) -> Catalogue:
    catalogue: Catalogue = {}
    for name, kind in listed.items():
        group, sep, short = name.partition(":")
        if sep:
            catalogue.setdefault(group, {})[short] = _kind(kind)
    return catalogue


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class OpenSIPSReader:
    """``list_statistics``, then ``get_statistics`` by groups (see the module doc).

    Groups are packed into requests whose replies should take about ``budget`` bytes, each
    reply estimated from its statistics' names: one request per group would cost the server
    a request each (measured with bench/scrape.py: 129 groups, 26 times the server CPU of one
    ``get_statistics all``). A request whose reply still does not fit is split, and the
    budget for this target halved. ``groups``: more groups to look for when a listing of
    everything does not fit; that it does not is remembered, as are the groups found.
    """

    def __init__(self, groups: Iterable[str] = ()) -> None:
        self.extra_groups = tuple(groups)
        self.budget = REPLY_BUDGET
        self._seen: frozenset[str] = frozenset()
        self._modules: frozenset[str] | None = None
        self._list_all_fits = True

    async def read(self, mi: MI, wanted: Sequence[str] | None) -> tuple[list[Stat], list[str]]:
        catalogue, failed = await self._list(mi, wanted)
        self._seen |= frozenset(catalogue)
        chunks = _packed(catalogue, self.budget)
        results = await asyncio.gather(*(self._values(mi, chunk, catalogue) for chunk in chunks))
        stats: list[Stat] = []
        for found, lost in results:
            stats += found
            failed += lost
        return stats, failed

    async def _list(self, mi: MI, wanted: Sequence[str] | None) -> tuple[Catalogue, list[str]]:
        async def listing(items: list[str]) -> dict[str, Any]:
            return _mapping(await mi.call("list_statistics", {"statistics": items}))

        if wanted is not None and not wanted:
            return {}, []  # collect[] named collectors only
        items = [f"{group}:" for group in wanted] if wanted else None
        if items is not None or self._list_all_fits:
            try:
                if items is None:
                    return _catalogue(_mapping(await mi.call("list_statistics"))), []
                return _catalogue(await listing(items)), []
            except ClientError as exc:
                if _not_found(exc):
                    return {}, []
                if not too_big(exc):
                    raise
            self._list_all_fits = items is not None
        candidates = items or [f"{group}:" for group in await self._candidates(mi)]
        listed, lost = await halving(listing, candidates)
        return _catalogue(listed), [item.rstrip(":") for item in lost]

    async def _candidates(self, mi: MI) -> list[str]:
        if self._modules is None:
            self._modules = frozenset(await _command_modules(mi))
        groups = {*CORE_GROUPS, *self._seen, *self._modules, *self.extra_groups}
        return sorted(groups)

    async def _values(
        self, mi: MI, groups: list[str], catalogue: Catalogue
    ) -> tuple[list[Stat], list[str]]:
        """The statistics of ``groups``, in one request if it fits, else split."""
        lost: list[str] = []
        try:
            got = await _get(mi, [f"{group}:" for group in groups])
        except ClientError as exc:
            if _not_found(exc):
                return [], []
            if not too_big(exc):
                return [], groups
            self.budget = max(MIN_REPLY_BUDGET, _estimate(groups, catalogue) // 2)
            if len(groups) > 1:
                middle = len(groups) // 2
                halves = await asyncio.gather(
                    self._values(mi, groups[:middle], catalogue),
                    self._values(mi, groups[middle:], catalogue),
                )
                return [*halves[0][0], *halves[1][0]], [*halves[0][1], *halves[1][1]]
            # One group too large for one reply: its statistics by name, in parts that fit.
            (group,) = groups
            got, lost = await halving(lambda names: _get(mi, names), sorted(catalogue[group]))
            lost = [group] if lost else []
        return _stats(got, catalogue), lost


#: The size a request's reply is meant to take: a quarter of OpenSIPS's default buffer, so
#: a server with the default fits a few groups in each, and its workers answer the requests
#: in parallel. A server with a smaller buffer teaches the exporter a smaller one.
REPLY_BUDGET: Final = 16384
MIN_REPLY_BUDGET: Final = 512
#: A reply entry beside its name: quotes, colon, comma and up to 20 digits.
_ENTRY_OVERHEAD: Final = 26


def _estimate(groups: Iterable[str], catalogue: Catalogue) -> int:
    """The expected size of the get_statistics reply for ``groups``."""
    return sum(
        len(group) + len(short) + _ENTRY_OVERHEAD for group in groups for short in catalogue[group]
    )


def _packed(catalogue: Catalogue, budget: int) -> list[list[str]]:
    """The groups, in runs whose expected replies stay within ``budget`` (a group larger than
    that is a run of its own)."""
    runs: list[list[str]] = []
    size = budget
    for group in catalogue:
        cost = _estimate([group], catalogue)
        if size + cost > budget:
            runs.append([])
            size = 0
        runs[-1].append(group)
        size += cost
    return runs


async def _get(mi: MI, items: list[str]) -> dict[str, Any]:
    return _mapping(await mi.call("get_statistics", {"statistics": items}))


def _stats(got: Mapping[str, Any], catalogue: Catalogue) -> list[Stat]:
    """The statistics of a get_statistics reply that belong to the catalogue's groups."""
    stats = []
    for name, raw in got.items():
        group, _, short = name.partition(":")
        kinds = catalogue.get(group)
        value = _number(raw)
        if kinds is not None and value is not None:
            stats.append(Stat(group, short, value, kinds.get(short, Kind.UNKNOWN)))
    return stats


async def _command_modules(mi: MI) -> set[str]:
    """The modules exporting the server's commands: their names are the statistics groups
    of most modules. OpenSIPS 4 lists ``module:command``; otherwise ``help`` says."""
    names = await mi.call("which")
    if not isinstance(names, list):
        return set()
    canonical = {name.partition(":")[0] for name in names if isinstance(name, str) and ":" in name}
    if canonical:
        return canonical

    async def module_of(name: str) -> str | None:
        with contextlib.suppress(ClientError):
            info = await mi.call("help", {"mi_cmd": name})
            if isinstance(info, dict) and isinstance(info.get("Exported by"), str):
                return str(info["Exported by"])
        return None

    found = await asyncio.gather(*(module_of(n) for n in names if isinstance(n, str)))
    return {module for module in found if module}


def _mapping(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else {}


# --- Kamailio --------------------------------------------------------------------------------


class KamailioReader:
    """``cnt.grps_list``, then ``stats.fetchn GROUP:`` per group; ``stats.fetchn all``
    without the counters module."""

    async def read(self, mi: MI, wanted: Sequence[str] | None) -> tuple[list[Stat], list[str]]:
        if wanted is not None:
            groups = list(wanted)
        else:
            try:
                groups = [g for g in await mi.call("cnt.grps_list") if isinstance(g, str)]
            except RemoteError:  # no counters module: everything at once
                return _kamailio_stats(_mapping(await mi.call("stats.fetchn", ["all"]))), []
        results = await asyncio.gather(*(self._group(mi, group) for group in groups))
        stats: list[Stat] = []
        failed: list[str] = []
        for group, found in zip(groups, results, strict=True):
            if found is None:
                failed.append(group)
            else:
                stats += found
        return stats, failed

    async def _group(self, mi: MI, group: str) -> list[Stat] | None:
        try:
            return _kamailio_stats(_mapping(await mi.call("stats.fetchn", [f"{group}:"])))
        except ClientError:
            return None


def _kamailio_stats(fetched: Mapping[str, Any]) -> list[Stat]:
    stats = []
    for name, raw in fetched.items():
        group, sep, short = name.partition(".")
        value = _number(raw)
        if sep and value is not None:
            stats.append(Stat(group, short, value, Kind.UNKNOWN))
    return stats


# --- uptime and processes --------------------------------------------------------------------


async def opensips_uptime(mi: MI) -> float | None:
    """``uptime``'s "Up time": "123 [sec]"."""
    result = await mi.call("uptime")
    text = result.get("Up time") if isinstance(result, dict) else None
    match = _UP_TIME_RE.match(text) if isinstance(text, str) else None
    return float(match.group(1)) if match else None


async def kamailio_uptime(mi: MI) -> float | None:
    """``core.uptime``'s "uptime" (seconds)."""
    result = await mi.call("core.uptime")
    return _number(result.get("uptime")) if isinstance(result, dict) else None


async def opensips_processes(mi: MI) -> list[Process] | None:
    """``ps``: {"Processes": [{"ID", "PID", "Type"}, ...]}."""
    result = await mi.call("ps")
    rows = result.get("Processes") if isinstance(result, dict) else None
    return _processes(rows, "ID", "PID", "Type")


async def kamailio_processes(mi: MI) -> list[Process] | None:
    """``core.psx``: [{"IDX", "PID", "DSC"}, ...]."""
    return _processes(await mi.call("core.psx"), "IDX", "PID", "DSC")


def _processes(rows: Any, number: str, pid: str, desc: str) -> list[Process] | None:
    if not isinstance(rows, list):
        return None
    found = []
    for row in rows:
        if (
            isinstance(row, dict)
            and isinstance(row.get(number), int)
            and isinstance(row.get(pid), int)
        ):
            found.append(Process(row[number], row[pid], str(row.get(desc, ""))))
    return found


# --- one scrape --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFamily:
    """What differs between OpenSIPS (and midgram) and Kamailio for a scrape."""

    name: str
    reader: Callable[[Sequence[str]], StatsReader]
    uptime: Callable[[MI], Awaitable[float | None]]
    processes: Callable[[MI], Awaitable[list[Process] | None]]


FAMILIES: Final = {
    "opensips": ServerFamily("opensips", OpenSIPSReader, opensips_uptime, opensips_processes),
    "kamailio": ServerFamily(
        "kamailio", lambda _groups: KamailioReader(), kamailio_uptime, kamailio_processes
    ),
}


class Collector(Protocol):
    """A non-statistic reading (``--collector``): called once per scrape of each target.

    ``name`` is what ``collect[]=NAME`` selects it by. ``collect`` returns readings; a
    ``ClientError`` it raises is logged and costs only its own readings.
    """

    name: str

    async def collect(self, mi: MI) -> list[Reading]: ...


async def scrape(
    client: AsyncClient,
    reader: StatsReader,
    family: ServerFamily,
    *,
    wanted: Sequence[str] | None = None,
    collectors: Sequence[Collector] = (),
    deadline: float | None = None,
) -> Snapshot:
    """One target's snapshot. Never raises for the server's sake: a server that does not
    answer is a snapshot with ``up`` False and the reason in ``error``.

    ``wanted``: only these statistic groups (``collect[]``); ``deadline``: seconds for the
    whole scrape, after which it counts as failed."""
    snapshot = Snapshot(client.target)
    started = time.monotonic()
    mi = MI(client)
    try:
        async with asyncio.timeout(deadline):
            await _fill(
                snapshot,
                mi=mi,
                reader=reader,
                family=family,
                wanted=wanted,
                collectors=collectors,
            )
        snapshot.up = True
    except ClientError as exc:
        snapshot.error = str(exc)
    except TimeoutError:
        snapshot.error = f"the scrape took more than {deadline:g} s"
    snapshot.seconds = time.monotonic() - started
    return snapshot


async def _fill(
    snapshot: Snapshot,
    *,
    mi: MI,
    reader: StatsReader,
    family: ServerFamily,
    wanted: Sequence[str] | None,
    collectors: Sequence[Collector],
) -> None:
    stats_task = asyncio.ensure_future(_answered(reader.read(mi, wanted)))
    extras = [
        _optional(family.uptime(mi)),
        _optional(family.processes(mi)),
        *(_optional(collector.collect(mi)) for collector in collectors),
    ]
    extra_task = asyncio.gather(*extras)
    try:
        snapshot.stats, snapshot.failed_groups = await stats_task
    finally:
        done = await extra_task
    uptime, processes, *readings = done
    snapshot.uptime = uptime
    snapshot.processes = processes
    for found in readings:
        snapshot.readings += found or []


#: What ``scrape_failed_groups`` counts when a server that answers has no statistics
#: commands (a Kamailio without kex) or refused them.
NO_STATISTICS: Final = "*"


async def _answered(work: Awaitable[tuple[list[Stat], list[str]]]) -> tuple[list[Stat], list[str]]:
    """The statistics read; none when the server answered the reading with an error: it is
    up all the same (only silence, a refusal to connect or garbage is down)."""
    try:
        return await work
    except (RemoteError, PlainTextError):
        return [], [NO_STATISTICS]


async def _optional(work: Awaitable[Any]) -> Any:
    """A reading that may fail alone: None instead of its error."""
    try:
        return await work
    except ClientError:
        return None
