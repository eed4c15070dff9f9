"""What ``midgram call`` does once its command line is read: call, print, report.

Two readers of the command line hand a ``CallOptions`` here: the click command (``call.py``),
the reference for every form, and ``quickcall``, which reads the plain forms a script runs in
a loop without importing click. So a call is made, shown and reported in this one place, and
nothing here imports click (a coloured terminal's styles import it when they are drawn).

One server is called with the blocking ``Client``; several at once with ``AsyncClient``,
whose event loop (asyncio, ~15 ms to import) only they pay for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from midgram.cli.failures import EXIT_INTERRUPTED, EXIT_OK, STATUS_NAMES, describe, exit_status
from midgram.cli.output import auto_format, raw_text, render, use_colour
from midgram.client.calls import AsyncClient, Client
from midgram.client.exchange import Exchange
from midgram.errors import ClientError, RemoteError
from midgram.local import default_target
from midgram.logs import printable
from midgram.wire.address import parse_target
from midgram.wire.jsonrpc import Params

__all__ = ["CallOptions", "CallUsageError", "canonical_targets", "echo", "fail", "run_call"]


class CallUsageError(ValueError):
    """The call cannot be made as asked (e.g. named params in the kamailio dialect): a usage
    error, found before anything was sent."""


@dataclass(frozen=True)
class CallOptions:
    """A ``midgram call`` command line, read."""

    method: str
    params: Params
    targets: Sequence[str]  # canonical (``canonical_targets``), at least one
    timeout: float
    dialect: str
    fmt: str | None = None
    dry_run: bool = False
    verbose: bool = False


def canonical_targets(texts: Sequence[str]) -> list[str]:
    """The targets as canonical texts, each once (the default socket when none is given);
    ``AddressError`` for one that does not parse."""
    return list(dict.fromkeys(str(parse_target(text)) for text in texts or [default_target()]))


def echo(message: str | bytes, *, err: bool = False) -> None:
    """One line to stdout (or stderr); bytes as they are (``--format raw`` in a pipe)."""
    stream = sys.stderr if err else sys.stdout
    if isinstance(message, bytes):
        stream.flush()
        stream.buffer.write(message + b"\n")
        stream.buffer.flush()
    else:
        stream.write(message + "\n")
        stream.flush()


def fail(message: str) -> None:
    # A server's words (an error message, its data) may carry escape sequences.
    echo(f"midgram: {printable(message)}", err=True)


@dataclass
class TargetAnswer:
    """What one target answered."""

    target: str
    result: Any = None
    error: ClientError | None = None
    exchange: Exchange | None = None

    @property
    def status(self) -> int:
        return EXIT_OK if self.error is None else exit_status(self.error)


def _verbose_hook(prefix: bool) -> Callable[[Exchange], None]:
    def show(exchange: Exchange) -> None:
        where = f" {exchange.target}" if prefix else ""
        sent = printable(exchange.request.decode(errors="backslashreplace"), keep="\n\t")
        echo(f">{where} {len(exchange.request)} bytes\n{sent}", err=True)
        if exchange.reply is None:
            echo(f"<{where} no reply after {exchange.elapsed * 1000:.2f} ms", err=True)
            return
        received = printable(exchange.reply.decode(errors="backslashreplace"), keep="\n\t")
        echo(
            f"<{where} {len(exchange.reply)} bytes in {exchange.elapsed * 1000:.2f} ms\n{received}",
            err=True,
        )

    return show


def _recording(client: Client | AsyncClient) -> list[Exchange]:
    """The exchanges ``client`` makes from now on (for ``--format raw``), with any hook kept."""
    exchanges: list[Exchange] = []
    hook = client.on_exchange

    def keep(exchange: Exchange) -> None:
        exchanges.append(exchange)
        if hook is not None:
            hook(exchange)

    client.on_exchange = keep
    return exchanges


def _call_one(client: Client, method: str, params: Params) -> TargetAnswer:
    exchanges = _recording(client)
    answer = TargetAnswer(client.target)
    try:
        answer.result = client.request(method, params)
    except ClientError as exc:
        answer.error = exc
    answer.exchange = exchanges[-1] if exchanges else None
    return answer


async def _call_one_async(client: AsyncClient, method: str, params: Params) -> TargetAnswer:
    """``_call_one``, in asyncio."""
    exchanges = _recording(client)
    answer = TargetAnswer(client.target)
    try:
        answer.result = await client.request(method, params)
    except ClientError as exc:
        answer.error = exc
    answer.exchange = exchanges[-1] if exchanges else None
    return answer


def _call_all(clients: list[AsyncClient], method: str, params: Params) -> list[TargetAnswer]:
    import asyncio  # noqa: PLC0415 - only several targets need an event loop

    async def gathered() -> list[TargetAnswer]:
        return list(await asyncio.gather(*(_call_one_async(c, method, params) for c in clients)))

    return asyncio.run(gathered())


def _error_doc(error: ClientError) -> Any:
    if isinstance(error, RemoteError):
        doc: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.data is not None:
            doc["data"] = error.data
        return doc
    return str(error)


def _show_one(answer: TargetAnswer, fmt: str, colour: bool) -> None:
    if fmt == "raw":
        if answer.exchange is not None and answer.exchange.reply is not None:
            echo(raw_text(answer.exchange.reply, tty=sys.stdout.isatty()))
    elif answer.error is None:
        echo(render(answer.result, fmt, colour=colour))


def _show_many(answers: list[TargetAnswer], fmt: str, colour: bool) -> None:
    if fmt in ("json", "pretty", "yaml"):
        doc: dict[str, Any] = {}
        for answer in answers:
            entry: dict[str, Any] = {"status": STATUS_NAMES.get(answer.status, "error")}
            if answer.error is None:
                entry["result"] = answer.result
            else:
                entry["error"] = _error_doc(answer.error)
            doc[answer.target] = entry
        echo(render(doc, fmt, colour=colour))
        return
    for answer in answers:
        echo(f"== {answer.target}: {STATUS_NAMES.get(answer.status, 'error')}")
        _show_one(answer, fmt, colour)


def _answers(options: CallOptions) -> list[TargetAnswer]:
    hook = _verbose_hook(len(options.targets) > 1) if options.verbose else None
    settings: dict[str, Any] = {
        "timeout": options.timeout,
        "dialect": options.dialect,
        "on_exchange": hook,
    }
    if len(options.targets) == 1:
        client = Client(options.targets[0], **settings)
        return [_call_one(client, options.method, options.params)]
    clients = [AsyncClient(target, **settings) for target in options.targets]
    return _call_all(clients, options.method, options.params)


def run_call(options: CallOptions) -> int:
    """Make the call, print what came back and why anything failed; the exit status.
    ``CallUsageError`` when the call cannot be made as asked (nothing was sent)."""
    method, params = options.method, options.params
    if options.dry_run:
        client = Client(options.targets[0], timeout=options.timeout, dialect=options.dialect)
        try:
            echo(client.encode(method, params).decode())
        except TypeError as exc:
            raise CallUsageError(str(exc)) from None
        return EXIT_OK
    tty = sys.stdout.isatty()
    fmt, colour = auto_format(options.fmt, tty=tty), use_colour(tty)
    try:
        answers = _answers(options)
    except TypeError as exc:  # e.g. named params in the kamailio dialect
        raise CallUsageError(str(exc)) from None
    except KeyboardInterrupt:
        fail("interrupted")
        return EXIT_INTERRUPTED
    if len(answers) == 1:
        _show_one(answers[0], fmt, colour)
    else:
        _show_many(answers, fmt, colour)
    for answer in answers:
        if answer.error is not None:
            fail(
                describe(
                    answer.error,
                    target=answer.target,
                    method=method,
                    dialect=options.dialect,
                    params=params,
                )
            )
    return max(answer.status for answer in answers)
