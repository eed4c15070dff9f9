"""``midgram events``: listen to a server's events, staying subscribed, until told to stop.

The listening, subscribing and renewing is the library's (``midgram.client.events``); here
is what a person or a script sees: each event on stdout as it arrives, what happened to the
subscriptions on stderr, ``--exec`` run per event, and the stops (``--count``,
``--duration``, Ctrl-C, SIGTERM, SIGHUP), each of which unsubscribes first.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Final

import click

from midgram.cli.call import _check_format, _fail, _one_target, one_target_options
from midgram.cli.complete import complete_event
from midgram.cli.durations import Duration
from midgram.cli.failures import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    describe,
    exit_status,
)
from midgram.cli.output import FORMATS, auto_format, raw_text, render, use_colour
from midgram.client.calls import Client
from midgram.client.events import (
    ALL_EVENTS,
    CHECK_EVERY,
    LISTEN_EXPIRE,
    MIN_EXPIRE,
    Event,
    EventStream,
    Upkeep,
)
from midgram.errors import ClientError, ConfigError, RemoteError, TransportError

__all__ = ["event_doc", "events"]

#: ``call``'s formats but ``table``: events come one at a time, a table needs them all.
EVENT_FORMATS: Final = tuple(fmt for fmt in FORMATS if fmt != "table")
#: What ``--exec``'s command finds in its environment besides the event on stdin.
EXEC_EVENT_VARIABLE: Final = "MIDGRAM_EVENT"


class _Stop(BaseException):
    """SIGTERM or SIGHUP: stop listening, unsubscribe, exit 0 (a service being stopped)."""


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)


def _ignore_stops() -> None:
    """From now on SIGTERM and SIGHUP change nothing: unsubscribing is not cut short."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _stop(signum: int, _frame: FrameType | None) -> None:
    _ignore_stops()  # once
    raise _Stop(signum)


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _stop) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- what is shown ------------------------------------------------------------------------


def event_doc(event: Event) -> dict[str, Any]:
    """An event as ``-f json`` prints it and ``--exec`` reads it: its name, params, when it
    was received (ISO 8601, UTC) and who sent it."""
    received = datetime.datetime.fromtimestamp(event.received, datetime.UTC)
    return {
        "event": event.name,
        "params": event.params,
        "received": received.isoformat(timespec="microseconds"),
        "sender": event.sender,
    }


def _shower(fmt: str, colour: bool, tty: bool) -> Callable[[Event], None]:
    """How each event is written to stdout (flushed at once: a pipe is read live)."""

    def show(event: Event) -> None:
        if fmt == "raw":
            click.echo(raw_text(event.data, tty=tty))
            return
        text = render(event_doc(event), fmt, colour=colour)
        if fmt == "yaml":
            text = f"---\n{text}"
        elif fmt == "lines":
            text += "\n"  # a blank line between two events
        click.echo(text, color=colour)

    return show


def _run_exec(command: str, event: Event) -> None:
    """``--exec``: ``command`` in the shell, the event as one line of JSON on its stdin."""
    line = render(event_doc(event), "json") + "\n"
    env = {**os.environ, EXEC_EVENT_VARIABLE: event.name}
    try:
        done = subprocess.run(command, shell=True, input=line.encode(), env=env, check=False)  # noqa: S602 - the user's own shell command
    except OSError as exc:
        _fail(f"--exec: cannot run {command!r}: {exc}")
        return
    if done.returncode != 0:
        _fail(f"--exec: {command!r} exited with status {done.returncode} for {event.name}")


class _Reporter:
    """What happened to the subscriptions, on stderr: failures once per outage, the
    subscriptions made again after it; routine renewals say nothing."""

    def __init__(self, target: str, quiet: bool) -> None:
        self.target = target
        self.quiet = quiet
        self._trouble = ""  # the failure said last; "" when all is well

    def __call__(self, upkeep: Upkeep) -> None:
        if upkeep.error is None:
            if upkeep.reason == "restart" or self._trouble:
                self._say(f"{self.target} restarted (or came back): subscribed again")
            self._trouble = ""
            return
        method = "uptime" if upkeep.reason == "check" else "event_subscribe"
        what = describe(upkeep.error, target=self.target, method=method)
        if upkeep.reason == "close":
            _fail(f"could not unsubscribe: {what}: the subscriptions expire by themselves")
        elif what != self._trouble:  # once a failure, not every check while it lasts
            self._trouble = what
            self._say(f"{what}: still listening, subscribing again once it answers")

    def _say(self, text: str) -> None:
        if not self.quiet:
            _fail(text)


# --- failing to subscribe -----------------------------------------------------------------


def _refusal(exc: ClientError, client: Client, stream: EventStream) -> str:
    """Why opening the stream failed, in one line; for a refused subscription, whether the
    event or the socket was refused."""
    line = describe(exc, target=client.target, method="event_subscribe", dialect="opensips")
    if not isinstance(exc, RemoteError) or exc.code != 400:  # OpenSIPS's code for both
        return line
    try:
        listed = client.request("events_list")["Events"]
        known = [entry["name"] for entry in listed]
    except (ClientError, KeyError, TypeError):
        return line
    unknown = [name for name in stream.names if name not in known and name != ALL_EVENTS]
    if unknown:
        has = ", ".join(known) or "none"
        return f"{line}: {client.target} publishes no {', '.join(unknown)} (it has: {has})"
    return (
        f"{line}: it refused the socket {stream.socket} (OpenSIPS takes only udp:IPv4:PORT "
        "and unix:/path: see --listen and --advertise)"
    )


