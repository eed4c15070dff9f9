"""``midgram shell``: a prompt with history and live completion; a line runner on a pipe.

A line is ``METHOD [ARGS...]``, split like a shell command line (quotes work) and read with
the same rule as ``midgram call``. Lines starting with ``.`` are the shell's own commands.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import click

from midgram.cli.complete import Catalog
from midgram.cli.failures import describe, exit_status
from midgram.cli.output import FORMATS, auto_format, render, use_colour, yaml_missing
from midgram.cli.params import PARAMS_HELP, ParamsError, parse_words
from midgram.client.calls import Client
from midgram.client.exchange import Exchange
from midgram.errors import ClientError
from midgram.logs import printable

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document

__all__ = ["Shell", "history_path"]

SHELL_HELP: Final = f"""Type `METHOD [ARGS...]` to call a command; TAB completes command and
parameter names. ARGS: {PARAMS_HELP}
  .format [FMT]   show or set the output format ({", ".join(FORMATS)}: the reply datagram)
  .help           this text
  exit, quit, Ctrl-D   leave"""
_LEAVE: Final = frozenset({"exit", "quit", ".exit", ".quit"})


def history_path() -> Path:
    """``$XDG_STATE_HOME/midgram/history`` (default ``~/.local/state/midgram/history``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "midgram" / "history"


class Shell:
    """Runs lines against one client; ``run()`` returns the exit status."""

    def __init__(self, client: Client, fmt: str | None) -> None:
        self.client = client
        self.catalog = Catalog(client.target, client.dialect.name, timeout=client.timeout)
        self.fmt = fmt
        self.status = 0
        self._reply: bytes | None = None  # the last reply datagram, for the raw format
        client.on_exchange = self._keep
        self._commands: MappingProxyType[str, Callable[[list[str]], None]] = MappingProxyType(
            {".help": self._help, ".format": self._format}
        )

    def run(self) -> int:
        if sys.stdin.isatty() and sys.stdout.isatty():
            self._interactive()
            return 0
        for line in sys.stdin:
            if not self.execute(line):
                break
        return self.status

    def execute(self, line: str) -> bool:
        """Run one line; False when it asks to leave."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            self._error(f"cannot split the line: {exc}")
            return True
        if not words:
            return True
        if words[0] in _LEAVE:
            return False
        command = self._commands.get(words[0])
        if command is not None:
            command(words[1:])
        elif words[0].startswith("."):
            self._error(f"unknown shell command {words[0]!r}: try .help")
        else:
            self._call(words[0], words[1:])
        return True

    def _keep(self, exchange: Exchange) -> None:
        self._reply = exchange.reply

    def _call(self, method: str, words: list[str]) -> None:
        tty = sys.stdout.isatty()
        fmt = auto_format(self.fmt, tty=tty)
        self._reply = None
        try:
            params = parse_words(words)
            result = self.client.request(method, params)
        except (ParamsError, TypeError) as exc:
            self._error(str(exc), status=2)
            return
        except ClientError as exc:
            self._show_raw(fmt)
            line = describe(
                exc,
                target=self.client.target,
                method=method,
                dialect=self.client.dialect.name,
                params=params,
                in_shell=True,
            )
            self._error(line, status=exit_status(exc))
            return
        if self._show_raw(fmt):
            return
        colour = use_colour(tty)
        click.echo(render(result, fmt, colour=colour), color=colour)

    def _show_raw(self, fmt: str) -> bool:
        """The raw format: the reply datagram as it arrived (as `midgram call -f raw`)."""
        if fmt != "raw":
            return False
        if self._reply is not None:
            click.echo(self._reply.decode(errors="backslashreplace"))
        return True

    def _error(self, message: str, status: int = 1) -> None:
        self.status = max(self.status, status)
        click.echo(f"midgram: {printable(message)}", err=True)

    def _help(self, args: list[str]) -> None:
        click.echo(SHELL_HELP)

    def _format(self, args: list[str]) -> None:
        if not args:
            click.echo(self.fmt or "auto")
        elif args[0] not in FORMATS:
            self._error(f"unknown format {args[0]!r}: use one of {', '.join(FORMATS)}")
        elif args[0] == "yaml" and (why := yaml_missing()):
            self._error(why)
        else:
            self.fmt = args[0]

    def _interactive(self) -> None:
        # Imported here: prompt_toolkit takes ~0.1 s to load, and a piped shell needs none.
        from prompt_toolkit import PromptSession  # noqa: PLC0415
        from prompt_toolkit.history import FileHistory, InMemoryHistory  # noqa: PLC0415

        path = history_path()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            history: FileHistory | InMemoryHistory = FileHistory(str(path))
        except OSError:
            history = InMemoryHistory()
        session: PromptSession[str] = PromptSession(
            history=history, completer=_completer(self), complete_while_typing=False
        )
        click.echo(f"midgram shell on {self.client.target}: .help for help, Ctrl-D to leave")
        while True:
            try:
                line = session.prompt(f"{self.client.target}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            try:
                if not self.execute(line):
                    return
            except KeyboardInterrupt:
                self._error("interrupted")


def _completer(shell: Shell) -> Completer:
    """A prompt_toolkit completer: command names first, then ``name=`` for parameters."""
    from prompt_toolkit.completion import Completer, Completion  # noqa: PLC0415

    class NameCompleter(Completer):
        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterator[Completion]:
            text = document.text_before_cursor
            words = text.split()
            current = "" if not words or text[-1:].isspace() else words[-1]
            done = words if not current else words[:-1]
            for name in _candidates(shell.catalog, done, current):
                yield Completion(name, start_position=-len(current))

    return NameCompleter()


def _candidates(catalog: Catalog, done: list[str], current: str) -> Iterable[str]:
    if not done:
        return [name for name in catalog.methods() if name.startswith(current)]
    if "=" in current:
        return []
    given = {word.split("=", 1)[0].removesuffix(":") for word in done[1:]}
    return [
        f"{name}="
        for name in catalog.params(done[0])
        if name.startswith(current) and name not in given
    ]
