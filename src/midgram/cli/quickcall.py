"""``midgram call`` read without click, for the plain command lines a script runs in a loop.

A monitoring script or a cron job starts a fresh ``midgram call`` for each command, and pays
its start-up each time: click alone takes longer to import than the call takes. So ``main``
first hands the command line here. If it is a plain ``call`` (a method, params as words, and
any of ``-t/--target``, ``--timeout``, ``--dialect``, ``-f/--format``, ``-j/--json``,
``--dry-run``, ``-v/--verbose``, spelled ``--opt value`` or ``--opt=value``, with their
environment variables), it is run here through ``calling.run_call``, as the click command
would run it. Anything else (a help, a profile, an unknown or combined option, a word
starting with ``-``, ``--``, params read from stdin, a value that does not parse) is left to
the click command, the reference, which says what is wrong: this reader only ever declines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from midgram.cli.calling import CallOptions, CallUsageError, canonical_targets, run_call
from midgram.cli.durations import parse_duration
from midgram.cli.output import FORMATS, yaml_missing
from midgram.cli.params import ParamsError, parse_json_params, parse_words
from midgram.client.calls import DEFAULT_TIMEOUT
from midgram.client.codec import DIALECTS
from midgram.errors import AddressError

__all__ = ["quick_call"]

#: The options that take a value, by each spelling -> the name they are kept under (as the
#: click command declares them in ``call.py``).
_VALUED: Final = {
    "-t": "targets",
    "--target": "targets",
    "--timeout": "timeout",
    "--dialect": "dialect",
    "-f": "fmt",
    "--format": "fmt",
    "-j": "json_params",
    "--json": "json_params",
}
_FLAGS: Final = {"--dry-run": "dry_run", "-v": "verbose", "--verbose": "verbose"}
#: The environment variables of the click command's options (call.py, target_options).
_ENVIRONMENT: Final = {
    "targets": "MIDGRAM_TARGET",
    "timeout": "MIDGRAM_TIMEOUT",
    "dialect": "MIDGRAM_DIALECT",
}
#: Set, it names a profile, which only the click command reads.
_PROFILE_VARIABLE: Final = "MIDGRAM_PROFILE"


class _Declined(Exception):
    """Not a command line this reader takes: the click command reads it."""


def quick_call(argv: Sequence[str]) -> int | None:
    """Run ``midgram call ...`` (``argv`` without the program name) and return its exit
    status; None when the command line is not a plain ``call``: nothing was done, and the
    click command is to read it."""
    if not argv or argv[0] != "call" or os.environ.get(_PROFILE_VARIABLE):
        return None
    try:
        options = _read(argv[1:])
    except _Declined:
        return None
    try:
        return run_call(options)
    except CallUsageError:  # found before anything is sent: click says it, with the usage
        return None


def _read(words: Sequence[str]) -> CallOptions:
    values: dict[str, list[str]] = {}
    flags: set[str] = set()
    positional: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("-"):
            positional.append(word)
        elif word in _FLAGS:
            flags.add(_FLAGS[word])
        elif word in _VALUED:
            if index == len(words):
                raise _Declined
            values.setdefault(_VALUED[word], []).append(words[index])
            index += 1
        elif word.startswith("--") and word.partition("=")[0] in _VALUED:
            spelling, _, value = word.partition("=")
            values.setdefault(_VALUED[spelling], []).append(value)
        else:
            raise _Declined
    if not positional:
        raise _Declined
    for name, variable in _ENVIRONMENT.items():
        from_environment = os.environ.get(variable)
        if name not in values and from_environment:
            values[name] = from_environment.split() if name == "targets" else [from_environment]
    return _options(positional[0], positional[1:], values, flags)


def _last(values: dict[str, list[str]], name: str) -> str | None:
    given = values.get(name)
    return given[-1] if given else None


def _options(
    method: str, words: Sequence[str], values: dict[str, list[str]], flags: set[str]
) -> CallOptions:
    json_params, fmt = _last(values, "json_params"), _last(values, "fmt")
    timeout, dialect = _last(values, "timeout"), _last(values, "dialect") or "opensips"
    if json_params == "-" or dialect not in DIALECTS:
        raise _Declined
    if fmt is not None and (fmt not in FORMATS or (fmt == "yaml" and yaml_missing())):
        raise _Declined
    try:
        if json_params is not None:
            if words:
                raise _Declined
            params = parse_json_params(json_params)
        else:
            params = parse_words(words)
        targets = canonical_targets(values.get("targets", []))
        seconds = (
            DEFAULT_TIMEOUT if timeout is None else parse_duration(timeout, "s", positive=True)
        )
    except (ParamsError, AddressError, ValueError):
        raise _Declined from None
    return CallOptions(
        method, params, targets, seconds, dialect, fmt, "dry_run" in flags, "verbose" in flags
    )
