"""Nagios threshold ranges (``10``, ``10:``, ``~:10``, ``10:20``, ``@10:20``), as the
Monitoring Plugins development guidelines define them.

A range says which values are fine; a value outside it raises the alert. ``@`` turns that
around: a value inside the range raises it. ``start:end`` are inclusive, ``start`` defaults
to 0, a missing ``end`` is infinity and ``~`` as the start is minus infinity::

    10      alert below 0 or above 10
    10:     alert below 10
    ~:10    alert above 10
    10:20   alert outside 10..20
    @10:20  alert inside 10..20

Written here rather than taken from ``nagiosplugin``: that package is a framework that
prints and exits by itself, its range parser lets malformed specs through as Python errors,
and importing it costs ~30 ms on every run of a probe that Kubernetes may start each
few seconds. The grammar is this small.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Range", "RangeError"]

_NUMBER: Final = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_RANGE_RE: Final = re.compile(rf"(@)?(?:(~|{_NUMBER})?:)?({_NUMBER})?")


class RangeError(ValueError):
    """A threshold that does not follow the range grammar; the message says why."""


@dataclass(frozen=True)
class Range:
    """One threshold range; ``Range.parse("10:20")``, then ``alerts(value)``."""

    start: float
    end: float
    inside: bool  # "@": alert inside start..end instead of outside
    spec: str

    @classmethod
    def parse(cls, spec: str) -> Range:
        text = spec.strip()
        match = _RANGE_RE.fullmatch(text)
        if not text or match is None or text in ("@", ":", "@:"):
            raise RangeError(
                f"{spec!r} is not a threshold range: write 10, 10:, ~:10, 10:20 or @10:20"
            )
        at, start_text, end_text = match.groups()
        start = _bound(start_text, 0.0)
        end = _bound(end_text, math.inf)
        if start > end:
            raise RangeError(f"{spec!r}: the start ({start_text}) is above the end ({end_text})")
        return cls(start, end, at is not None, text)

    def alerts(self, value: float) -> bool:
        """True when ``value`` raises the alert this range stands for."""
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def describe(self) -> str:
        """When it alerts, in words: "above 10", "outside 10..20", "inside 10..20"."""
        low = "" if self.start == -math.inf else _number(self.start)
        high = "" if self.end == math.inf else _number(self.end)
        if self.inside:
            return f"inside {low or '-inf'}..{high or 'inf'}"
        if not low:
            return f"above {high}"
        if not high:
            return f"below {low}"
        if self.start == 0:
            return f"outside 0..{high}"
        return f"outside {low}..{high}"

    def perfdata(self) -> str:
        """The range as a perfdata threshold field: the spec as given."""
        return self.spec


def _bound(text: str | None, default: float) -> float:
    if text == "~":
        return -math.inf
    return float(text) if text else default


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
