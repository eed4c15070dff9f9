"""Prometheus names for MI statistics, following the in-process modules' conventions.

OpenSIPS's ``prometheus`` module names ``core:rcv_requests`` ``opensips_rcv_requests``
(its ``prefix``, then the statistic; ``group_mode`` 1 puts the group in the name,
``opensips_core_rcv_requests``, and 2 in a ``group`` label). Kamailio's ``xhttp_prom`` names
``core.rcv_requests`` ``kamailio_core_rcv_requests``. Both are kept here, with what they get
wrong put right:

- every character outside ``[a-zA-Z0-9_]`` becomes ``_`` (``-``, ``.``, ``:`` and the rest:
  Kamailio issue 2644), and a name cannot start with a digit;
- a per-process statistic (``load:load-proc-3``, ``pkmem:3-used_size``) is one metric with
  the process as labels, ``opensips_proc_load{id="3",pid="...",desc="..."}``, as the OpenSIPS
  module does for its process groups, never one invalid name per process (OpenSIPS issues
  2478, 2482);
- a counter's samples end in ``_total``, as the exposition format wants (the family is
  ``opensips_rcv_requests``, its sample ``opensips_rcv_requests_total``).
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["GroupMode", "Naming", "Series", "sanitize"]

_INVALID_RE: Final = re.compile(r"[^a-zA-Z0-9_]")
# "load-proc-3", "load1m-proc-3" (OpenSIPS's load group) and "3-used_size" (pkmem).
_PROC_SUFFIX_RE: Final = re.compile(r"(?P<metric>.+)-proc-(?P<id>[0-9]+)")
_PROC_PREFIX_RE: Final = re.compile(r"(?P<id>[0-9]+)-(?P<metric>[a-zA-Z_][a-zA-Z0-9_]*)")
#: The name stem of per-process statistics, as the OpenSIPS module's process groups have it
#: (proc_load, proc_used_size, ...).
PROC_STEM: Final = "proc"


class GroupMode(enum.Enum):
    """Where a statistic's group goes: a ``group`` label (OpenSIPS group_mode 2) or the
    name (group_mode 1; Kamailio's xhttp_prom)."""

    LABEL = "label"
    NAME = "name"


def sanitize(name: str) -> str:
    """``name`` within the Prometheus grammar ``[a-zA-Z_][a-zA-Z0-9_]*``."""
    clean = _INVALID_RE.sub("_", name)
    return f"_{clean}" if not clean or clean[0].isdigit() else clean


@dataclass(frozen=True)
class Series:
    """Where one statistic goes: its metric family's name, and the labels of its sample.

    ``process``: the process number a per-process statistic is about (labelled ``id``; the
    exporter adds its ``pid`` and ``desc`` when the server lists its processes). ``source``:
    the statistic's short name, with ``N`` for the process number (``load-proc-N``).
    """

    name: str
    labels: tuple[tuple[str, str], ...]
    source: str
    process: int | None = None


@dataclass(frozen=True)
class Naming:
    """How statistics are named: ``prefix`` (``opensips``, ``kamailio``) and the group mode."""

    prefix: str
    group_mode: GroupMode

    def metric(self, stem: str) -> str:
        """An exporter's own metric (``up``, ``uptime_seconds``): ``<prefix>_<stem>``."""
        return sanitize(f"{self.prefix}_{stem}" if self.prefix else stem)

    def series(self, group: str, short: str) -> Series:
        """The family and labels of statistic ``group:short`` (worked out once per name:
        a scrape asks again for every statistic)."""
        return _series(self, group, short)


@functools.lru_cache(maxsize=1 << 16)
def _series(naming: Naming, group: str, short: str) -> Series:
    process, stem, source = _per_process(short)
    labels: list[tuple[str, str]] = []
    if naming.group_mode is GroupMode.LABEL:
        labels.append(("group", group))
        parts = [naming.prefix, stem]
    else:
        parts = [naming.prefix, group, stem]
    if process is not None:
        labels.append(("id", str(process)))
    name = sanitize("_".join(part for part in parts if part))
    return Series(name, tuple(labels), source, process)


def _per_process(short: str) -> tuple[int | None, str, str]:
    """(process number, name stem, source name with N for the number) of a per-process
    statistic; (None, short, short) otherwise."""
    match = _PROC_SUFFIX_RE.fullmatch(short)
    if match is not None:
        source = f"{match['metric']}-proc-N"
    else:
        match = _PROC_PREFIX_RE.fullmatch(short)
        if match is None:
            return None, short, short
        source = f"N-{match['metric']}"
    return int(match["id"]), f"{PROC_STEM}_{match['metric']}", source
