"""Command, parameter and event names from the live server, for shell completion and
``midgram shell``.

A completion runs a fresh ``midgram`` process for every TAB, so what the server said is kept
in a small file under ``$XDG_CACHE_HOME/midgram`` (or ``~/.cache/midgram``) for a few
seconds: TAB, TAB stays fast, and a command added to the server shows up soon after.
Completion never fails loudly: if the server cannot be asked, there is nothing to offer.

The folder is the user's own (created 0700), and only what this user wrote is read back: a
file or folder of another owner (root completing with a user's ``XDG_CACHE_HOME``, as under
``sudo -E``) is ignored, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click
from click.shell_completion import CompletionItem

from midgram.client.calls import Client
from midgram.errors import MidgramError
from midgram.local import default_target

__all__ = [
    "CACHE_TTL",
    "Catalog",
    "cache_dir",
    "complete_event",
    "complete_method",
    "complete_param",
]

log = logging.getLogger(__name__)

#: Seconds a server's command list stays fresh.
CACHE_TTL: Final = 5.0
#: A completion must not hang the shell: the server gets at most this long to answer.
COMPLETION_TIMEOUT: Final = 1.0


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/midgram``, else ``~/.cache/midgram``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path there is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "midgram"


def _mine(stat: os.stat_result) -> bool:
    return stat.st_uid == os.geteuid()


class Catalog:
    """One server's command names and recipes, remembered for ``ttl`` seconds in a file."""

    def __init__(
        self,
        target: str,
        dialect: str = "opensips",
        *,
        timeout: float = COMPLETION_TIMEOUT,
        directory: Path | None = None,
        ttl: float = CACHE_TTL,
    ) -> None:
        self.client = Client(target, timeout=min(timeout, COMPLETION_TIMEOUT), dialect=dialect)
        key = hashlib.sha256(f"{self.client.target}\0{dialect}".encode()).hexdigest()[:24]
        self.path = (directory or cache_dir()) / f"catalog-{key}.json"
        self.ttl = ttl

    def methods(self) -> list[str]:
        """The server's command names ([] when it cannot be asked)."""
        names = self._cached("methods", self.client.methods)
        return names if isinstance(names, list) else []

    def events(self) -> list[str]:
        """The names of the server's events (``events_list``; [] when it cannot be asked)."""
        listed = self._cached("events", lambda: self.client.request("events_list"))
        entries = listed.get("Events") if isinstance(listed, dict) else None
        if not isinstance(entries, list):
            return []
        return [
            e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
        ]

    def params(self, command: str) -> list[str]:
        """Every parameter name of ``command``'s recipes, in order ([] if unknown)."""
        recipes = self._cached(f"recipes:{command}", lambda: self.client.recipes(command))
        if not isinstance(recipes, list):
            return []
        names: dict[str, None] = {}
        for recipe in recipes:
            names.update(dict.fromkeys(recipe))
        return list(names)

    def _cached(self, key: str, fetch: Any) -> Any:
        entries = self._load()
        entry = entries.get(key)
        if isinstance(entry, dict) and 0 <= time.time() - entry.get("saved", 0) < self.ttl:
            return entry.get("value")
        try:
            value = fetch()
        except (MidgramError, TypeError) as exc:
            log.debug("completion: cannot ask %s: %s", self.client.target, exc)
            return None
        entries[key] = {"saved": time.time(), "value": value}
        self._save(entries)
        return value

    def _load(self) -> dict[str, Any]:
        try:
            # Not through a symbolic link, and checked on the file that was opened.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return {}
        with os.fdopen(fd, "rb") as file:
            try:
                if not _mine(os.fstat(fd)):
                    log.debug("completion: %s is not this user's: ignored", self.path)
                    return {}
                data = json.loads(file.read())
            except (OSError, ValueError):
                return {}
        return data if isinstance(data, dict) else {}

    def _save(self, entries: dict[str, Any]) -> None:
        now = time.time()
        fresh = {k: v for k, v in entries.items() if now - v.get("saved", 0) < self.ttl}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _mine(self.path.parent.stat()):
                log.debug("completion: %s is not this user's: not written", self.path.parent)
                return
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".catalog-")
        except OSError as exc:
            log.debug("completion: cannot write in %s: %s", self.path.parent, exc)
            return
        try:
            # Written aside and renamed: a completion running at the same time reads either
            # the old file or the new one, never half of one.
            with os.fdopen(fd, "w") as out:
                json.dump(fresh, out)
            os.replace(temp, self.path)
        except OSError as exc:
            log.debug("completion: cannot write %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _catalog(ctx: click.Context) -> Catalog | None:
    targets = ctx.params.get("targets") or (default_target(),)
    try:
        return Catalog(
            targets[0],
            ctx.params.get("dialect") or "opensips",
            timeout=ctx.params.get("timeout") or COMPLETION_TIMEOUT,
        )
    except (MidgramError, ValueError) as exc:
        log.debug("completion: %s", exc)
        return None


def _offer(
    ctx: click.Context, incomplete: str, names: Callable[[Catalog], list[str]], given: Any = ()
) -> list[CompletionItem]:
    """The ``names`` the live server gives that start with ``incomplete``, but ``given``."""
    catalog = _catalog(ctx)
    if catalog is None:
        return []
    return [
        CompletionItem(name)
        for name in names(catalog)
        if name.startswith(incomplete) and name not in given
    ]


def complete_method(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Command names the live server knows that start with ``incomplete``."""
    return _offer(ctx, incomplete, Catalog.methods)


def complete_event(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Event names the live server publishes (and ``all``) not given yet."""
    given = set(ctx.params.get("names") or ())
    # "all" is client.events.ALL_EVENTS, spelled here: `midgram call` (which imports this
    # module) must not load the listener.
    return _offer(ctx, incomplete, lambda catalog: ["all", *catalog.events()], given)


def complete_param(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``name=`` for the method's parameters not given yet."""
    method = ctx.params.get("method")
    catalog = _catalog(ctx)
    if not method or catalog is None or "=" in incomplete:
        return []
    given = {word.split("=", 1)[0].removesuffix(":") for word in ctx.params.get("args") or ()}
    return [
        CompletionItem(f"{name}=")
        for name in catalog.params(method)
        if name.startswith(incomplete) and name not in given
    ]
