"""Snapshots as Prometheus metric families, written by ``prometheus_client``.

Every sample carries ``target="..."``. Each statistic becomes one family per Prometheus name
(``naming.py``), typed from ``list_statistics``: incremental is a counter, the rest gauges,
Kamailio's untyped. One family can gather statistics of several groups or targets; if they
disagree on the type it is exported untyped rather than wrongly. ``# HELP`` says which MI
statistic a family comes from, so a graph can be traced back to ``midgram call``.

The exporter's own families, for every target whether it answered or not:

- ``<prefix>_up``: 1 if the server answered, 0 if not (the scrape itself never fails);
- ``<prefix>_scrape_duration_seconds``: how long its scrape took;
- ``<prefix>_scrape_failed_groups``: groups that answered with an error or did not fit;

and when the server says: ``<prefix>_uptime_seconds`` and ``<prefix>_processes_listed`` (not
``_processes``: midgram has a ``core:processes`` statistic of its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from midgram.monitoring.naming import Naming, Series
from midgram.monitoring.scrape import Kind, Process, Snapshot, Stat

__all__ = ["SnapshotCollector", "families"]

TARGET_LABEL: Final = "target"
_FAMILY_CLASS: Final = {
    Kind.COUNTER: CounterMetricFamily,
    Kind.GAUGE: GaugeMetricFamily,
    Kind.UNKNOWN: UnknownMetricFamily,
}


@dataclass
class _Family:
    """Samples gathered under one name before their type is settled."""

    help: str
    kinds: set[Kind] = field(default_factory=set)
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        kind = self.kinds.pop() if len(self.kinds) == 1 else Kind.UNKNOWN
        family: Metric = _FAMILY_CLASS[kind](name, self.help)
        sample_name = f"{family.name}_total" if kind is Kind.COUNTER else family.name
        for labels, value in self.samples:
            family.add_sample(sample_name, labels, value)
        return family


class _Families:
    """Families by name, in the order first seen."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Family] = {}

    def add(
        self, name: str, kind: Kind, help_text: str, labels: dict[str, str], value: float
    ) -> None:
        family = self._by_name.setdefault(name, _Family(help_text))
        family.kinds.add(kind)
        family.samples.append((labels, value))

    def metrics(self) -> Iterator[Metric]:
        for name, family in self._by_name.items():
            yield family.metric(name)


def families(snapshots: Iterable[Snapshot], naming: Naming) -> list[Metric]:
    """The metric families of these snapshots (one per target)."""
    out = _Families()
    for snapshot in snapshots:
        _add_snapshot(out, snapshot, naming)
    return list(out.metrics())


def _add_snapshot(out: _Families, snapshot: Snapshot, naming: Naming) -> None:
    target = {TARGET_LABEL: snapshot.target}
    own = [
        ("up", Kind.GAUGE, "1 if the MI server answered the scrape, 0 if not", float(snapshot.up)),
        (
            "scrape_duration_seconds",
            Kind.GAUGE,
            "seconds the exporter's scrape of the MI server took",
            snapshot.seconds,
        ),
        (
            "scrape_failed_groups",
            Kind.GAUGE,
            "statistic groups that could not be read (an error, or too large for a datagram)",
            float(len(snapshot.failed_groups)),
        ),
    ]
    if snapshot.uptime is not None:
        own.append(
            ("uptime_seconds", Kind.GAUGE, "seconds since the server started", snapshot.uptime)
        )
    if snapshot.processes is not None:
        own.append(
            (
                "processes_listed",
                Kind.GAUGE,
                "processes the server lists (ps, core.psx)",
                float(len(snapshot.processes)),
            )
        )
    for stem, kind, help_text, value in own:
        out.add(naming.metric(stem), kind, help_text, dict(target), value)
    processes = {process.id: process for process in snapshot.processes or ()}
    for stat in snapshot.stats:
        series = naming.series(stat.group, stat.short)
        labels = {**target, **dict(series.labels), **_process_labels(series, processes)}
        out.add(series.name, stat.kind, _help(stat, series), labels, stat.value)
    for reading in snapshot.readings:
        labels = {**target, **dict(reading.labels)}
        out.add(naming.metric(reading.stem), reading.kind, reading.help, labels, reading.value)


def _process_labels(series: Series, processes: dict[int, Process]) -> dict[str, str]:
    process = processes.get(series.process) if series.process is not None else None
    if process is None:
        return {}
    return {"pid": str(process.pid), "desc": process.desc}


def _help(stat: Stat, series: Series) -> str:
    per = ", per process (id N)" if series.process is not None else ""
    return f"MI statistic {stat.group}:{series.source}{per}"


class SnapshotCollector:
    """A ``prometheus_client`` collector of snapshots already taken (one scrape's)."""

    def __init__(self, snapshots: Sequence[Snapshot], naming: Naming) -> None:
        self._metrics = families(snapshots, naming)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)
