"""midgram's own click parameter types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from midgram.cli.durations import parse_duration

__all__ = ["Duration"]

if TYPE_CHECKING:  # generic in click's stubs (8.2+), not at run time in older clicks
    _ParamType = click.ParamType[float, Any]
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """A duration, converted to ``unit`` (``"ms"`` or ``"s"``); a bare number is in ``unit``
    (``durations.parse_duration``: the grammar, ``whole`` and ``positive``)."""

    name = "duration"

    def __init__(self, unit: str, *, whole: bool = False, positive: bool = False) -> None:
        self.unit = unit
        self.whole = whole
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration(value, self.unit, whole=self.whole, positive=self.positive)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
