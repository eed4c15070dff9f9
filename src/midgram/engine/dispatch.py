"""Dispatch: the whole MI server minus sockets, one datagram at a time.

A ``Dispatcher`` runs datagrams against a Registry (midgram.engine.registry). Pure: no
sockets, no clock. What its callers need, and nothing else:

- ``handle(datagram)``, the reference path: an ``Outcome`` (the reply bytes or none, and a
  small record of what happened for logs, statistics and tracing);
- ``answer(datagram)``, its fast path for servers: the reply's bytes for the common request,
  else what ``handle`` gives (tests/test_dispatch_fast.py holds the two equal);
- ``answer_function(FastAnswer)``: ``answer``, or its native twin when the C module is there;
- ``handle_oversize(size)``: the answer to a datagram too large to have been read whole.

With an access policy (``midgram.engine.access``), a call of a command that not everyone may
call is not run at once: both paths give a ``Guarded`` instead, which the caller, who knows
who sent the datagram, runs with ``Guarded.run(peer, credentials)``: the command, or
``403 Forbidden``. Such commands are left out of the bare-call table (``answer``'s shortcut,
and ``FastAnswer``'s), so every other call is served as fast as without a policy.

Both paths parse and check a request with ``wire.jsonrpc.parse_request``. For an
``async def`` handler they give a ``Pending`` instead, which the caller settles in its event
loop, so the same engine serves a blocking worker and an asyncio server.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeAlias

import orjson

from midgram.engine.access import AccessPolicy, Credentials, caller_label
from midgram.engine.registry import Command, Handler, Registry, bind_arguments
from midgram.errors import (
    InvalidParams,
    InvalidRequest,
    MIError,
    ProtocolError,
    ServerError,
)
from midgram.logs import RateLimitedLog, shown
from midgram.wire.jsonrpc import (
    ALWAYS_FITS_MARGIN,
    DEFAULT_BUF_SIZE,
    INTERNAL_ERROR_REPLY,
    NO_ID,
    PARSE_ERROR_REPLY,
    Notification,
    Params,
    Request,
    TooDeep,
    encode_error,
    encode_result,
    parse_request,
    reply_fits,
)

__all__ = [
    "Answer",
    "Dispatcher",
    "Guarded",
    "Outcome",
    "Pending",
    "Status",
]

log = logging.getLogger(__name__)


class Status(enum.Enum):
    """What became of one datagram; the worker counts and logs by it."""

    OK = "ok"
    EMPTY = "empty"  # a 0-byte datagram: ignored, like OpenSIPS
    PARSE_ERROR = "parse_error"
    OVERSIZE = "oversize"  # larger than the buffer: never executed in part
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    COMMAND_ERROR = "command_error"  # the handler raised MIError
    SERVER_ERROR = "server_error"  # the handler failed unexpectedly
    REPLY_TOO_BIG = "reply_too_big"
    FORBIDDEN = "forbidden"  # an acl rule does not let this caller run the command


class Outcome(NamedTuple):
    """The reply to send (None: send nothing) and what happened, for logs/stats/tracing.

    A NamedTuple, immutable and cheap to build once per datagram (see jsonrpc.Request)."""

    reply: bytes | None
    status: Status
    method: str | None = None
    params: Params = None
    command: Command | None = None


_IGNORED: Final = Outcome(None, Status.EMPTY)
_METHOD_NOT_FOUND: Final = MIError(-32601, "Method not found")
#: A caller an acl rule does not name: the error object OpenSIPS's MI errors take.
_FORBIDDEN: Final = MIError(403, "Forbidden")
_NO_ARGUMENTS: Final[dict[str, Any]] = {}
_OK: Final = "OK"  # what a handler returning None answers
_dumps: Final = orjson.dumps


def _call(method: str, params: Params, req_id: Any) -> Request | Notification:
    """The call as a Request or a Notification, for the general path, from the call read flat."""
    if req_id is NO_ID:
        return Notification(method, params)
    return Request(method, params, req_id)


@dataclass(slots=True)
class Pending:
    """An ``async def`` command in flight: ``await settle()`` for its outcome (or await
    ``coroutine`` where the caller wants it, then call ``finish``)."""

    coroutine: Coroutine[Any, Any, Any]
    _dispatcher: Dispatcher
    _call: Request | Notification
    _command: Command

    def finish(self, result: Any = None, error: BaseException | None = None) -> Outcome:
        """The outcome for the coroutine's result (or the exception it raised)."""
        return self._dispatcher._complete(self._call, self._command, result, error)

    async def settle(self) -> Outcome:
        """Run the command to its end in the running loop: its outcome, whatever it raised
        (a cancellation goes through: the caller's, not the command's)."""
        try:
            result = await self.coroutine
        except Exception as exc:
            return self.finish(error=exc)
        return self.finish(result)


