"""Settings: the server's parameters, named as OpenSIPS's mi_datagram spells them. Sans-IO.

Each parameter is declared once, as a field of ``Settings`` made by ``parameter(...)``: its
default, what it means, where it comes from, how its value is checked (``config.coercion``)
and the flag of ``midgram serve`` that sets it. The rest is derived from these declarations:
``PARAMETERS`` (the table), ``ALIASES`` (the flags' names, which a config file may use too),
the options of ``midgram serve`` (cli/serve.py) and the tables of docs/parameters.md and
docs/tracing.md (``config.table``).

Values come from three layers, later ones winning (``merge``): the defaults, a configuration
file (``config.files``) and the CLI flags. ``Settings.from_mapping`` then validates and
coerces everything at once, and the rules between parameters follow (``config.rules``); a
bad value raises ``ConfigError`` naming the parameter and the value. Nothing here reads
files, resolves names or looks up users: the caller passes text and values in, and the
transport resolves what needs resolving.

Warnings (a value that works but not as written, such as ``unix_socket_mode = 0``) are
returned by ``Settings.warnings()`` instead of being logged, so the caller decides.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar

from midgram.config import coercion
from midgram.config.coercion import Coercer
from midgram.config.rules import RULES, trace_target
from midgram.engine.tracing import (
    DEFAULT_HEP_CAPTURE_ID,
    DEFAULT_HOMER5_DELIM,
    DEFAULT_HOMER5_ON,
)
from midgram.errors import ConfigError
from midgram.logs import DEFAULT_LOG_LEVEL, LOG_LEVEL_CHOICES
from midgram.wire.address import (
    ANY_PORT,
    SERVER_PORT_RANGE,
    UDP_MAX_PAYLOAD,
    HepId,
    UdpAddress,
    UnixAddress,
    parse_socket_name,
)
from midgram.wire.jsonrpc import DEFAULT_BUF_SIZE, MAX_BUF_SIZE

__all__ = [
    "ALIASES",
    "PARAMETERS",
    "SECTION",
    "Kind",
    "Origin",
    "Parameter",
    "Settings",
    "load_settings",
    "merge",
]

T = TypeVar("T")

#: The module name in ``modparam(...)`` and the TOML table name.
SECTION: Final = "mi_datagram"


class Origin(enum.Enum):
    """Where a parameter comes from; the value is how docs/parameters.md says it."""

    #: mi_datagram's, in OpenSIPS 3.x and later.
    OPENSIPS = "OpenSIPS 3.x"
    #: mi_datagram's since OpenSIPS 4.0.
    OPENSIPS_4 = "OpenSIPS 4.0"
    #: A modparam of OpenSIPS's proto_hep module, which tracing uses.
    PROTO_HEP = "proto_hep"
    #: midgram's own.
    MIDGRAM = "midgram"


class Kind(enum.Enum):
    """How the flag of ``midgram serve`` takes a parameter's value."""

    TEXT = "text"
    INTEGER = "integer"
    #: On or off: ``--flag`` and ``--no-flag``.
    SWITCH = "switch"
    #: The flag given once per item of a list.
    REPEATED = "repeated"
    #: A duration; a bare number is seconds.
    SECONDS = "seconds"
    #: A duration in whole milliseconds; a bare number is milliseconds.
    MILLISECONDS = "milliseconds"


_FLAG_NOTES: Final[Mapping[Kind, str]] = MappingProxyType(
    {
        Kind.REPEATED: "repeatable",
        Kind.SECONDS: "30s or 500ms; a bare number is seconds",
        Kind.MILLISECONDS: "500ms or 2s; a bare number is milliseconds",
    }
)


