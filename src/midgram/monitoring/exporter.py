"""The exporter: scrapes MI servers when Prometheus asks, and answers in its format.

Two endpoints, as blackbox_exporter and snmp_exporter have them:

- ``/metrics``: every target the exporter was started with, each series labelled
  ``target="..."``;
- ``/probe?target=T``: that one target, so one exporter serves a fleet through Prometheus's
  relabelling. Only a configured target, unless ``probe_any``: an exporter that sends
  datagrams wherever a URL says is a way into every socket its user may write to.

Both take ``collect[]=GROUP`` (repeatable; ``core`` or ``core:``) to read only those
statistic groups, as VoIPGRID's exporter does; a collector's name selects that collector.

Nothing is cached between scrapes: each request reads the servers afresh, its targets in
parallel (a thread per HTTP request, an asyncio loop per scrape). Prometheus's own scrape
timeout (its ``X-Prometheus-Scrape-Timeout-Seconds`` header) bounds the scrape, so a slow
server shows as ``up 0`` rather than as a failed scrape of every target.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Final
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import choose_encoder

from midgram.client.calls import AsyncClient
from midgram.errors import AddressError
from midgram.monitoring.exposition import SnapshotCollector
from midgram.monitoring.naming import Naming
from midgram.monitoring.scrape import FAMILIES, Collector, Snapshot, StatsReader, scrape
from midgram.wire.address import parse_target

__all__ = ["DEFAULT_PORT", "Exporter", "ExporterServer", "serve_http"]

log = logging.getLogger(__name__)

#: The port VoIPGRID's opensips_exporter listens on, whose role this one takes: scrape
#: configs and firewall rules written for it carry over. The Prometheus wiki's range for
#: exporters' default ports, 9100-9999, is all allocated: there is no new one to claim.
DEFAULT_PORT: Final = 9434
#: Taken off Prometheus's scrape timeout, for the answer to travel back.
_TIMEOUT_MARGIN: Final = 0.25
_MIN_DEADLINE: Final = 0.1
_INDEX: Final = """<html><head><title>midgram exporter</title></head><body>
<h1>midgram exporter</h1>
<p><a href="/metrics">/metrics</a>: every target ({targets})</p>
<p>/probe?target=TARGET: one target (multi-target pattern)</p>
<p>?collect[]=GROUP: only these statistic groups</p>
</body></html>
"""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
#: An HTTP answer: status line, headers, body.
Answer = tuple[str, list[tuple[str, str]], bytes]


class Exporter:
    """What to scrape and how to name it. ``targets``: the configured targets (canonical
    texts); ``groups``: more statistic groups to look for when a server's listing of
    everything does not fit in a datagram; ``collectors``: non-statistic readings."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        dialect: str,
        naming: Naming,
        timeout: float,
        probe_any: bool = False,
        groups: Sequence[str] = (),
        collectors: Sequence[Collector] = (),
    ) -> None:
        self.targets = tuple(targets)
        self.dialect = dialect
        self.naming = naming
        self.timeout = timeout
        self.probe_any = probe_any
        self.groups = tuple(groups)
        self.collectors = tuple(collectors)
        self._family = FAMILIES[dialect]
        self._readers: dict[str, StatsReader] = {}
        self._lock = threading.Lock()

    def reader(self, target: str) -> StatsReader:
        """The statistics reader of ``target``: one per configured target, kept (it learns
        a server's groups and reply sizes); a fresh one for a target ``/probe`` named with
        ``probe_any``, which any URL may do: nothing is kept for those."""
        if target not in self.targets:
            return self._family.reader(self.groups)
        with self._lock:
            if target not in self._readers:
                self._readers[target] = self._family.reader(self.groups)
            return self._readers[target]

    async def scrape(
        self, targets: Sequence[str], collect: Sequence[str] = (), deadline: float | None = None
    ) -> list[Snapshot]:
        """One snapshot per target, all scraped at once."""
        wanted, collectors = self._selection(collect)
        return list(
            await asyncio.gather(
                *(
                    scrape(
                        AsyncClient(target, timeout=self.timeout, dialect=self.dialect),
                        self.reader(target),
                        self._family,
                        wanted=wanted,
                        collectors=collectors,
                        deadline=deadline,
                    )
                    for target in targets
                )
            )
        )

    def snapshots(
        self, targets: Sequence[str], collect: Sequence[str] = (), deadline: float | None = None
    ) -> list[Snapshot]:
        """``scrape`` run to completion (in a loop of its own); a target down is logged."""
        snapshots = asyncio.run(self.scrape(targets, collect, deadline))
        for snapshot in snapshots:
            if not snapshot.up:
                log.warning("%s: %s", snapshot.target, snapshot.error)
        return snapshots

    def render(self, snapshots: Sequence[Snapshot], accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of these snapshots, in the format ``accept`` prefers."""
        encoder, content_type = choose_encoder(accept)
        return encoder(SnapshotCollector(snapshots, self.naming)), content_type

    def exposition(
        self,
        targets: Sequence[str],
        collect: Sequence[str] = (),
        deadline: float | None = None,
        accept: str = "",
    ) -> tuple[bytes, str]:
        """One fresh scrape of ``targets``, rendered."""
        return self.render(self.snapshots(targets, collect, deadline), accept)

    def _selection(self, collect: Sequence[str]) -> tuple[list[str] | None, tuple[Collector, ...]]:
        if not collect:
            return None, self.collectors
        names = {item.rstrip(":") for item in collect if item.rstrip(":")}
        chosen = tuple(c for c in self.collectors if c.name in names)
        groups = sorted(names - {c.name for c in chosen})
        return groups, chosen

    def probe_target(self, text: str) -> str:
        """The canonical target ``/probe?target=text`` may scrape; ``PermissionError`` when
        it is not a configured one (and ``probe_any`` is off), ``AddressError`` when it does
        not parse."""
        canonical = str(parse_target(text))
        if canonical not in self.targets and not self.probe_any:
            raise PermissionError(
                f"target {canonical!r} is not one the exporter was started with (-t); "
                "start it with --probe-any to allow any"
            )
        return canonical

    def wsgi(self) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
        """The HTTP side: ``/metrics``, ``/probe``, ``/`` and ``/-/healthy``."""

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            status, headers, body = self._answer(environ)
            if _gzip_accepted(environ) and len(body) > 0 and status.startswith("200"):
                body = gzip.compress(body)
                headers.append(("Content-Encoding", "gzip"))
            headers.append(("Content-Length", str(len(body))))
            start_response(status, headers)
            return [body]

        return app

    def _answer(self, environ: dict[str, Any]) -> Answer:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text("405 Method Not Allowed", "use GET\n", [("Allow", "GET, HEAD")])
        route = {
            "/metrics": self._metrics,
            "/probe": self._probe,
            "/-/healthy": lambda _request: _text("200 OK", "OK\n"),
            "/": self._index,
        }.get(environ.get("PATH_INFO", ""))
        if route is None:
            return _text("404 Not Found", "not found: try /metrics or /probe?target=TARGET\n")
        return route(_Request.of(environ))

    def _metrics(self, request: _Request) -> Answer:
        return self._exposition(request, self.targets)

    def _probe(self, request: _Request) -> Answer:
        asked = request.query.get("target", [])
        if len(asked) != 1:
            return _text("400 Bad Request", "give one target: /probe?target=TARGET\n")
        try:
            target = self.probe_target(asked[0])
        except AddressError as exc:
            return _text("400 Bad Request", f"{exc}\n")
        except PermissionError as exc:
            return _text("403 Forbidden", f"{exc}\n")
        return self._exposition(request, [target])

    def _exposition(self, request: _Request, targets: Sequence[str]) -> Answer:
        collect = request.query.get("collect[]", [])
        body, content_type = self.exposition(targets, collect, request.deadline, request.accept)
        return "200 OK", [("Content-Type", content_type)], body

    def _index(self, _request: _Request) -> Answer:
        targets = html.escape(", ".join(self.targets) or "none")
        page = _INDEX.format(targets=targets).encode()
        return "200 OK", [("Content-Type", "text/html; charset=utf-8")], page


@dataclass(frozen=True)
class _Request:
    """What a request asks: its query, Prometheus's deadline and the formats it accepts."""

    query: dict[str, list[str]]
    deadline: float | None
    accept: str

    @classmethod
    def of(cls, environ: dict[str, Any]) -> _Request:
        return cls(
            parse_qs(environ.get("QUERY_STRING", "")),
            _deadline(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS")),
            environ.get("HTTP_ACCEPT", ""),
        )


def _text(status: str, text: str, extra: Sequence[tuple[str, str]] = ()) -> Answer:
    return status, [("Content-Type", "text/plain; charset=utf-8"), *extra], text.encode()


def _gzip_accepted(environ: dict[str, Any]) -> bool:
    encodings = environ.get("HTTP_ACCEPT_ENCODING", "")
    return any(part.split(";")[0].strip() == "gzip" for part in encodings.split(","))


def _deadline(header: str | None) -> float | None:
    """The scrape's deadline from Prometheus's scrape timeout header, less a margin."""
    try:
        seconds = float(header) if header else None
    except ValueError:
        return None
    if seconds is None or not seconds > 0:
        return None
    return max(_MIN_DEADLINE, seconds - _TIMEOUT_MARGIN)


class _QuietHandler(WSGIRequestHandler):
    """Requests are logged at debug level, not written to stderr one line each."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ExporterServer(ThreadingMixIn, WSGIServer):
    """A thread per request, so that one slow scrape does not hold the others up."""

    daemon_threads = True


class _ExporterServer6(ExporterServer):
    address_family = socket.AF_INET6


def serve_http(exporter: Exporter, host: str, port: int) -> ExporterServer:
    """The exporter's HTTP server, bound and listening (``serve_forever()`` runs it).
    ``OSError`` when the address cannot be bound."""
    server_class = _ExporterServer6 if ":" in host else ExporterServer
    server = make_server(host, port, exporter.wsgi(), server_class, _QuietHandler)
    assert isinstance(server, ExporterServer)
    return server
