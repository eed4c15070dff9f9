"""The commands midgram's benchmarks serve besides the built-in ones.

Served by the harness as ``midgram serve --app app:mi`` (with ``bench/`` on ``PYTHONPATH``),
or on its own: ``python bench/app.py --socket PATH [--children N] [--pretty]``.

- ``bench_blob(size)``: a reply of about ``size`` bytes of nested records (what a ``dlg_list``
  or a big statistics dump looks like), built once per size: the benchmark measures serialising
  and sending it, not building it.
- ``bench_named(user, count=1, enabled=False)``: called with named parameters, exercising
  recipe matching and the getters.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from midgram.engine.registry import Registry

mi = Registry(module="bench")

RECORD_BYTES = 100  # about what one record below serialises to


@functools.cache
def _blob(size: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for i in range(max(1, size // RECORD_BYTES)):
        records.append(
            {
                "id": f"call-{i:06d}",
                "state": i % 5,
                "from": f"sip:user{i}@example.com",
                "to": "sip:bob@example.net",
                "age": i * 7,
            }
        )
    return records


@mi.command(help="a reply of about `size` bytes of nested records")
def bench_blob(size: int) -> list[dict[str, Any]]:
    return _blob(size)


@mi.command(help="echoes its named parameters")
def bench_named(user: str, count: int = 1, enabled: bool = False) -> dict[str, Any]:
    return {"user": user, "count": count, "enabled": enabled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve the benchmark's commands")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--children", type=int, default=1)
    parser.add_argument("--pretty", action="store_true")
    args = parser.parse_args(argv)
    from midgram import config, server  # noqa: PLC0415 (only when run as a program)

    settings = config.Settings(
        socket_name=args.socket, children_count=args.children, pretty_printing=args.pretty
    )
    return server.serve(
        settings, mi, on_ready=lambda where: print(f"listening on {where}", file=sys.stderr)
    )


if __name__ == "__main__":
    sys.exit(main())