@dataclass(frozen=True)
class Parameter:
    """One row of the parameter table: a ``Settings`` field and all that is said of it."""

    name: str
    default: object
    #: One line, plain text: ``--help`` and docs/parameters.md both show it.
    description: str
    origin: Origin
    coerce: Coercer
    kind: Kind
    #: The long flag of ``midgram serve``: ``--`` and the name, ``_`` as ``-``, unless
    #: declared (a shorter one, whose name is then an alias for config files too).
    flag: str
    #: The flag that turns a switch off.
    off_flag: str | None
    short_flag: str | None
    #: The placeholder ``--help`` shows for the value (None: the kind's).
    metavar: str | None
    #: The default as a person reads it: ``0660``, ``on``, ``none (no tracing)``.
    shown_default: str

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags that set it: the short one first, as ``--help`` lists them."""
        return (self.flag,) if self.short_flag is None else (self.short_flag, self.flag)

    @property
    def flag_note(self) -> str | None:
        """What a person needs to know of the flag beyond the description (its units)."""
        return _FLAG_NOTES.get(self.kind)

    @property
    def alias(self) -> str | None:
        """The flag's name where it is not the parameter's (``children``)."""
        alias = self.flag.removeprefix("--").replace("-", "_")
        return None if alias == self.name else alias


# Where parameter() keeps a declaration in the field's metadata.
_DECLARED: Final = "midgram.parameter"


def parameter(
    default: T,
    description: str,
    origin: Origin,
    coerce: Coercer,
    *,
    kind: Kind = Kind.TEXT,
    flag: str | None = None,
    short_flag: str | None = None,
    off_flag: str | None = None,
    metavar: str | None = None,
    shown_default: str | None = None,
) -> T:
    """Declare a parameter: a ``Settings`` field with its default, and what ``Parameter``
    says of it (``flag``, ``off_flag`` and ``shown_default`` are derived unless given)."""
    declared = {
        "description": description,
        "origin": origin,
        "coerce": coerce,
        "kind": kind,
        "flag": flag,
        "short_flag": short_flag,
        "off_flag": off_flag,
        "metavar": metavar,
        "shown_default": shown_default,
    }
    return field(default=default, metadata={_DECLARED: declared})


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == ():
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parameter(declared: dataclasses.Field[Any]) -> Parameter:
    """A ``Settings`` field's row of the table, with what its declaration left to derive."""
    given = dict(declared.metadata[_DECLARED])
    flag = given.pop("flag") or "--" + declared.name.replace("_", "-")
    off_flag = given.pop("off_flag")
    if given["kind"] is Kind.SWITCH and off_flag is None:
        off_flag = "--no-" + flag.removeprefix("--")
    shown = given.pop("shown_default")
    return Parameter(
        name=declared.name,
        default=declared.default,
        flag=flag,
        off_flag=off_flag,
        shown_default=_shown(declared.default) if shown is None else shown,
        **given,
    )


_MAX_CHILDREN: Final = 256
_MAX_SOCKET_TIMEOUT: Final = 600_000
_BUF_SIZES: Final = (1024, MAX_BUF_SIZE)
_DEFAULT_MODE: Final = 0o660
_MAX_CAPTURE_ID: Final = 2**32 - 1  # a u32 chunk
_MAX_WORKER_TIMEOUT: Final = 86_400.0
_DEFAULT_SUBSCRIBERS: Final = 256
_MAX_SUBSCRIBERS: Final = 65_536