def _open(ctx: click.Context, client: Client, stream: EventStream) -> None:
    """Subscribe; on failure, one line and ``midgram call``'s exit status."""
    try:
        stream.open()
    except ClientError as exc:
        _fail(_refusal(exc, client, stream))
        ctx.exit(exit_status(exc))
    except TransportError as exc:
        _fail(str(exc))
        ctx.exit(exit_status(exc))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _listen(
    stream: EventStream,
    show: Callable[[Event], None],
    command: str | None,
    count: int | None,
    duration: float | None,
) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    received = 0
    while count is None or received < count:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        event = stream.next(left)
        if event is None:
            return  # --duration is over
        received += 1
        show(event)
        if command is not None:
            _run_exec(command, event)


_EPILOG: Final = (
    EXIT_STATUS_HELP
    + """

\b
--count, --duration and SIGTERM (or SIGHUP) end it with 0, Ctrl-C with 130; each
unsubscribes first. Once subscribed, a server that restarts or goes away for a while
does not end it: it subscribes again as soon as the server answers."""
)


@click.command(
    epilog=_EPILOG,
    help="""Print the server's EVENTS as they are raised, staying subscribed.

Subscribes one local socket to each EVENT (`all`: every event the server lists), prints
each notification as it arrives, renews the subscriptions before they expire and at once
after the server restarts, and unsubscribes on the way out.

\b
In a pipe, one JSON object a line: {"event", "params", "received", "sender"}.
On a terminal, the same, pretty. --exec runs a command per event, with that
object on its stdin (and the event's name in $MIDGRAM_EVENT).

\b
Examples:
  midgram events E_CORE_THRESHOLD -t /run/opensips/mi.sock
  midgram events all -t udp:10.0.0.1:8080 --count 1 --duration 30s
  midgram events E_PIKE_BLOCKED --exec 'logger -t pike'
  midgram events E_X -t udp:192.0.2.1:8080 --listen udp:0.0.0.0:9999 \\
      --advertise udp:203.0.113.7:9999          # behind NAT""",
)
@click.argument("names", metavar="EVENT...", nargs=-1, required=True, shell_complete=complete_event)
@one_target_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(EVENT_FORMATS),
    help="json (one line an event), pretty (colour on a terminal), yaml, lines (path: value), "
    "raw (the notification datagram). Default: pretty on a terminal, json in a pipe.",
)
@click.option("-n", "--count", type=click.IntRange(min=1), help="Stop after N events.")
@click.option(
    "-d",
    "--duration",
    type=Duration("s", positive=True),
    help="Stop after this long: 30s, 1500ms; a bare number is seconds.",
)
@click.option(
    "--exec",
    "command",
    metavar="CMD",
    help="Run CMD (with the shell) for each event, the event as JSON on its stdin.",
)
@click.option(
    "--listen",
    metavar="SOCKET",
    help="Where to receive: udp:HOST:PORT (port 0: any free one) or unix:PATH. Default: a "
    "free UDP port on the "
    "address that reaches the target, or for a UNIX target a socket in a private folder.",
)
@click.option(
    "--advertise",
    metavar="SOCKET",
    help="The socket the server is told to send to, when it is not the one bound (NAT, "
    "containers): udp:HOST:PORT or unix:PATH.",
)
@click.option(
    "--expire",
    type=click.IntRange(min=MIN_EXPIRE),
    default=LISTEN_EXPIRE,
    show_default=True,
    help="Seconds each subscription lasts on the server; renewed at half.",
)
@click.option(
    "--check-every",
    type=Duration("s", positive=True),
    default=CHECK_EVERY,
    show_default=True,
    help="How often to ask the server's uptime, to subscribe again at once after a restart.",
)
@click.option("-q", "--quiet", is_flag=True, help="Say nothing on stderr but errors.")
@click.pass_context
def events(
    ctx: click.Context,
    *,
    names: tuple[str, ...],
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    fmt: str | None,
    count: int | None,
    duration: float | None,
    command: str | None,
    listen: str | None,
    advertise: str | None,
    expire: int,
    check_every: float,
    quiet: bool,
) -> None:
    _check_format(fmt)
    client = Client(_one_target(targets), timeout=timeout, dialect=dialect)
    reporter = _Reporter(client.target, quiet)
    try:
        stream = client.events(
            names,
            expire=expire,
            check_every=check_every,
            listen=listen,
            advertise=advertise,
            on_upkeep=reporter,
        )
    except ConfigError as exc:
        raise click.BadParameter(exc.reason, param_hint=f"--{exc.parameter}") from None
    except ValueError as exc:  # e.g. a dialect without events
        raise click.UsageError(str(exc)) from None
    tty = sys.stdout.isatty()
    show = _shower(auto_format(fmt, tty=tty), use_colour(tty), tty)
    status = EXIT_OK
    with _stoppable():
        try:
            _open(ctx, client, stream)
            if not quiet:
                events = ", ".join(stream.names)
                _fail(f"listening on {stream.socket} for {events} from {client.target}")
            _listen(stream, show, command, count, duration)
        except _Stop:
            pass
        except KeyboardInterrupt:
            _fail("interrupted")
            status = EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`| head -1`): nothing more can be shown. Later writes
            # (and the interpreter's last flush) go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            _ignore_stops()
            stream.close()
    ctx.exit(status)
