"""A real ``midgram exporter`` for the tests, and what its scrapes say.

``running_exporter(...)`` starts ``python -m midgram exporter --listen 127.0.0.1:0`` with the
given flags, waits (with a deadline) for the line that says where it listens, and stops it
afterwards. ``scrape`` fetches a page over HTTP; ``samples`` parses an exposition with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from servers import READY_TIMEOUT, ROOT

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
PROMTOOL_MISSING = "promtool is not installed (apt-get install prometheus)"
PROMETHEUS_MISSING = "prometheus is not installed (apt-get install prometheus)"
_LISTENING_RE = re.compile(r"listening on (http://\S+)/metrics")


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            match = _LISTENING_RE.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """(status, body) of GET ``path``."""
        request = urllib.request.Request(self.url + path, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - ours
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def exporter_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "midgram", "exporter", *flags]


@contextlib.contextmanager
def running_exporter(*flags: str) -> Iterator[ExporterProcess]:
    proc = subprocess.Popen(
        exporter_command("--listen", "127.0.0.1:0", *flags),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )
    exporter = ExporterProcess(proc)
    pump = threading.Thread(target=exporter._pump, daemon=True)
    pump.start()
    try:
        if not exporter._ready.wait(READY_TIMEOUT) or not exporter.url:
            raise AssertionError(f"midgram exporter did not start:\n{''.join(exporter.lines)}")
        yield exporter
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pump.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition: (sample name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def types(text: str) -> dict[str, str]:
    """Family name -> type, as the exposition declares them."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]
