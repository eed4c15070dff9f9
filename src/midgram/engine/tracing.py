"""MI tracing, sans-IO: what OpenSIPS's mi_datagram sends to a HEP collector, as bytes.

For each datagram it served, a worker asks ``Tracer.request`` (after the command ran, before
the reply goes out) and, when a reply was sent, ``Tracer.reply``; each returns a HEP3 packet
or None. The rules are OpenSIPS's (docs/tracing.md, "What is traced" and "The payload"):

- a call is traced with its method name, the backend ``datagram`` and its params flattened
  by ``params_text``; ``trace_bwlist`` (``TraceFilter``) can leave a command out, but a
  method that is no command is always traced;
- a datagram that is not JSON (or too large to have been read whole) is traced as the
  command ``unknown`` whatever the list says;
- the reply is traced as sent (cut to 128 bytes), or ``500 Internal error`` when it could
  not be sent; a notification has no reply, so no reply trace;
- request and reply share one correlation id, ``MICORR`` + base64 of 20 bytes;
- payloads are HOMER 5 plain text (``homer5_on``, the default) or cJSON's formatted JSON.

Deliberately unlike OpenSIPS (docs/compatibility.md, difference 11): IPv6 peers are traced
with their real address (OpenSIPS copies half of it), and a UNIX-socket peer, which has no IP
address, is traced with loopback placeholders, ``127.0.0.1:0`` for the client and
``127.0.0.2:0`` for the server (the pair proto_hep's trace API defines for address-less
traffic), where OpenSIPS sends nothing at all. Async commands are traced like the others
(difference 19): a midgram worker awaits them and replies at once (OpenSIPS never traces its
own, differently made, async replies).

No clock here: times come in as nanoseconds since the epoch, randomness from a seedable
``random.Random``.
"""

from __future__ import annotations

import ipaddress
import random
import re
import struct
from binascii import b2a_base64
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from midgram.engine.dispatch import Outcome, Status
from midgram.errors import ConfigError
from midgram.wire import hep
from midgram.wire.jsonrpc import C_INT_MAX, C_INT_MIN, Params

__all__ = [
    "BACKEND",
    "MAX_PARAMS",
    "MAX_TRACE_FIELD",
    "UNIX_CLIENT",
    "UNIX_SERVER",
    "UNKNOWN_COMMAND",
    "CorrelationIds",
    "Endpoint",
    "PayloadFormat",
    "Trace",
    "TraceFilter",
    "Tracer",
    "cjson_object",
    "correlation_id",
    "params_text",
]

#: What mi_datagram names itself in a request trace.
BACKEND: Final = b"datagram"
#: The command of a trace for a datagram that is not a JSON-RPC call at all.
UNKNOWN_COMMAND: Final = "unknown"
#: MAX_TRACE_FIELD: a reply is traced cut to this many bytes.
MAX_TRACE_FIELD: Final = 128
#: The params text is written into a MAX_TRACE_FIELD buffer, its NUL included.
MAX_PARAMS: Final = MAX_TRACE_FIELD - 1
CORRELATION_PREFIX: Final = b"MICORR"


#: proto_hep's defaults: HOMER 5 plain-text payloads joined with ":", capture agent id 1.
DEFAULT_HOMER5_ON: Final = True
DEFAULT_HOMER5_DELIM: Final = ":"
DEFAULT_HEP_CAPTURE_ID: Final = 1


# --- trace_bwlist: its grammar (docs/tracing.md) ---------------------------------------------

# The list type, after trimming spaces, maps to "is a whitelist".
_LIST_TYPES: Final[Mapping[str, bool]] = MappingProxyType(
    {"w": True, "W": True, "b": False, "B": False}
)


def parse_bwlist(text: str, *, parameter: str = "trace_bwlist") -> tuple[bool, tuple[str, ...]]:
    """Split ``"b: ps, which"`` into ``(is_whitelist, ("ps", "which"))``.

    Errors use OpenSIPS's texts. Whether each name is a registered command is checked later,
    against the registry, by whoever holds it.
    """
    if not text:
        raise ConfigError(parameter, text, "empty mi command list!")
    kind, colon, rest = text.partition(":")
    if not colon:
        raise ConfigError(
            parameter, text, "missing list type: either blacklist( b ) or whitelist ( w )!"
        )
    # str_trim_spaces_lr trims ' ' only, not tabs or newlines.
    kind = kind.strip(" ")
    if kind not in _LIST_TYPES:
        raise ConfigError(
            parameter,
            text,
            f"Invalid list type <{kind}>! Either b (blacklist) or w (whitelist)!",
        )
    if not rest:
        raise ConfigError(parameter, text, "no command in list!")
    names = tuple(token.strip(" ") for token in rest.split(","))
    for command in names:
        _check_bwlist_name(parameter, text, command)
    return _LIST_TYPES[kind], names


