"""One exporter scrape of a midgram server with many statistics: its time and CPU.

    python bench/scrape.py [--groups 128] [--per-group 8] [--children 4] [--rounds 7] [--scrapes 20]

Starts ``midgram serve`` with ``--app scrape:registry`` (``--groups`` groups of
``--per-group`` counters, plus 16 processes' worth of pkmem-style statistics), then times,
interleaved round after round:

- ``exporter``: one scrape as ``midgram exporter`` does it (``list_statistics``,
  ``get_statistics GROUP:`` per group, ``uptime``, ``ps``), rendered to the text format;
- ``get all``: the reference, one ``get_statistics all`` (what VoIPGRID's exporter sends;
  it only works while the reply fits in a datagram).

For each: wall time per scrape (median of the rounds, with min-max), the server's CPU per
scrape (utime+stime of its whole process tree, from /proc) and the scraping process's CPU.
Run it on an idle machine; the ratios are the figures to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midgram.client.calls import AsyncClient, Client
from midgram.engine.registry import Registry
from midgram.monitoring.exporter import Exporter
from midgram.monitoring.naming import GroupMode, Naming

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def registry() -> Registry:
    """The served statistics (sizes from the environment the benchmark sets)."""
    groups = int(os.environ.get("SCRAPE_GROUPS", "128"))
    per_group = int(os.environ.get("SCRAPE_PER_GROUP", "8"))
    served = Registry(module="bench")
    for number in range(groups):
        for index in range(per_group):
            served.stats.counter(f"group{number:03d}:counter_{index}").inc(number * index)
    for process in range(16):
        for field in ("total_size", "used_size", "real_used_size", "free_size", "fragments"):
            served.stats.gauge(f"pkmem:{process}-{field}").set(process * 1000)
    return served


def tree_cpu(pid: int) -> float:
    """utime+stime, in seconds, of ``pid`` and its children (the supervisor and workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def measure(work: Callable[[], Any], scrapes: int, server_pid: int) -> dict[str, float]:
    cpu_before, own_before, started = tree_cpu(server_pid), time.process_time(), time.perf_counter()
    for _ in range(scrapes):
        work()
    elapsed = time.perf_counter() - started
    return {
        "ms": elapsed / scrapes * 1000,
        "server_cpu_ms": (tree_cpu(server_pid) - cpu_before) / scrapes * 1000,
        "client_cpu_ms": (time.process_time() - own_before) / scrapes * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=128)
    parser.add_argument("--per-group", type=int, default=8)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes per round")
    opts = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="mgscrape", dir="/tmp")
    target = f"{folder}/mi.sock"
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "SCRAPE_GROUPS": str(opts.groups),
        "SCRAPE_PER_GROUP": str(opts.per_group),
    }
    command = [sys.executable, "-m", "midgram", "serve", "-s", target]
    command += ["-c", str(opts.children), "--app", "scrape:registry", "--log-level", "error"]
    server = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _run(opts, target, server)
    finally:
        server.terminate()
        server.wait(10)


def _run(opts: argparse.Namespace, target: str, server: subprocess.Popen[bytes]) -> None:
    client = Client(target, timeout=5)
    deadline = time.monotonic() + 20
    while True:  # ready when it answers
        try:
            client.call("uptime")
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            time.sleep(0.05)
    engine = Exporter(
        [target], dialect="opensips", naming=Naming("opensips", GroupMode.LABEL), timeout=5
    )
    count = len(client.call("list_statistics"))
    all_bytes = len(str(client.call("get_statistics", statistics=["all"])))

    def exporter_scrape() -> None:
        (snapshot,) = engine.snapshots([target])
        assert snapshot.up, snapshot.error
        assert not snapshot.failed_groups, snapshot.failed_groups
        engine.render([snapshot])

    def get_all() -> None:
        asyncio.run(AsyncClient(target, timeout=5).call("get_statistics", statistics=["all"]))

    cases = {"exporter": exporter_scrape, "get all": get_all}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(opts.rounds):
        for name, work in cases.items():
            rounds[name].append(measure(work, opts.scrapes, server.pid))
    print(
        f"{count} statistics in {opts.groups + 1} groups (get_statistics all: ~{all_bytes} "
        f"bytes), {opts.children} workers; {opts.rounds} rounds of {opts.scrapes} scrapes"
    )
    print(f"{'':10} {'ms/scrape':>20} {'server CPU ms':>20} {'scraper CPU ms':>20}")
    medians = {}
    for name, runs in rounds.items():
        row = [name.ljust(10)]
        for key in ("ms", "server_cpu_ms", "client_cpu_ms"):
            values = [run[key] for run in runs]
            medians[name, key] = statistics.median(values)
            row.append(f"{medians[name, key]:8.2f} ({min(values):.2f}-{max(values):.2f})".rjust(20))
        print(" ".join(row))
    ratio = " ".join(
        f"{key}: x{medians['exporter', key] / medians['get all', key]:.1f}"
        for key in ("ms", "server_cpu_ms", "client_cpu_ms")
        if medians["get all", key] > 0
    )
    print(f"exporter / get all: {ratio}")


if __name__ == "__main__":
    main()