@dataclass(frozen=True)
class Settings:
    """The server's parameters, validated. Build it with ``from_mapping`` from untyped input.

    Constructing it directly runs the same checks and coercions. ``socket_name=None`` means the
    caller (the CLI) picks ``default_socket_name(...)``.
    """

    socket_name: str | None = parameter(
        None,
        "UNIX socket path, @abstract-name, or udp:host:port "
        f"(port {SERVER_PORT_RANGE[0]}-{SERVER_PORT_RANGE[1]}, or {ANY_PORT} for any free one; "
        "[v6] allowed)",
        Origin.OPENSIPS,
        coercion.optional(coercion.socket_name),
        flag="--socket",
        short_flag="-s",
        metavar="ADDRESS",
        shown_default="$XDG_RUNTIME_DIR/midgram.sock",
    )
    children_count: int = parameter(
        1,
        f"worker processes sharing the socket (0-{_MAX_CHILDREN}; 0 serves in the calling process)",
        Origin.OPENSIPS,
        coercion.int_range(0, _MAX_CHILDREN),
        kind=Kind.INTEGER,
        flag="--children",
        short_flag="-c",
        metavar="N",
    )
    socket_timeout: int = parameter(
        2000,
        f"ms to keep retrying a reply the client cannot take yet (0-{_MAX_SOCKET_TIMEOUT})",
        Origin.OPENSIPS,
        coercion.int_range(0, _MAX_SOCKET_TIMEOUT, " ms"),
        kind=Kind.MILLISECONDS,
        flag="--timeout",
    )
    socket_buf_size: int = parameter(
        DEFAULT_BUF_SIZE,
        f"largest request and reply in bytes ({_BUF_SIZES[0]}-{_BUF_SIZES[1]}; at most "
        f"{UDP_MAX_PAYLOAD} over UDP)",
        Origin.OPENSIPS_4,
        coercion.int_range(*_BUF_SIZES, " bytes"),
        kind=Kind.INTEGER,
        flag="--buf-size",
        metavar="BYTES",
    )
    unix_socket_mode: int = parameter(
        _DEFAULT_MODE,
        "permissions of the UNIX socket file, in octal "
        f"(0 means 0{coercion.ZERO_MODE_REPLACEMENT:o}, with a warning)",
        Origin.OPENSIPS,
        coercion.octal_mode,
        flag="--mode",
        metavar="MODE",
        shown_default=f"0{_DEFAULT_MODE:o}",
    )
    unix_socket_user: str | int | None = parameter(
        None,
        "the owner of the UNIX socket file, a user name (which sets the group too) or a uid",
        Origin.OPENSIPS,
        coercion.owner,
        flag="--user",
        metavar="USER",
        shown_default="the server's",
    )
    unix_socket_group: str | int | None = parameter(
        None,
        "the group of the UNIX socket file, a group name or a gid",
        Origin.OPENSIPS,
        coercion.owner,
        flag="--group",
        metavar="GROUP",
        shown_default="the server's",
    )
    trace_destination: str | None = parameter(
        None,
        "where commands are traced, as HEP3 over UDP: udp:host:port, or the name of a hep_id",
        Origin.OPENSIPS,
        coercion.optional(coercion.trace_destination),
        flag="--trace-to",
        metavar="DEST",
        shown_default="none (no tracing)",
    )
    trace_bwlist: str | None = parameter(
        None,
        'which commands are traced: "w: cmd, ..." only these, "b: cmd, ..." all but these',
        Origin.OPENSIPS,
        coercion.optional(coercion.bwlist),
        metavar="LIST",
        shown_default="none (all)",
    )
    hep_id: tuple[str, ...] = parameter(
        (),
        'a named HEP destination, "[name]host[:port];transport=udp;version=3"',
        Origin.PROTO_HEP,
        coercion.hep_ids,
        kind=Kind.REPEATED,
        metavar="SPEC",
    )
    homer5_on: bool = parameter(
        DEFAULT_HOMER5_ON,
        "trace payloads as HOMER 5 plain text (cmd:datagram:params); off: as JSON",
        Origin.PROTO_HEP,
        coercion.boolean,
        kind=Kind.SWITCH,
        flag="--homer5",
    )
    homer5_delim: str = parameter(
        DEFAULT_HOMER5_DELIM,
        "the separator of the parts of a HOMER 5 plain-text payload",
        Origin.PROTO_HEP,
        coercion.text,
        metavar="TEXT",
        shown_default=f'"{DEFAULT_HOMER5_DELIM}"',
    )
    hep_capture_id: int = parameter(
        DEFAULT_HEP_CAPTURE_ID,
        f"the capture agent id in every HEP packet (0-{_MAX_CAPTURE_ID})",
        Origin.PROTO_HEP,
        coercion.int_range(0, _MAX_CAPTURE_ID),
        kind=Kind.INTEGER,
        metavar="ID",
    )
    pretty_printing: bool = parameter(
        False,
        "indent JSON replies as OpenSIPS's cJSON does (tabs, one member a line)",
        Origin.OPENSIPS,
        coercion.boolean,
        kind=Kind.SWITCH,
        flag="--pretty",
    )
    json_errors: bool = parameter(
        False,
        "answer unparsable or too large requests with JSON-RPC errors, not plain text",
        Origin.MIDGRAM,
        coercion.boolean,
        kind=Kind.SWITCH,
        off_flag="--plain-errors",
    )
    allow_from: tuple[str, ...] = parameter(
        (),
        "networks (CIDR) allowed to send to a UDP socket; a non-loopback address needs them",
        Origin.MIDGRAM,
        coercion.cidrs,
        kind=Kind.REPEATED,
        metavar="CIDR",
    )
    allow_any: bool = parameter(
        False,
        "accept commands from any address on a non-loopback UDP socket",
        Origin.MIDGRAM,
        coercion.boolean,
        kind=Kind.SWITCH,
    )
    acl: tuple[str, ...] = parameter(
        (),
        'who may call which commands: "COMMANDS: WHO", e.g. "kill, log_level: root, @opensips"; '
        "commands no rule names stay open (docs/security.md)",
        Origin.MIDGRAM,
        coercion.acl_rules,
        kind=Kind.REPEATED,
        metavar="RULE",
        shown_default="none (all open)",
    )
    max_event_subscribers: int = parameter(
        _DEFAULT_SUBSCRIBERS,
        f"the most event subscriptions the server keeps (0-{_MAX_SUBSCRIBERS}; 0: "
        "event_subscribe is refused); more are refused, and counted",
        Origin.MIDGRAM,
        coercion.int_range(0, _MAX_SUBSCRIBERS),
        kind=Kind.INTEGER,
        metavar="N",
    )
    log_level: str = parameter(
        DEFAULT_LOG_LEVEL.name,
        f"what midgram logs: {LOG_LEVEL_CHOICES}",
        Origin.MIDGRAM,
        coercion.log_level,
        metavar="LEVEL",
    )
    worker_timeout: float = parameter(
        0.0,
        "seconds one request may hold a worker before the worker is replaced "
        f"(0-{_MAX_WORKER_TIMEOUT:g}; 0: never)",
        Origin.MIDGRAM,
        coercion.seconds(_MAX_WORKER_TIMEOUT),
        kind=Kind.SECONDS,
        shown_default="0 (never)",
    )
    _warnings: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        notes: list[str] = []
        for row in PARAMETERS:
            # Frozen: coercion replaces the raw value once, here, before anyone sees it.
            value = row.coerce(row.name, getattr(self, row.name), notes)
            object.__setattr__(self, row.name, value)
        for rule in RULES:
            notes.extend(rule(self))
        object.__setattr__(self, "_warnings", tuple(notes))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Settings:
        """Validate and coerce ``values`` (parameter names or ``ALIASES``; None = not given)."""
        given: dict[str, Any] = {
            name: value
            for name, value in _canonical(values, strict=True).items()
            if value is not None
        }
        return cls(**given)

    @property
    def address(self) -> UnixAddress | UdpAddress | None:
        """``socket_name`` parsed, or None when it is not set."""
        if self.socket_name is None:
            return None
        return parse_socket_name(self.socket_name)

    @property
    def trace_target(self) -> HepId | None:
        """Where commands are traced (``trace_destination`` resolved), or None: no tracing."""
        if self.trace_destination is None:
            return None
        return trace_target(self.trace_destination, self.hep_id)

    def warnings(self) -> tuple[str, ...]:
        """Things that work, but not as written (e.g. mode 0 became 0600)."""
        return self._warnings

    def to_mapping(self) -> dict[str, object]:
        """The parameters as a plain mapping, in ``PARAMETERS`` order."""
        return {p.name: getattr(self, p.name) for p in PARAMETERS}


