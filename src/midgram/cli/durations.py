"""Durations on the command line: ``500ms`` or ``2s`` wherever a timeout is given.

``serve --timeout`` is ``socket_timeout``, in milliseconds as OpenSIPS has it; ``call
--timeout`` is in seconds, as every client's is. A bare number keeps each one's unit (as it
always did), and a unit makes it unambiguous on both.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import click

__all__ = ["Duration"]

if TYPE_CHECKING:  # generic in click's stubs (8.2+), not at run time in older clicks
    _ParamType = click.ParamType[float, Any]
else:
    _ParamType = click.ParamType

# A sign is read too: a negative socket_timeout is then refused by Settings, naming it.
_DURATION_RE: Final = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*(ms|s)?\s*", re.I)
#: Seconds in each unit.
_UNITS: Final = {"ms": 0.001, "s": 1.0}


class Duration(_ParamType):
    """A duration, converted to ``unit`` (``"ms"`` or ``"s"``); a bare number is in ``unit``.

    ``whole``: the result is an ``int`` (socket_timeout is whole milliseconds).
    ``positive``: zero is refused.
    """

    name = "duration"

    def __init__(self, unit: str, *, whole: bool = False, positive: bool = False) -> None:
        self.unit = unit
        self.whole = whole
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)  # a default, or a default_map entry: already in unit
        else:
            number = self._parse(str(value), param, ctx)
        if self.positive and number <= 0:
            self.fail(f"{value!r}: must be more than 0", param, ctx)
        if not self.whole:
            return number
        if number != int(number):
            self.fail(f"{value!r}: must be whole {self.unit}", param, ctx)
        return int(number)

    def _parse(self, text: str, param: click.Parameter | None, ctx: click.Context | None) -> float:
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            self.fail(
                f"{text!r}: not a duration: write 500ms, 2s or 2.5s (a bare number is {self.unit})",
                param,
                ctx,
            )
        number, unit = match.groups()
        scale = _UNITS[(unit or self.unit).lower()] / _UNITS[self.unit]
        return round(float(number) * scale, 9)  # 0.3s in ms is 300, not 299.99999999999994
