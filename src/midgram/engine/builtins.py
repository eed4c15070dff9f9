"""The built-in MI commands, with OpenSIPS 3.6's names, recipes, texts and result shapes.

``with_builtins(registry, runtime)`` returns the registry a server runs: these commands first
(as OpenSIPS lists its core before its modules), then the program's own, sharing the
program's statistics. The handlers read the server through a ``Runtime``. What each
command answers: docs/compatibility.md, "Core commands".
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from midgram._version import __version__
from midgram.engine.access import READONLY
from midgram.engine.event_commands import event_commands
from midgram.engine.registry import Command, Registry, make_command
from midgram.engine.runtime import Runtime
from midgram.engine.stats import Stat, Statistics
from midgram.errors import InvalidParams, MIError
from midgram.wire.jsonrpc import C_INT_MAX, C_INT_MIN

__all__ = ["READONLY_BUILTINS", "SERVER_NAME", "with_builtins"]

SERVER_NAME: Final = (
    f"midgram {__version__} (python {platform.python_version()} "
    f"({platform.machine()}/{sys.platform}))"
)
HELP_USAGE: Final = "Usage: help mi_cmd - returns information about 'mi_cmd'"
NO_HELP: Final = "not available for this command"

#: The built-ins in the set ``@readonly`` (docs/security.md): they change nothing, and tell
#: nothing beyond what the server is and how it does. ``pwd`` and ``arg`` are left out (a
#: command line may hold a secret), ``log_level`` too (with params it sets the level), and
#: ``event_subscribe`` and ``raise_event`` (they make the server send datagrams).
READONLY_BUILTINS: Final = frozenset(
    {
        "get_statistics",
        "list_statistics",
        "uptime",
        "version",
        "which",
        "ps",
        "help",
        "events_list",
        "subscribers_list",
    }
)

_UNKNOWN_COMMAND: Final = (404, "unknown MI command")
_NO_STATISTICS: Final = (404, "Statistics Not Found")


def with_builtins(registry: Registry, runtime: Runtime) -> Registry:
    """A registry with the built-in commands followed by ``registry``'s commands."""
    served = Registry(module=registry.module, stats=registry.stats, events=registry.events)
    _declare_core_stats(registry.stats, runtime)
    for command in _core_commands(served, runtime):
        served.add(command)
    for command in registry:
        if command.name in served:
            raise ValueError(f"MI command {command.name!r} clashes with a built-in command")
        served.add(command)
    return served


def _declare_core_stats(stats: Statistics, runtime: Runtime) -> None:
    stats.function("core:timestamp", lambda: int(time.time() - runtime.started))
    stats.function("core:processes", lambda: len(runtime.processes()))


def _core_commands(served: Registry, runtime: Runtime) -> list[Command]:
    """Every built-in command, in the order OpenSIPS 3.6's ``which`` lists them."""
    stats = served.stats
    # Recipes come from the signatures; the help texts are OpenSIPS's own.
    table: list[tuple[Callable[..., Any], str]] = [
        (_get_statistics(stats), "prints the statistics (all, group or one) realtime values."),
        (_list_statistics(stats), "lists all the registered statistics and their types"),
        (_reset_statistics(stats), "resets the value of a statistic variable"),
        (_reset_all_statistics(stats), "resets the value of all resetable variables"),
        (
            _uptime(runtime),
            "prints various time information about midgram - when it started to run, "
            "for how long it runs",
        ),
        (_version, "prints the version string of a running midgram"),
        (_pwd, "prints the working directory of midgram"),
        (_arg, "returns the full list of arguments used at startup"),
        (_which(served), "lists all available MI commands"),
        (_ps(runtime), "lists all processes used by midgram"),
        (_kill(runtime), "terminates midgram"),
        (_log_level(runtime), "gets/sets the per process or global log level in midgram"),
        *event_commands(served.events),
        (_help(served), "prints information about MI commands usage"),
    ]
    commands = []
    for handler, text in table:
        name = handler.__name__.lstrip("_")
        sets = (READONLY,) if name in READONLY_BUILTINS else ()
        commands.append(make_command(handler, name=name, help=text, module="core", sets=sets))
    return commands


# --- statistics ---------------------------------------------------------------------------


def _get_statistics(stats: Statistics) -> Callable[..., Any]:
    def get_statistics(statistics: list[str]) -> dict[str, int]:
        found = stats.select(statistics)
        if not found:
            raise MIError(*_NO_STATISTICS)
        return {stat.name: stat.value for stat in found}

    return get_statistics


