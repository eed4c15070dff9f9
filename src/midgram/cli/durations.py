"""Durations on the command line: ``500ms`` or ``2s`` wherever a timeout is given.

``serve --timeout`` is ``socket_timeout``, in milliseconds as OpenSIPS has it; ``call
--timeout`` is in seconds, as every client's is. A bare number keeps each one's unit (as it
always did), and a unit makes it unambiguous on both.

The grammar is here, without click, so that ``quickcall`` reads ``--timeout`` as ``call``
does without importing click; ``clicktypes.Duration`` is its click parameter type.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration"]

# A sign is read too: a negative socket_timeout is then refused by Settings, naming it.
_DURATION_RE: Final = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*(ms|s)?\s*", re.I)
#: Seconds in each unit.
_UNITS: Final = {"ms": 0.001, "s": 1.0}


def parse_duration(
    value: str | float, unit: str, *, whole: bool = False, positive: bool = False
) -> float:
    """``value`` in ``unit`` (``"ms"`` or ``"s"``); a bare number is in ``unit``.

    ``whole``: the result is an ``int`` (socket_timeout is whole milliseconds).
    ``positive``: zero is refused. A ``ValueError`` says what is wrong with ``value``.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)  # a default, or a default_map entry: already in unit
    else:
        number = _parse(str(value), unit)
    if positive and number <= 0:
        raise ValueError(f"{value!r}: must be more than 0")
    if not whole:
        return number
    if number != int(number):
        raise ValueError(f"{value!r}: must be whole {unit}")
    return int(number)


def _parse(text: str, unit: str) -> float:
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r}: not a duration: write 500ms, 2s or 2.5s (a bare number is {unit})"
        )
    number, given = match.groups()
    scale = _UNITS[(given or unit).lower()] / _UNITS[unit]
    return round(float(number) * scale, 9)  # 0.3s in ms is 300, not 299.99999999999994