#: The parameters, in the order ``Settings`` declares them.
PARAMETERS: Final = tuple(
    _parameter(declared) for declared in dataclasses.fields(Settings) if declared.init
)

#: The names of the flags that are not the parameters' own (``children``), which a config
#: file may use too, mapped to the OpenSIPS names.
ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {p.alias: p.name for p in PARAMETERS if p.alias is not None}
)

_NAMES: Final = frozenset(p.name for p in PARAMETERS)


def load_settings(*layers: Mapping[str, object]) -> Settings:
    """``Settings.from_mapping(merge(*layers))``."""
    return Settings.from_mapping(merge(*layers))


def _unknown(name: object, value: object) -> ConfigError:
    reason = "unknown parameter"
    if isinstance(name, str):
        close = difflib.get_close_matches(name, [*_NAMES, *ALIASES], n=1)
        if close:
            reason += f"; did you mean {close[0]!r}?"
    return ConfigError(str(name), value, reason)


def _canonical(values: Mapping[str, object], *, strict: bool) -> dict[str, object]:
    """Rename aliases; refuse a parameter given twice; unknown names raise when ``strict``."""
    out: dict[str, object] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name not in _NAMES and strict:
            raise _unknown(key, value)
        if name in spelled:
            raise ConfigError(name, value, f"given twice, as {spelled[name]!r} and as {key!r}")
        spelled[name] = key
        out[name] = value
    return out


def merge(*layers: Mapping[str, object]) -> dict[str, object]:
    """Combine layers (defaults < config file < CLI flags): later layers win.

    Aliases are renamed to the OpenSIPS names; a None value means "not given" and never
    overrides. Unknown names are kept so that ``Settings.from_mapping`` reports them.
    """
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update(
            (name, value)
            for name, value in _canonical(layer, strict=False).items()
            if value is not None
        )
    return merged