@dataclass(slots=True)
class Guarded:
    """A call of a command that not everyone may call, not run yet: ``run`` it once the
    caller is known."""

    _dispatcher: Dispatcher
    method: str
    params: Params
    req_id: Any
    command: Command
    #: Whether an Outcome is wanted, never bare bytes (it came from ``handle``).
    whole: bool = False

    def run(self, peer: Any, credentials: Credentials | None) -> bytes | Outcome | Pending:
        """The call, if the acl lets this caller make it (``peer``: its address;
        ``credentials``: what the kernel says of it on a UNIX socket), else ``403
        Forbidden``; what ``answer`` (or ``handle``) would have given."""
        return self._dispatcher._guarded(self, peer, credentials)


#: What serves one datagram: ``Dispatcher.answer``, or its native twin.
Answer: TypeAlias = Callable[[bytes], "bytes | Outcome | Pending | Guarded"]


class Dispatcher:
    """Runs datagrams against a registry. Pure: no sockets, no clock."""

    def __init__(
        self,
        registry: Registry,
        *,
        pretty: bool = False,
        buf_size: int = DEFAULT_BUF_SIZE,
        json_errors: bool = False,
        access: AccessPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.pretty = pretty
        self.buf_size = buf_size
        self.json_errors = json_errors
        self.access = access
        bare = registry.bare_handlers()
        # What C may bind and run with named params (the live table, as ``bare``).
        named = registry.named_handlers()
        self._lookup = registry.lookup_function()
        #: What may run at once: every command, or those no acl guards.
        self._open = self._lookup
        self._guards = access.guards if access is not None else {}
        if self._guards:
            # The commands as they are now, which the policy was checked against: one added
            # later is unknown, never unguarded. Neither fast path may run a guarded command:
            # it is run for its sender (a Guarded, through ``answer``).
            commands = {command.name: command for command in registry}
            bare = {name: run for name, run in bare.items() if name not in self._guards}
            named = {name: run for name, run in named.items() if name not in self._guards}
            self._lookup = commands.get
            self._open = {n: c for n, c in commands.items() if n not in self._guards}.get
        self._bare_handlers: dict[str, Handler] = bare
        self._named_handlers = named
        self._bare = bare.get
        # Up to this size a reply fits whatever its id (jsonrpc.ALWAYS_FITS_MARGIN).
        self._fast_limit = buf_size - ALWAYS_FITS_MARGIN
        self._log = RateLimitedLog(log)

    def _parse_error(self, why: str) -> bytes:
        """The plain-text reply, or a -32700 object when json_errors is on (difference 10)."""
        if self.json_errors:
            return encode_error(-32700, "Parse error", why, None, pretty=self.pretty)
        return PARSE_ERROR_REPLY

    def handle(self, data: bytes) -> Outcome | Pending | Guarded:
        """One datagram in, its outcome (or a Pending for an async command) out: the
        reference path, with the whole record (for tracing, debug logging, statistics).
        Never raises: whatever escapes the steps below is ``_failed`` (a bug, answered and
        logged)."""
        try:
            try:
                method, params, req_id = parse_request(data)
            except ProtocolError as exc:
                return self._rejected(data, exc)
            handled = self._run(method, params, req_id)
            if type(handled) is bytes:
                return Outcome(handled, Status.OK, method, params, self._lookup(method))
            if type(handled) is Guarded:
                handled.whole = True
            return handled  # type: ignore[return-value]
        except Exception as exc:
            return self._failed(data, exc)

    def answer(self, data: bytes) -> bytes | Outcome | Pending | Guarded:
        """``handle`` for servers: the common datagram answered in one flat pass.

        A valid request whose reply (compact, or pretty with pretty_printing) is far below
        the size limit gives that reply's bytes: status OK, nothing to count or log.
        Anything else gives what ``handle`` gives. Either way the handler runs at most once,
        and the reply is ``handle``'s byte for byte (tests/test_dispatch_fast.py checks both
        on any datagram). It parses and checks the request as ``handle`` does
        (``parse_request``) and builds no Request or Outcome object. A result plain orjson
        cannot encode (non-string keys, integers beyond 64 bits) takes the general path after
        its handler ran: the same bytes, as an Outcome. A command an acl guards gives a
        ``Guarded``, which the server runs for its sender. Like ``handle`` it never raises (a
        ``try`` costs nothing until something raises).
        """
        try:
            try:
                method, params, req_id = parse_request(data)
            except ProtocolError as exc:
                return self._rejected(data, exc)
            handler = self._bare(method) if params is None else None
            if handler is None:
                return self._run(method, params, req_id)
            # _run's common case, inlined: a command without params, the busiest kind.
            try:
                result = handler()
            except Exception as exc:
                return self._after_bare(method, req_id, None, exc)
            reply = self._compact(result, req_id)
            return reply if reply is not None else self._after_bare(method, req_id, result, None)
        except Exception as exc:
            return self._failed(data, exc)

    def answer_function(self, native: Callable[..., Answer] | None) -> Answer:
        """What a server calls for each datagram: ``answer``, or the same in C when
        ``native`` (``_batchio.FastAnswer``) is given and can serve this dispatcher: it
        recognises a bare call (no params), or one with flat named params (strings, small
        integers, booleans, bound by ``Command.named_binders``), in the datagram's bytes,
        runs its handler and hands the result to ``_compact`` and ``_after_bare`` as
        ``answer`` would, and calls ``answer`` itself for anything else."""
        if native is None:
            return self.answer
        return native(
            self._bare_handlers, self._compact, self._after_bare, self.answer, self._named_handlers
        )

    def handle_oversize(self, size: int) -> Outcome:
        """A datagram larger than the buffer (difference 5): answered as unparsable."""
        why = f"request of {size}+ bytes exceeds the {self.buf_size}-byte limit"
        return Outcome(self._parse_error(why), Status.OVERSIZE)

    def _rejected(self, data: bytes, error: ProtocolError) -> Outcome:
        """A datagram that is not a valid request: not JSON (``ParseError``), or not a
        JSON-RPC 2.0 request (``InvalidRequest``, answered with the id it gives)."""
        if isinstance(error, InvalidRequest):
            reply_id, method = error.reply_id, error.method
            reply = encode_error(-32600, "Invalid Request", None, reply_id, pretty=self.pretty)
            return Outcome(reply, Status.INVALID_REQUEST, method)
        if not data:
            return _IGNORED  # a 0-byte datagram, as OpenSIPS: no reply
        return Outcome(self._parse_error(str(error)), Status.PARSE_ERROR)

    def _after_bare(
        self,
        method: str,
        req_id: Any,
        result: Any,
        error: BaseException | None,
        params: Params = None,
    ) -> Outcome:
        """The general path for what a handler called on a fast path gave (an error, an
        unusual result): without params, or with the named ``params`` it was bound to."""
        command = self._lookup(method)
        assert command is not None  # it had a bare handler or a binder
        return self._complete(_call(method, params, req_id), command, result, error)

    def _compact(self, result: Any, req_id: Any) -> bytes | None:
        """The common reply: OK, far below the size limit, in one encode (one orjson call
        for the whole envelope; with pretty_printing, ``encode_result``'s cJSON layout).
        None when it is not that: _complete decides."""
        if req_id is NO_ID:
            return None
        try:
            if self.pretty:
                reply = encode_result(_OK if result is None else result, req_id, pretty=True)
            else:
                reply = _dumps(
                    {"jsonrpc": "2.0", "result": _OK if result is None else result, "id": req_id}
                )
        except TypeError:  # not JSON to orjson, or TooDeep: _complete says which
            return None
        return reply if len(reply) <= self._fast_limit else None

    def _run(self, method: str, params: Params, req_id: Any) -> bytes | Outcome | Pending | Guarded:
        """Find the command, bind the params, run the handler. The common case (a compact
        OK reply to a request, far below the size limit) gives the reply's bytes, encoded
        here with one orjson call; anything else goes the general way, with the call as a
        Request or Notification. A command an acl guards is not run: a ``Guarded``."""
        command = self._open(method)
        if command is None:
            command = self._lookup(method)
            if command is not None:
                return Guarded(self, method, params, req_id, command)
            call = _call(method, params, req_id)
            return self._error(call, None, Status.UNKNOWN_METHOD, _METHOD_NOT_FOUND)
        return self._execute(command, method, params, req_id)

    def _execute(
        self, command: Command, method: str, params: Params, req_id: Any
    ) -> bytes | Outcome | Pending:
        """``_run`` once the command is found (and allowed)."""
        if params is None and command.takes_nothing:
            kwargs = _NO_ARGUMENTS
        else:
            try:
                kwargs = bind_arguments(command, params)
            except InvalidParams as exc:
                call = _call(method, params, req_id)
                return self._error(call, command, Status.INVALID_PARAMS, exc)
        if command.is_async:
            return self._start_async(_call(method, params, req_id), command, kwargs)
        try:
            result = command.handler(**kwargs)
        except Exception as exc:
            return self._complete(_call(method, params, req_id), command, None, exc)
        reply = self._compact(result, req_id)
        if reply is not None:
            return reply
        return self._complete(_call(method, params, req_id), command, result, None)

    def _guarded(
        self, call: Guarded, peer: Any, credentials: Credentials | None
    ) -> bytes | Outcome | Pending:
        """``Guarded.run``: the command's principals decide, before its params are even
        looked at (a refused caller learns nothing of them)."""
        command, method, params = call.command, call.method, call.params
        principals = self._guards[command.name]
        if not principals.admits(peer, credentials):
            # Any local user can repeat this: one line per command per interval.
            self._log.log(
                ("denied", command.name),
                logging.WARNING,
                "refused MI command %s to %s: not allowed by %s",
                command.name,
                caller_label(peer, credentials),
                principals.source,
            )
            denied = _call(method, params, call.req_id)
            return self._error(denied, command, Status.FORBIDDEN, _FORBIDDEN)
        handled = self._execute(command, method, params, call.req_id)
        if call.whole and type(handled) is bytes:
            return Outcome(handled, Status.OK, method, params, command)
        return handled

    def _start_async(
        self, call: Request | Notification, command: Command, kwargs: dict[str, Any]
    ) -> Outcome | Pending:
        try:
            coroutine = command.handler(**kwargs)
        except Exception as exc:
            return self._complete(call, command, None, exc)
        return Pending(coroutine, self, call, command)

    def _complete(
        self,
        call: Request | Notification,
        command: Command,
        result: Any,
        error: BaseException | None,
    ) -> Outcome:
        if isinstance(error, MIError):
            invalid = isinstance(error, InvalidParams)
            status = Status.INVALID_PARAMS if invalid else Status.COMMAND_ERROR
            return self._error(call, command, status, error)
        if error is not None:
            return self._server_error(call, command, error)
        if type(call) is Notification:
            return Outcome(None, Status.OK, call.method, call.params, command)
        assert isinstance(call, Request)
        try:
            reply = encode_result(_OK if result is None else result, call.id, pretty=self.pretty)
        except TypeError as exc:
            return self._server_error(call, command, exc)
        return self._checked(reply, call, command, Status.OK)

    def _server_error(
        self, call: Request | Notification, command: Command, error: BaseException
    ) -> Outcome:
        if isinstance(error, TooDeep):
            # Not JSON we can write (orjson's depth limit, kept by every encoder): the
            # command's bug, answered as a handler failure with what is wrong.
            self._log.log(
                ("deep", command.name),
                logging.ERROR,
                "MI command %s returned a result %s: answered -32000",
                command.name,
                error,
            )
            failure = ServerError(f"Command result {error}")
        else:
            # A sender can make a command fail again and again: one traceback per command
            # per interval, not one per datagram.
            self._log.log(
                ("failed", command.name),
                logging.ERROR,
                "MI command %s failed",
                command.name,
                exc_info=(type(error), error, error.__traceback__),
            )
            failure = ServerError(f"Command handler raised {type(error).__name__}")
        return self._error(call, command, Status.SERVER_ERROR, failure)

    def _failed(self, data: bytes, error: Exception) -> Outcome:
        """What ``handle`` or ``answer`` let escape: a bug of midgram's, not a reason to end
        a worker. Answered as OpenSIPS answers a reply it cannot build (``500 Internal
        error``, or -32603 with json_errors), and logged with the datagram's first bytes."""
        self._log.log(
            ("bug", type(error)),
            logging.ERROR,
            "cannot answer the datagram %s",
            shown(data),
            exc_info=(type(error), error, error.__traceback__),
        )
        reply = INTERNAL_ERROR_REPLY
        if self.json_errors:
            why = f"{type(error).__name__} while answering"
            reply = encode_error(-32603, "Internal error", why, None, pretty=self.pretty)
        return Outcome(reply, Status.SERVER_ERROR)

    def _error(
        self,
        call: Request | Notification,
        command: Command | None,
        status: Status,
        error: MIError,
    ) -> Outcome:
        # Notifications are answered only for -32700/-32600 (docs/compatibility.md,
        # "Notifications"): never here.
        if type(call) is Notification:
            return Outcome(None, status, call.method, call.params, command)
        assert isinstance(call, Request)
        reply = encode_error(error.code, error.message, error.data, call.id, pretty=self.pretty)
        return self._checked(reply, call, command, status)

    def _checked(
        self, reply: bytes, call: Request, command: Command | None, status: Status
    ) -> Outcome:
        """OpenSIPS's size rule: a reply that does not fit the buffer is never truncated."""
        if reply_fits(reply, call.id, self.buf_size, pretty=self.pretty):
            return Outcome(reply, status, call.method, call.params, command)
        self._log.log(
            ("too big", command.name if command else None),
            logging.WARNING,
            "reply to %s is %d bytes, over the %d-byte limit",
            shown(call.method),
            len(reply),
            self.buf_size,
        )
        fallback = INTERNAL_ERROR_REPLY
        if self.json_errors:
            why = f"reply of {len(reply)} bytes exceeds the {self.buf_size}-byte limit"
            fallback = encode_error(-32603, "Internal error", why, call.id, pretty=self.pretty)
        return Outcome(fallback, Status.REPLY_TOO_BIG, call.method, call.params, command)