def _kind(stat: Stat) -> str:
    return "incremental" if stat.incremental else "non-incremental"


def _list_statistics(stats: Statistics) -> Callable[..., Any]:
    def list_statistics(statistics: list[str] | None = None) -> dict[str, str]:
        if statistics is None:
            return {stat.name: _kind(stat) for stat in stats}
        listed: dict[str, str] = {}
        for item in statistics:
            # OpenSIPS keys a stat asked for by its bare name without the group prefix.
            bare = item != "all" and not item.endswith(":")
            for stat in stats.select([item]):
                listed[stat.short if bare else stat.name] = _kind(stat)
        if not listed:
            raise MIError(*_NO_STATISTICS)
        return listed

    return list_statistics


def _reset_statistics(stats: Statistics) -> Callable[..., Any]:
    def reset_statistics(statistics: list[str]) -> str:
        found = stats.select(statistics)
        if not found:
            raise MIError(*_NO_STATISTICS)
        _reset(found)
        return "OK"

    return reset_statistics


def _reset_all_statistics(stats: Statistics) -> Callable[..., Any]:
    def reset_all_statistics() -> str:
        _reset(stats)
        return "OK"

    return reset_all_statistics


def _reset(found: Iterable[Stat]) -> None:
    for stat in found:
        stat.reset()


# --- process and server information -------------------------------------------------------


def _uptime(runtime: Runtime) -> Callable[..., Any]:
    # Whole seconds, as OpenSIPS's time_t: "Up time" is "Now" minus "Up since" as printed.
    started = int(runtime.started)
    up_since = time.ctime(started)  # never changes: format it once
    clock, ctime = time.time, time.ctime
    # The texts change once a second (ctime's resolution): format them then, not once a
    # call. uptime is the command monitors poll most.
    second = -1
    now_text = up_text = ""

    def uptime() -> dict[str, str]:
        nonlocal second, now_text, up_text
        now = int(clock())
        if now != second:
            second = now
            now_text = ctime(now)
            up_text = f"{now - started} [sec]"
        return {"Now": now_text, "Up since": up_since, "Up time": up_text}

    return uptime


def _version(revision: Any = None) -> dict[str, str]:
    # OpenSIPS ignores the value of `revision`; its presence adds the build's revision.
    result = {"Server": SERVER_NAME}
    if revision is not None:
        result["release"] = __version__
    return result


def _pwd() -> dict[str, str]:
    return {"WD": os.getcwd()}


def _arg() -> list[str]:
    return list(sys.argv)


def _ps(runtime: Runtime) -> Callable[..., Any]:
    def ps() -> dict[str, list[dict[str, Any]]]:
        return {
            "Processes": [
                {"ID": proc.id, "PID": proc.pid, "Type": proc.type} for proc in runtime.processes()
            ]
        }

    return ps


def _kill(runtime: Runtime) -> Callable[..., Any]:
    def kill() -> str:
        runtime.request_stop()  # takes effect once this reply has been sent
        return "OK"

    return kill


def _log_level(runtime: Runtime) -> Callable[..., Any]:
    def log_level(level: int | None = None, pid: int | None = None) -> dict[str, Any]:
        if level is None:
            return {
                "Processes": [
                    {"PID": proc.pid, "Log level": proc.log_level, "Type": proc.type}
                    for proc in runtime.processes()
                ]
            }
        # OpenSIPS keeps a level in a C int, and so does the process table: a number beyond
        # it saturates, as cJSON's valueint does.
        level = max(C_INT_MIN, min(C_INT_MAX, level))
        if pid is None:
            runtime.set_log_level(level)
            return {"New global log level": level}
        if not runtime.set_log_level(level, pid):
            raise InvalidParams("Bad PID")
        return {"Log level": level}

    return log_level


# --- discovery ----------------------------------------------------------------------------


def _lookup(served: Registry, name: str) -> Command:
    command = served.get(name)
    if command is None:
        raise MIError(*_UNKNOWN_COMMAND)
    return command


def _which(served: Registry) -> Callable[..., Any]:
    def which(command: str | None = None) -> list[Any]:
        if command is None:
            return served.names()
        return [list(recipe) for recipe in _lookup(served, command).recipes]

    return which


def _help(served: Registry) -> Callable[..., Any]:
    def help(mi_cmd: str | None = None) -> Any:
        if mi_cmd is None:
            return HELP_USAGE
        command = _lookup(served, mi_cmd)
        return {"Help": command.help or NO_HELP, "Exported by": command.module}

    return help
