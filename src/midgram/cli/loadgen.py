"""``python -m midgram.cli.loadgen ARGS``: one run of ``midgram bench``'s load generator, in a
process of its own (what ``midgram.client.loadtest`` starts for each run).

ARGS are the generator's options (``loadgen.c``'s usage). The result is its one JSON line on
stdout, exit status 0; a failed run says why on stderr (``loadgen: ...``), exit status 2. The
run itself is C (``midgram.client._loadgen``, built at install time) and holds no Python lock.
"""

from __future__ import annotations

import signal
import sys

from midgram.compiled import why_not_loaded

__all__ = ["main"]

#: The exit status of a run that failed (and of a generator that is not installed).
EXIT_FAILED = 2


def main(argv: list[str] | None = None) -> None:
    # Ctrl-C and SIGTERM end the run at once, as they would a C program's: Python's own
    # SIGINT handler would only act once the C loop returned, seconds later.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        from midgram.client import _loadgen  # noqa: PLC0415 - what this process runs
    except ImportError as exc:
        print(f"loadgen: {why_not_loaded('midgram.client._loadgen', exc)}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    try:
        line = _loadgen.run(sys.argv[1:] if argv is None else argv)
    except (RuntimeError, TypeError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    sys.stdout.write(line)


if __name__ == "__main__":
    main()
