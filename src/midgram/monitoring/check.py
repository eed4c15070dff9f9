"""``midgram check``'s engine: one MI call judged as a monitoring plugin judges it.

The answer is a status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN: the Nagios and Icinga
plugin convention, which Kubernetes exec probes and systemd read as success or failure) and
one line with performance data::

    MIDGRAM OK - uptime answered in 0.41 ms | rtt=0.41ms;;;0;
    MIDGRAM WARNING - dialog:active_dialogs is 120 (warning: above 100) | ...

What is judged: the round-trip time of the call, in milliseconds, or with ``stat`` the
value of one statistic, against Nagios ranges (``thresholds.py``), critical first. A server
that does not answer, refuses the connection or sends garbage is CRITICAL; a check that
cannot be made as asked (an unknown command or statistic, bad parameters) is UNKNOWN.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from midgram.client.calls import AsyncClient
from midgram.errors import ClientError, ConnectError, RemoteError, ReplyTimeout
from midgram.monitoring.thresholds import Range
from midgram.wire.jsonrpc import Params

__all__ = ["DEFAULT_METHODS", "Check", "Status", "Verdict", "run_check"]

#: What a check calls when told nothing: the cheapest command that proves a worker answers.
DEFAULT_METHODS: Final = {"opensips": "uptime", "kamailio": "core.uptime"}
#: Errors that say the check was asked wrongly, not that the server is unwell.
_MISASKED: Final = frozenset({-32601, -32602})
_NOT_FOUND: Final = 404  # get_statistics: "Statistics Not Found"
_MISASKED_MESSAGES: Final = frozenset({"method not found"})  # Kamailio's 500
_PLAIN_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_]+")
_NAME: Final = "MIDGRAM"
#: Pauses between attempts while ``wait`` lasts: short at first, then once a second.
_RETRY_FIRST: Final = 0.05
_RETRY_MAX: Final = 1.0


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Verdict:
    """The verdict: a status, what it is about, and the performance data."""

    status: Status
    summary: str
    perfdata: tuple[str, ...] = ()

    def line(self) -> str:
        text = f"{_NAME} {self.status.name} - {self.summary}"
        return f"{text} | {' '.join(self.perfdata)}" if self.perfdata else text


@dataclass(frozen=True)
class Check:
    """What to check: ``method`` with ``params``, or the statistic ``stat`` (``group:name``
    or a bare name); ``warn`` and ``crit`` ranges on that statistic, or on the round trip in
    milliseconds without one; ``wait``: seconds to keep trying while the server is not
    there yet (a unit's readiness check), 0 for one attempt."""

    method: str | None = None
    params: Params = None
    stat: str | None = None
    warn: Range | None = None
    crit: Range | None = None
    wait: float = 0.0


async def run_check(client: AsyncClient, check: Check) -> Verdict:
    """The verdict on ``client``'s server; never raises for the server's sake."""
    deadline = time.monotonic() + check.wait
    pause = _RETRY_FIRST
    while True:
        try:
            return await _attempt(client, check)
        except (ConnectError, ReplyTimeout) as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                return _failure(exc, "")
        # Not there yet (a unit starting): try again, more patiently each time.
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _RETRY_MAX)


async def _attempt(client: AsyncClient, check: Check) -> Verdict:
    """One try. ``ConnectError`` and ``ReplyTimeout`` are raised, for ``wait`` to retry."""
    method, params = _request(client, check)
    started = time.perf_counter()
    try:
        result = await client.request(method, params)
    except (ConnectError, ReplyTimeout):
        raise
    except ClientError as exc:
        if check.stat is not None and isinstance(exc, RemoteError) and exc.code == _NOT_FOUND:
            return Verdict(Status.UNKNOWN, f"{client.target} has no statistic {check.stat!r}")
        return _failure(exc, method)
    rtt_ms = (time.perf_counter() - started) * 1000
    if check.stat is None:
        return _judge(f"{method} answered in {rtt_ms:.2f} ms", "rtt", rtt_ms, "ms", check)
    value = _stat_value(result, check.stat, client.dialect.name)
    if value is None:
        return Verdict(Status.UNKNOWN, f"{client.target} has no statistic {check.stat!r}")
    rtt = _perf("rtt", rtt_ms, "ms", None, None)
    return _judge(f"{check.stat} is {_shown(value)}", check.stat, value, "", check, extra=rtt)


def _request(client: AsyncClient, check: Check) -> tuple[str, Params]:
    if check.stat is None:
        return check.method or DEFAULT_METHODS[client.dialect.name], check.params
    if client.dialect.name == "kamailio":
        return "stats.fetchn", [check.stat]
    # OpenSIPS matches a single statistic by its bare name only; the reply names its group.
    bare = check.stat.rpartition(":")[2]
    return "get_statistics", {"statistics": [bare]}


def _split(name: str, separators: str) -> tuple[str, str]:
    """(group, short) of ``group:short`` (or ``group.short``); ("", name) when bare."""
    for separator in separators:
        group, found, short = name.partition(separator)
        if found:
            return group, short
    return "", name


def _stat_value(result: Any, stat: str, dialect: str) -> float | None:
    """The statistic's value in a get_statistics / stats.fetchn reply: the one entry whose
    name matches (its group too, when ``stat`` names one)."""
    if not isinstance(result, dict):
        return None
    group, short = _split(stat, ":.")
    separator = "." if dialect == "kamailio" else ":"
    matches = []
    for key, value in result.items():
        key_group, key_short = _split(str(key), separator)
        if key_short.lower() == short.lower() and (not group or key_group == group):
            matches.append(value)
    if len(matches) != 1 or isinstance(matches[0], bool):
        return None
    found = matches[0]
    return float(found) if isinstance(found, int | float) else None


def _judge(
    summary: str, label: str, value: float, unit: str, check: Check, *, extra: str | None = None
) -> Verdict:
    perfdata = [_perf(label, value, unit, check.warn, check.crit)]
    if extra is not None:
        perfdata.append(extra)
    for level, threshold in ((Status.CRITICAL, check.crit), (Status.WARNING, check.warn)):
        if threshold is not None and threshold.alerts(value):
            text = f"{summary} ({level.name.lower()}: {threshold.describe()})"
            return Verdict(level, text, tuple(perfdata))
    return Verdict(Status.OK, summary, tuple(perfdata))


def _perf(label: str, value: float, unit: str, warn: Range | None, crit: Range | None) -> str:
    """One performance datum: 'label'=value[UOM];warn;crit;min;max."""
    quoted = label if _PLAIN_LABEL_RE.fullmatch(label) else "'{}'".format(label.replace("'", "''"))
    low = "0" if unit == "ms" else ""
    fields = [f"{_shown(value)}{unit}", _spec(warn), _spec(crit), low, ""]
    return f"{quoted}={';'.join(fields)}"


def _spec(threshold: Range | None) -> str:
    return threshold.perfdata() if threshold is not None else ""


def _shown(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0")


def _failure(exc: ClientError, method: str) -> Verdict:
    if isinstance(exc, RemoteError) and (
        exc.code in _MISASKED or exc.message.lower() in _MISASKED_MESSAGES
    ):
        return Verdict(Status.UNKNOWN, f"{method}: error {exc.code}: {exc.message}")
    if isinstance(exc, ConnectError):
        return Verdict(Status.CRITICAL, f"cannot reach {exc.target}: {exc.reason}")
    if not method:
        return Verdict(Status.CRITICAL, str(exc))
    return Verdict(Status.CRITICAL, f"{method}: {exc}")