def _check_bwlist_name(parameter: str, text: str, command: str) -> None:
    # OpenSIPS would fail the lookup for these; no command name is empty or holds a tab.
    if not command:
        raise ConfigError(
            parameter,
            text,
            "can't find mi command []! (an empty name: look for ',,' or a ',' at the end)",
        )
    if any(char.isspace() for char in command):
        raise ConfigError(
            parameter, text, f"can't find mi command [{command}]! (a name holds white space)"
        )


class Endpoint(NamedTuple):
    """One end of a traced exchange: an IP address and a port."""

    ip: hep.IPAddress
    port: int


#: Difference 11 (docs/compatibility.md): a UNIX peer has no IP address; proto_hep's
#: TRACE_INADDR_LOOPBACK and TRACE_INADDR_LOOPBACK2 stand in for the client and the server.
UNIX_CLIENT: Final = Endpoint(ipaddress.IPv4Address("127.0.0.1"), 0)
UNIX_SERVER: Final = Endpoint(ipaddress.IPv4Address("127.0.0.2"), 0)


def endpoint(sockaddr: Any) -> Endpoint | None:
    """An IP ``(host, port[, flow, scope])`` as recvfrom/getsockname give it, else None
    (a UNIX address: a path, an abstract name, or None for an unbound client)."""
    if type(sockaddr) is not tuple:
        return None
    host, port = sockaddr[0], sockaddr[1]
    # A link-local address carries its zone ("fe80::1%eth0"); HEP has room for none.
    return Endpoint(ipaddress.ip_address(host.partition("%")[0]), port)


# --- the params text (build_mi_trace_request) ---------------------------------------------


def _valueint(number: float) -> bytes:
    """cJSON's ``valueint`` printed with ``%d``: truncated toward zero, saturated to a C int."""
    return b"%d" % max(C_INT_MIN, min(C_INT_MAX, int(number)))


#: How each JSON type is written; the types missing here (bool, null, array, object) are
#: skipped. ``type()`` keys keep bool apart from int.
_PARAM_TEXT: Final[Mapping[type, Callable[[Any], bytes]]] = MappingProxyType(
    {
        int: _valueint,
        float: _valueint,
        str: lambda text: text.encode("utf-8", "surrogatepass"),
    }
)


def params_text(params: Params) -> bytes:
    """The params as OpenSIPS traces them: the values of an array or an object (names
    dropped), numbers as C ints and strings raw, other values skipped, joined with ","
    and cut to 127 bytes.

    The comma goes before every written value that is not the first of the params, even
    when the values before it were skipped: ``[true, "x"]`` gives ``,x``.
    """
    if not params:
        return b""
    values = params.values() if type(params) is dict else params
    parts = []
    for index, value in enumerate(values):
        write = _PARAM_TEXT.get(type(value))
        if write is not None:
            parts.append(b"," + write(value) if index else write(value))
    return b"".join(parts)[:MAX_PARAMS]


# --- payloads (add_payload_part, then HOMER 5 text or cJSON_Print) -------------------------

# lib/cJSON's print_string: these get a short escape, other bytes below 0x20 \u00xx, and
# everything else (UTF-8 and "/" included) is copied as it is.
_SHORT_ESCAPES: Final[Mapping[int, bytes]] = MappingProxyType(
    {
        ord('"'): b'\\"',
        ord("\\"): b"\\\\",
        ord("\b"): b"\\b",
        ord("\f"): b"\\f",
        ord("\n"): b"\\n",
        ord("\r"): b"\\r",
        ord("\t"): b"\\t",
    }
)
_ESCAPES: Final[Mapping[bytes, bytes]] = MappingProxyType(
    {
        bytes([byte]): _SHORT_ESCAPES.get(byte, b"\\u%04x" % byte)
        for byte in (*range(0x20), ord('"'), ord("\\"))
    }
)
_ESCAPED_RE: Final = re.compile(rb'[\x00-\x1f"\\]')


def _cjson_string(text: bytes) -> bytes:
    return b'"' + _ESCAPED_RE.sub(lambda match: _ESCAPES[match.group()], text) + b'"'


