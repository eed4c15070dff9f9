"""``midgram exporter``: a Prometheus exporter for OpenSIPS, midgram and Kamailio.

The engine is ``midgram.monitoring``; this module reads the options, loads collectors,
binds the HTTP port and runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Final

import click

from midgram.cli.call import _targets, target_options

__all__ = ["exporter"]

_LISTEN_HELP: Final = (
    "HOST:PORT, [V6]:PORT or PORT to serve /metrics and /probe on. Default: 127.0.0.1:9434 "
    "(the OpenSIPS exporter's port): only this machine can scrape it."
)
_MISSING: Final = "the exporter needs prometheus_client: pip install 'midgram[exporter]'"
_GROUP_MODES: Final = {"opensips": "label", "kamailio": "name"}
_MAX_PORT: Final = 65535


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST``, ``:PORT`` or ``PORT`` -> (host, port)."""
    host, port_text = "127.0.0.1", ""
    if text.isdigit():
        port_text = text
    elif text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host, port_text = inside, rest.removeprefix(":")
    elif text.count(":") == 1:
        head, _, port_text = text.partition(":")
        host = head or "0.0.0.0"  # noqa: S104 - ":PORT" asks for every address
    else:
        host = text
    if not host:
        raise click.BadParameter(f"{text!r}: no host", param_hint="--listen")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: the port is not a number", param_hint="--listen"
        ) from None
    if not 0 <= port <= _MAX_PORT:
        raise click.BadParameter(f"{text!r}: the port must be 0..65535", param_hint="--listen")
    return host, port


def _load_collector(spec: str) -> Any:
    """``--collector module:attribute``: a collector, or a class or function making one."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise click.BadParameter(f"{spec!r}: write module:attribute", param_hint="--collector")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {spec!r}: {exc}", param_hint="--collector") from exc
    try:
        collector = found() if isinstance(found, type) else found
    except TypeError as exc:
        raise click.BadParameter(
            f"{spec!r} is not a collector: {exc}", param_hint="--collector"
        ) from exc
    if not isinstance(getattr(collector, "name", None), str) or not callable(
        getattr(collector, "collect", None)
    ):
        raise click.BadParameter(
            f"{spec!r} is not a collector (a `name` and an async `collect(mi)`)",
            param_hint="--collector",
        )
    return collector


@click.command(
    epilog="""\b
Exit status:
  0    stopped by SIGTERM or Ctrl-C (or --once wrote its scrape)
  1    the port cannot be bound, or --once found a target down
  2    usage error (bad option or target; prometheus_client missing)

\b
Examples:
  midgram exporter -t /run/opensips/mi.sock
  midgram exporter -p edge --listen 0.0.0.0:9434
  midgram exporter --dialect kamailio -t /run/kamailio/kamailio_rpc.sock
  midgram exporter -t /run/midgram.sock --once | promtool check metrics""",
)
@target_options
@click.option("--listen", metavar="ADDRESS", default="127.0.0.1", help=_LISTEN_HELP)
@click.option(
    "--prefix",
    metavar="TEXT",
    help="The metric names' prefix. Default: opensips, or kamailio with --dialect kamailio "
    "(the in-process modules' defaults).",
)
@click.option(
    "--group-mode",
    type=click.Choice(["label", "name"]),
    help="Where a statistic's group goes: a group label (OpenSIPS prometheus group_mode 2; "
    "the default for opensips) or the name (group_mode 1; xhttp_prom; the default for "
    "kamailio).",
)
@click.option(
    "--probe-any",
    is_flag=True,
    help="Let /probe?target= name any target, not only the -t ones (it then sends datagrams "
    "wherever a URL says).",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="NAME",
    help="A statistic group to look for when a server's list of all statistics does not fit "
    "in a datagram (repeatable; its own groups and its commands' modules are tried anyway).",
)
@click.option(
    "--collector",
    "collector_specs",
    multiple=True,
    metavar="MODULE:ATTR",
    help="A collector of more readings (docs/monitoring.md says how to write one).",
)
@click.option("--once", is_flag=True, help="Print one scrape of every target and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log each request and each target down.")
@click.pass_context
def exporter(
    ctx: click.Context,
    *,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    listen: str,
    prefix: str | None,
    group_mode: str | None,
    probe_any: bool,
    groups: tuple[str, ...],
    collector_specs: tuple[str, ...],
    once: bool,
    verbose: bool,
) -> None:
    """Serve the targets' statistics to Prometheus: /metrics (every target) and
    /probe?target=T (one target, for a fleet through relabelling).

    Every statistic is exported, read group by group so that no reply overflows a
    datagram, with each target's up, scrape duration, uptime and process count."""
    if importlib.util.find_spec("prometheus_client") is None:
        raise click.UsageError(_MISSING)
    from midgram.monitoring.exporter import DEFAULT_PORT, Exporter  # noqa: PLC0415
    from midgram.monitoring.naming import GroupMode, Naming  # noqa: PLC0415

    texts = _targets(targets)
    naming = Naming(
        dialect if prefix is None else prefix,
        GroupMode(group_mode or _GROUP_MODES[dialect]),
    )
    engine = Exporter(
        texts,
        dialect=dialect,
        naming=naming,
        timeout=timeout,
        probe_any=probe_any,
        groups=groups,
        collectors=[_load_collector(spec) for spec in collector_specs],
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="midgram exporter: %(message)s",
    )
    host, port = parse_listen(listen, DEFAULT_PORT)
    ctx.exit(_once(engine) if once else _serve(engine, host, port))


def _once(engine: Any) -> int:
    """One scrape on stdout; 1 when a target did not answer (its reason on stderr)."""
    snapshots = engine.snapshots(engine.targets)
    body, _content_type = engine.render(snapshots)
    click.echo(body.decode(), nl=False)
    return 0 if all(snapshot.up for snapshot in snapshots) else 1


def _serve(engine: Any, host: str, port: int) -> int:
    from midgram.monitoring.exporter import serve_http  # noqa: PLC0415

    try:
        server = serve_http(engine, host, port)
    except OSError as exc:
        click.echo(f"midgram: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        return 1
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(
        f"midgram exporter listening on http://{shown}:{bound_port}/metrics "
        f"({len(engine.targets)} target{'s' * (len(engine.targets) != 1)})",
        err=True,
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return: not from its own thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