def cjson_object(members: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A flat object of strings as ``cJSON_Print`` (formatted) writes it:
    ``{\\n\\t"key":\\t"value",\\n...\\n}``."""
    lines = (b"\t%s:\t%s" % (_cjson_string(key), _cjson_string(value)) for key, value in members)
    return b"{\n" + b",\n".join(lines) + b"\n}"


@dataclass(frozen=True)
class PayloadFormat:
    """proto_hep's ``homer5_on`` and ``homer5_delim``: how the named parts of a trace
    become the payload. Empty parts are left out, as ``add_payload_part`` refuses them."""

    homer5: bool = True
    delim: str = DEFAULT_HOMER5_DELIM

    def build(self, parts: Sequence[tuple[bytes, bytes]]) -> bytes | None:
        """The payload of these ``(name, value)`` parts; None when all are empty."""
        given = [(name, value) for name, value in parts if value]
        if not given:
            return None
        if self.homer5:
            return self.delim.encode().join(value for _name, value in given)
        return cjson_object(given)

    def request(self, command: str, params: bytes) -> bytes | None:
        return self.build(
            (
                (b"command", command.encode("utf-8", "surrogatepass")),
                (b"backend", BACKEND),
                (b"parameters", params),
            )
        )

    def reply(self, text: bytes) -> bytes | None:
        value = text[:MAX_TRACE_FIELD]
        if self.homer5:  # build() of this one part, without its generality (once a request)
            return value or None
        return self.build(((b"reply", value),))


# --- correlation ids (generate_hep_guid) ---------------------------------------------------

_GUID: Final = struct.Struct("<IIQI")
_U32: Final = 0xFFFF_FFFF
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF


def correlation_id(pid: int, startup: int, ticks: int, rand: int) -> bytes:
    """``MICORR`` + base64 of pid, startup time, ticks and a random number (20 bytes, little
    endian as OpenSIPS writes them on x86): always 34 ASCII bytes."""
    raw = _GUID.pack(pid & _U32, startup & _U32, ticks & _U64, rand & _U32)
    return CORRELATION_PREFIX + b2a_base64(raw, newline=False)  # base64.b64encode's own call


class CorrelationIds:
    """A new correlation id per call: unique within a process (``ticks`` is a sequence
    number here, where OpenSIPS puts its tick counter), between workers (the pid), across
    restarts (the startup time), with 31 random bits, as C's ``rand()`` gives, on top.

    Make one per process, after the fork: ``rng`` (default: seeded from the OS) must not be
    shared by forked workers.
    """

    def __init__(self, pid: int, startup: int, rng: random.Random | None = None) -> None:
        self._pid = pid
        self._startup = startup
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not a secret
        self._ticks = 0

    def __call__(self) -> bytes:
        self._ticks += 1
        return correlation_id(self._pid, self._startup, self._ticks, self._rng.getrandbits(31))


# --- trace_bwlist ------------------------------------------------------------------------


class TraceFilter:
    """``trace_bwlist`` against the commands a server runs: which method names are traced.

    No list traces everything. A whitelist traces its commands, a blacklist all but its
    commands; either way a method that is no command (``is_command`` says) is traced.
    """

    def __init__(
        self,
        is_whitelist: bool = False,
        names: Collection[str] = (),
        is_command: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        self._whitelist = is_whitelist
        self._names = frozenset(names)
        self._is_command = is_command

    @classmethod
    def from_bwlist(cls, text: str | None, commands: Container[str]) -> TraceFilter:
        """Parse ``trace_bwlist`` and check each name against ``commands`` (a registry);
        an unknown name raises ``ConfigError`` with OpenSIPS's text."""
        if text is None:
            return cls()
        is_whitelist, names = parse_bwlist(text)
        for name in names:
            if name not in commands:
                raise ConfigError("trace_bwlist", text, f"can't find mi command [{name}]!")
        return cls(is_whitelist, names, commands.__contains__)

    def __call__(self, method: str) -> bool:
        if not self._is_command(method):
            return True
        return (method in self._names) is self._whitelist


#: Trace every command: no trace_bwlist.
TRACE_ALL: Final = TraceFilter()


# --- the tracer --------------------------------------------------------------------------

#: Not traced at all: an empty datagram is ignored before anything else happens.
_UNTRACED: Final = frozenset({Status.EMPTY})
#: Traced as command "unknown" without params, whatever the bw-list says
#: (trace_datagram_err): nothing in the datagram could be read as a call.
_UNREADABLE: Final = frozenset({Status.PARSE_ERROR, Status.OVERSIZE})


#: Request payloads kept per tracer, by command and params text, before they are all dropped.
_PAYLOADS_KEPT: Final = 256
#: Packet encoders kept per tracer (one per route and direction) before they are all
#: dropped: a bound for a server that many clients reach.
_ROUTES_KEPT: Final = 64


class Trace(NamedTuple):
    """A traced request: its packet, and what its reply trace needs."""

    packet: bytes
    client: Endpoint
    server: Endpoint
    correlation_id: bytes
    #: The encoder of the reply's packet (server to client).
    reply_route: Callable[..., bytes]


class Tracer:
    """Builds the HEP packets of one worker's traces.

    ``server`` is the server socket's own address (``getsockname()``): an IP address and
    port, or a UNIX address, which puts the tracer in placeholder mode (``UNIX_CLIENT``,
    ``UNIX_SERVER``). ``ids`` makes the correlation ids (a ``CorrelationIds``).
    """

    def __init__(
        self,
        server: Any,
        ids: Callable[[], bytes],
        *,
        capture_id: int = DEFAULT_HEP_CAPTURE_ID,
        payload: PayloadFormat | None = None,
        traced: Callable[[str], bool] = TRACE_ALL,
    ) -> None:
        address = endpoint(server)
        self._unix = address is None
        self._server = UNIX_SERVER if address is None else address
        self._ids = ids
        self._capture_id = capture_id
        self._payload = payload or PayloadFormat()
        self._traced = traced
        # Most traffic comes from one client address at a time: convert it once.
        self._last_peer: Any = None
        self._last_client = UNIX_CLIENT
        self._routes: dict[tuple[Endpoint, Endpoint], Callable[..., bytes]] = {}
        # The last client's routes, both ways, found by its Endpoint's identity: hashing
        # an Endpoint hashes its ipaddress object, in Python, twice a trace otherwise.
        self._routes_client: Endpoint | None = None
        self._client_routes: tuple[Callable[..., bytes], Callable[..., bytes]] | None = None
        self._payloads: dict[tuple[str, bytes], bytes | None] = {}

    def request(self, outcome: Outcome, peer: Any, now_ns: int) -> Trace | None:
        """The request trace of a served datagram, or None when it is not traced."""
        status = outcome.status
        if status in _UNTRACED:
            return None
        if status in _UNREADABLE:
            command, params = UNKNOWN_COMMAND, b""
        else:
            command = outcome.method if outcome.method is not None else UNKNOWN_COMMAND
            if not self._traced(command):
                return None
            params = params_text(outcome.params)
        return self._trace(command, params, peer, now_ns)

    def bare(self, method: str, peer: Any, now_ns: int) -> Trace | None:
        """``request`` for a call without params that was answered OK, read from its method
        alone (the native loop has no Outcome for it): the same trace, or None."""
        if not self._traced(method):
            return None
        return self._trace(method, b"", peer, now_ns)

    def _trace(self, command: str, params: bytes, peer: Any, now_ns: int) -> Trace:
        client = self._client(peer)
        to_server, to_client = self._routes_of(client)
        correlation = self._ids()
        payload = self._request_payload(command, params)
        packet = _packet(to_server, now_ns, payload, correlation)
        return Trace(packet, client, self._server, correlation, to_client)

    def reply(self, trace: Trace, reply: bytes, now_ns: int) -> bytes:
        """The reply trace: ``reply`` as sent (or ``500 Internal error`` if it was not),
        from the server back to the client, with the request's correlation id."""
        payload = self._payload.reply(reply)
        return _packet(trace.reply_route, now_ns, payload, trace.correlation_id)

    def _routes_of(self, client: Endpoint) -> tuple[Callable[..., bytes], Callable[..., bytes]]:
        """The encoders from ``client`` to the server and back."""
        routes = self._client_routes
        if routes is None or client is not self._routes_client:
            server = self._server
            routes = (self._route(client, server), self._route(server, client))
            self._client_routes, self._routes_client = routes, client
        return routes

    def _client(self, peer: Any) -> Endpoint:
        if self._unix:
            return UNIX_CLIENT
        if peer != self._last_peer:
            self._last_client = endpoint(peer) or UNIX_CLIENT
            self._last_peer = peer
        return self._last_client

    def _request_payload(self, command: str, params: bytes) -> bytes | None:
        """The request payload, kept for the commands called most (a monitor polls the
        same few, with the same params, again and again)."""
        key = (command, params)
        if key in self._payloads:
            return self._payloads[key]
        if len(self._payloads) >= _PAYLOADS_KEPT:
            self._payloads.clear()
        payload = self._payloads[key] = self._payload.request(command, params)
        return payload

    def _route(self, src: Endpoint, dst: Endpoint) -> Callable[..., bytes]:
        """The encoder of the packets from ``src`` to ``dst``, kept for the last
        ``_ROUTES_KEPT`` routes: clients that take turns reuse theirs."""
        key = (src, dst)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            route = self._routes[key] = hep.route_encoder(
                src.ip, dst.ip, src.port, dst.port, self._capture_id
            )
        return route


def _packet(
    route: Callable[..., bytes], now_ns: int, payload: bytes | None, correlation: bytes
) -> bytes:
    seconds, micros = divmod(now_ns // 1000, 1_000_000)
    return route(seconds, micros, payload, correlation)
