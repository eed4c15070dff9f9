"""Settings: the server's parameters, named as OpenSIPS's mi_datagram spells them. Sans-IO.

Values come from three layers, later ones winning (``merge``): the defaults, a configuration
file (TOML via ``load_toml``, or the ``modparam("mi_datagram", ...)`` lines of an existing
``opensips.cfg`` via ``parse_opensips_cfg``) and the CLI flags. ``Settings.from_mapping`` then
validates and coerces everything at once; a bad value raises ``ConfigError`` naming the
parameter and the value. Nothing here reads files, resolves names or looks up users: the
caller passes text and values in, and the transport resolves what needs resolving.

Warnings (a value that works but not as written, such as ``unix_socket_mode = 0``) are
returned by ``Settings.warnings()`` instead of being logged, so the caller decides.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from midgram.engine.tracing import (
    DEFAULT_HEP_CAPTURE_ID,
    DEFAULT_HOMER5_DELIM,
    DEFAULT_HOMER5_ON,
    parse_bwlist,
)
from midgram.errors import ConfigError, ConfigFileError
from midgram.wire.address import (
    HepId,
    HepTransport,
    UdpAddress,
    UnixAddress,
    default_socket_name,
    parse_hep_id,
    parse_socket_name,
    parse_trace_destination,
)

__all__ = [
    "ALIASES",
    "PARAMETERS",
    "SECTION",
    "ConfigFile",
    "OpensipsCfg",
    "Parameter",
    "Settings",
    "default_socket_name",
    "load_settings",
    "load_toml",
    "merge",
    "parse_bwlist",
    "parse_opensips_cfg",
    "read_config",
]

#: The module name in ``modparam(...)`` and the TOML table name.
SECTION: Final = "mi_datagram"

DEFAULT_CHILDREN_COUNT: Final = 1
DEFAULT_SOCKET_TIMEOUT: Final = 2000
#: DATAGRAM_SOCK_BUF_SIZE in OpenSIPS 3.x, the default of ``socket_buf_size`` in 4.0.
DEFAULT_SOCKET_BUF_SIZE: Final = 65457
DEFAULT_UNIX_SOCKET_MODE: Final = 0o660
DEFAULT_LOG_LEVEL: Final = "info"
#: What OpenSIPS uses instead of a mode of 0 ("forcing it to rw-------").
ZERO_MODE_REPLACEMENT: Final = 0o600
#: 65535 - 8 (UDP header) - 20 (IPv4 header): the largest payload a UDP datagram can carry.
UDP_MAX_PAYLOAD: Final = 65507
#: The only HEP version midgram sends: OpenSIPS adds no MI data to version 1 or 2 packets.
HEP_VERSION: Final = 3


@dataclass(frozen=True)
class Parameter:
    """One row of the parameter table that README and ``--help`` are generated from."""

    name: str
    type: str
    default: object
    description: str
    #: Where the parameter comes from: "3.6" (OpenSIPS 3.x and later), "4.0", "proto_hep"
    #: (a modparam of OpenSIPS's proto_hep module, which tracing uses), or "midgram".
    origin: str


PARAMETERS: Final[tuple[Parameter, ...]] = (
    Parameter(
        "socket_name",
        "str",
        None,
        "UNIX socket path, @abstract-name, or udp:host:port (port 1024-65535)",
        "3.6",
    ),
    Parameter(
        "children_count",
        "int",
        DEFAULT_CHILDREN_COUNT,
        "worker processes sharing the socket (0-256; 0 serves in the calling process)",
        "3.6",
    ),
    Parameter(
        "socket_timeout",
        "int",
        DEFAULT_SOCKET_TIMEOUT,
        "ms to keep retrying a reply the client cannot take yet (0-600000)",
        "3.6",
    ),
    Parameter(
        "socket_buf_size",
        "int",
        DEFAULT_SOCKET_BUF_SIZE,
        "largest request and reply in bytes (1024-1048576; at most 65507 over UDP)",
        "4.0",
    ),
    Parameter(
        "unix_socket_mode",
        "octal int",
        DEFAULT_UNIX_SOCKET_MODE,
        "permissions of the UNIX socket file, e.g. 0660 (0 means 0600)",
        "3.6",
    ),
    Parameter(
        "unix_socket_user",
        "str|int",
        None,
        "owner of the UNIX socket file: a user name or a uid",
        "3.6",
    ),
    Parameter(
        "unix_socket_group",
        "str|int",
        None,
        "group of the UNIX socket file: a group name or a gid",
        "3.6",
    ),
    Parameter(
        "trace_destination",
        "str",
        None,
        "where commands are traced (HEP3 over UDP): udp:host:port, or the name of a hep_id",
        "3.6",
    ),
    Parameter(
        "trace_bwlist",
        "str",
        None,
        'commands to trace: "w: cmd, ..." (only these) or "b: cmd, ..." (all but these)',
        "3.6",
    ),
    Parameter(
        "hep_id",
        "str list",
        (),
        'named HEP destinations, "[name]host[:port];transport=udp;version=3"',
        "proto_hep",
    ),
    Parameter(
        "homer5_on",
        "bool",
        DEFAULT_HOMER5_ON,
        "trace payloads as HOMER 5 plain text (cmd:datagram:params); off: JSON",
        "proto_hep",
    ),
    Parameter(
        "homer5_delim",
        "str",
        DEFAULT_HOMER5_DELIM,
        "separator of the parts of a HOMER 5 plain-text payload",
        "proto_hep",
    ),
    Parameter(
        "hep_capture_id",
        "int",
        DEFAULT_HEP_CAPTURE_ID,
        "capture agent id in every HEP packet (0-4294967295)",
        "proto_hep",
    ),
    Parameter(
        "pretty_printing",
        "bool",
        False,
        "indent JSON replies as OpenSIPS's cJSON does",
        "3.6",
    ),
    Parameter(
        "json_errors",
        "bool",
        False,
        "answer unparsable or too large requests with JSON-RPC errors, not plain text",
        "midgram",
    ),
    Parameter(
        "allow_from",
        "list of CIDR",
        (),
        "networks allowed to send to a UDP socket (needed for a non-loopback address)",
        "midgram",
    ),
    Parameter(
        "allow_any",
        "bool",
        False,
        "accept commands from any address on a non-loopback UDP socket",
        "midgram",
    ),
    Parameter(
        "log_level",
        "str|int",
        DEFAULT_LOG_LEVEL,
        "debug, info, warning, error, critical, or an OpenSIPS level -3..4",
        "midgram",
    ),
    Parameter(
        "worker_timeout",
        "float",
        0.0,
        "seconds one request may hold a worker before the worker is replaced (0: never)",
        "midgram",
    ),
)

#: Short names the CLI flags use (and a config file may use), mapped to the OpenSIPS names.
ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "socket": "socket_name",
        "children": "children_count",
        "mode": "unix_socket_mode",
        "user": "unix_socket_user",
        "group": "unix_socket_group",
        "timeout": "socket_timeout",
        "pretty": "pretty_printing",
        "buf_size": "socket_buf_size",
        "trace_to": "trace_destination",
    }
)

_NAMES: Final = frozenset(p.name for p in PARAMETERS)


# --------------------------------------------------------------------------------------------
# Value coercion. Each coercer takes (parameter, raw value, warnings list) and returns the typed
# value or raises ConfigError. They are idempotent, so a Settings built directly from typed
# values goes through the same checks as one built from a config file.

Coercer = Callable[[str, object, list[str]], object]

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
# Octal digits, as "0660" or "660"; "0o660" is accepted too, as Python and TOML write it.
_MODE_RE: Final = re.compile(r"(?:0[oO])?([0-7]+)")
# The portable POSIX user/group name (useradd's NAME_REGEX, relaxed to upper case and dots),
# with the optional trailing "$" of Samba machine accounts. 32 is the usual utmpx limit.
_OWNER_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
# uid_t/gid_t are 32-bit; (uid_t)-1 means "do not change", which OpenSIPS spells -1.
_ID_MAX: Final = 2**32 - 2
_UNSET_ID: Final = -1
_HEP_NAME_RE: Final = re.compile(r"[^\s\[\]]+")
_U32_MAX: Final = 2**32 - 1

_BOOL_WORDS: Final[Mapping[str, bool]] = MappingProxyType(
    {
        "yes": True,
        "true": True,
        "on": True,
        "no": False,
        "false": False,
        "off": False,
    }
)

# Python logging level names, their usual short forms and OpenSIPS's numeric levels
# (dprint.h: L_ALERT -3, L_CRIT -2, L_ERR -1, L_WARN 1, L_NOTICE 2, L_INFO 3, L_DBG 4; a level
# shows messages at or below it, so 0 shows errors only).
_LOG_LEVELS: Final[Mapping[str | int, str]] = MappingProxyType(
    {
        "debug": "debug",
        "dbg": "debug",
        "info": "info",
        "notice": "info",
        "warning": "warning",
        "warn": "warning",
        "error": "error",
        "err": "error",
        "critical": "critical",
        "crit": "critical",
        "alert": "critical",
        -3: "critical",
        -2: "critical",
        -1: "error",
        0: "error",
        1: "warning",
        2: "info",
        3: "info",
        4: "debug",
    }
)


def _type_name(value: object) -> str:
    return type(value).__name__


def _decimal(name: str, value: object, text: str) -> int:
    """``int(text)`` for a text ``_INT_RE`` matched: ConfigError beyond the digits Python
    reads (4300), where int() raises ValueError."""
    try:
        return int(text)
    except ValueError:
        raise ConfigError(name, value, f"a number of {len(text)} digits is too long") from None


def _as_int(name: str, value: object) -> int:
    # bool is an int subclass; "children_count = true" is a mistake, not 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return _decimal(name, value, value.strip())
    raise ConfigError(name, value, f"must be an integer, not {_type_name(value)}")


def _int_range(low: int, high: int, unit: str = "") -> Coercer:
    def coerce(name: str, value: object, _notes: list[str]) -> int:
        number = _as_int(name, value)
        if not low <= number <= high:
            raise ConfigError(name, value, f"must be between {low} and {high}{unit}")
        return number

    return coerce


def _seconds(high: float) -> Coercer:
    def coerce(name: str, value: object, _notes: list[str]) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None:
            raise ConfigError(name, value, f"must be a number of seconds, not {_type_name(value)}")
        if not 0 <= number <= high:  # NaN fails this too
            raise ConfigError(name, value, f"must be between 0 and {high:g} seconds")
        return number

    return coerce


def _boolean(name: str, value: object, _notes: list[str]) -> bool:
    if isinstance(value, bool):
        return value
    # OpenSIPS flags are ints where any non-zero value means on.
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _BOOL_WORDS:
            return _BOOL_WORDS[word]
        if _INT_RE.fullmatch(word):
            return _decimal(name, value, word) != 0
    raise ConfigError(name, value, "must be a boolean: yes/no, true/false, on/off or a number")


def _mode(name: str, value: object, notes: list[str]) -> int:
    mode = _mode_number(name, value)
    if mode > 0o777:
        raise ConfigError(
            name,
            value,
            f"0{mode:o} is more than 0777{_octal_hint(value)}; write the mode in octal "
            '(0660 in opensips.cfg, 0o660 or "0660" in TOML)',
        )
    if mode == 0:
        # OpenSIPS: "cannot specify mi_unix_socket_mode = 0, forcing it to rw-------".
        notes.append(f"cannot specify {name} = 0, forcing it to rw------- (0600)")
        return ZERO_MODE_REPLACEMENT
    return mode


def _octal_hint(value: object) -> str:
    # 660 read as a decimal number is 01224: the usual slip when octal is written without 0.
    digits = str(value)
    if isinstance(value, int) and digits.isdigit() and set(digits) <= set("01234567"):
        return f" (did you mean 0{digits}?)"
    return ""


def _mode_number(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(name, value, "a mode cannot be negative")
        return value
    if isinstance(value, str):
        match = _MODE_RE.fullmatch(value.strip())
        if match:
            return int(match.group(1), 8)
    raise ConfigError(name, value, 'must be an octal mode such as 0660 or "0600"')


_OWNER_WORDS: Final[Mapping[str, str]] = MappingProxyType(
    {"unix_socket_user": "user", "unix_socket_group": "group"}
)


def _owner(name: str, value: object, _notes: list[str]) -> str | int | None:
    """A user or group: a name (checked for shape only) or a numeric id; -1 means unset."""
    if value is None:
        return None
    if isinstance(value, str) and not _INT_RE.fullmatch(value.strip()):
        if _OWNER_NAME_RE.fullmatch(value):
            return value
        raise ConfigError(name, value, f"not a valid {_OWNER_WORDS[name]} name or number")
    number = _as_int(name, value)
    if number == _UNSET_ID:
        return None
    if not 0 <= number <= _ID_MAX:
        raise ConfigError(name, value, f"a numeric {_OWNER_WORDS[name]} id must be 0..{_ID_MAX}")
    return number


def _optional(coerce: Coercer) -> Coercer:
    def optional(name: str, value: object, notes: list[str]) -> object:
        return None if value is None else coerce(name, value, notes)

    return optional


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, value, f"must be a string, not {_type_name(value)}")
    return value


def _socket_name(name: str, value: object, _notes: list[str]) -> str:
    text = _string(name, value)
    parse_socket_name(text, parameter=name)
    return text


def _trace_destination(name: str, value: object, _notes: list[str]) -> str:
    text = _string(name, value)
    if isinstance(parse_trace_destination(text, parameter=name), UdpAddress):
        return text
    if not _HEP_NAME_RE.fullmatch(text):
        raise ConfigError(
            name,
            value,
            "must be udp:host:port, or the name of a proto_hep hep_id "
            '(hep_dst for hep_id = "[hep_dst]host:port;transport=udp")',
        )
    return text


def _hep_ids(name: str, value: object, _notes: list[str]) -> tuple[str, ...]:
    """One hep_id or a list of them, each checked; a name defined twice is refused."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(name, value, 'must be a string or a list of strings: "[name]host:port"')
    seen: set[str] = set()
    for item in items:
        hep_id = parse_hep_id(item, parameter=name)
        if hep_id.name in seen:
            raise ConfigError(name, item, f"a hep_id named {hep_id.name!r} is already defined")
        seen.add(hep_id.name)
    return tuple(items)


def _text(name: str, value: object, _notes: list[str]) -> str:
    return _string(name, value)


def _bwlist(name: str, value: object, _notes: list[str]) -> str:
    text = _string(name, value)
    parse_bwlist(text, parameter=name)
    return text


def _cidrs(name: str, value: object, _notes: list[str]) -> tuple[str, ...]:
    items = _cidr_items(name, value)
    networks = (_cidr(name, item) for item in items)
    # dict.fromkeys: drop duplicates, keep the order the operator wrote.
    return tuple(dict.fromkeys(networks))


def _cidr_items(name: str, value: object) -> list[str]:
    # A single string may list several networks, as a CLI flag or a modparam would.
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise ConfigError(name, value, "must be a list of CIDRs such as 10.0.0.0/8 or ::1/128")


def _cidr(name: str, item: str) -> str:
    try:
        return str(ipaddress.ip_network(item, strict=True))
    except ValueError as exc:
        # Host bits set ("10.1.2.3/8") is refused rather than widened silently: this is an
        # access list, and the operator may have meant a narrower network.
        hint = _network_hint(item)
        raise ConfigError(name, item, f"not a network: {exc}{hint}") from exc


def _network_hint(item: str) -> str:
    try:
        return f"; did you mean {ipaddress.ip_network(item, strict=False)}?"
    except ValueError:
        return ""


def _level_key(name: str, value: object) -> str | int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        return _decimal(name, value, word) if _INT_RE.fullmatch(word) else word
    return None


def _log_level(name: str, value: object, _notes: list[str]) -> str:
    key = _level_key(name, value)
    if key is not None and key in _LOG_LEVELS:
        return _LOG_LEVELS[key]
    raise ConfigError(
        name, value, "must be debug, info, warning, error, critical, or an OpenSIPS level -3..4"
    )


# One coercer per Settings field; a test checks that none is missing.
_COERCERS: Final[Mapping[str, Coercer]] = MappingProxyType(
    {
        "socket_name": _optional(_socket_name),
        "children_count": _int_range(0, 256),
        "socket_timeout": _int_range(0, 600_000, " ms"),
        "socket_buf_size": _int_range(1024, 1_048_576, " bytes"),
        "unix_socket_mode": _mode,
        "unix_socket_user": _owner,
        "unix_socket_group": _owner,
        "trace_destination": _optional(_trace_destination),
        "trace_bwlist": _optional(_bwlist),
        "hep_id": _hep_ids,
        "homer5_on": _boolean,
        "homer5_delim": _text,
        "hep_capture_id": _int_range(0, _U32_MAX),
        "pretty_printing": _boolean,
        "json_errors": _boolean,
        "allow_from": _cidrs,
        "allow_any": _boolean,
        "log_level": _log_level,
        "worker_timeout": _seconds(86_400),
    }
)


# --------------------------------------------------------------------------------------------
# trace_bwlist (docs/tracing.md, "trace_bwlist")

# --------------------------------------------------------------------------------------------
# Cross-parameter rules, run once every field has its type. Each returns warnings or raises.


def _udp_rules(settings: Settings, address: UdpAddress) -> list[str]:
    if settings.socket_buf_size > UDP_MAX_PAYLOAD:
        raise ConfigError(
            "socket_buf_size",
            settings.socket_buf_size,
            f"must be at most {UDP_MAX_PAYLOAD} with a UDP socket_name: "
            "a UDP datagram cannot carry more",
        )
    # Difference 9 (docs/compatibility.md): the MI has no authentication, so a network-facing
    # socket needs an explicit decision about who may talk to it.
    if not address.is_loopback and not settings.allow_from and not settings.allow_any:
        raise ConfigError(
            "socket_name",
            settings.socket_name,
            f"{address.host} is not a loopback address, and anyone who can reach it could run "
            "any MI command (there is no authentication): set allow_from to the networks "
            "allowed to send (e.g. allow_from = 10.0.0.0/8), or set allow_any = true to "
            "accept every sender",
        )
    return [
        f"{name} has no effect on a UDP socket"
        for name in ("unix_socket_user", "unix_socket_group")
        if getattr(settings, name) is not None
    ]


def _unix_rules(settings: Settings, address: UnixAddress) -> list[str]:
    notes = [
        f"{name} has no effect on a UNIX socket (it filters UDP senders)"
        for name, given in (
            ("allow_from", bool(settings.allow_from)),
            ("allow_any", settings.allow_any),
        )
        if given
    ]
    if address.abstract:
        notes.extend(
            f"{name} has no effect on an abstract socket (there is no file to own)"
            for name in ("unix_socket_user", "unix_socket_group")
            if getattr(settings, name) is not None
        )
    return notes


def _address_rules(settings: Settings) -> list[str]:
    address = settings.address
    if isinstance(address, UdpAddress):
        return _udp_rules(settings, address)
    if isinstance(address, UnixAddress):
        return _unix_rules(settings, address)
    return []


def _tracing_rules(settings: Settings) -> list[str]:
    if settings.trace_destination is None:
        # OpenSIPS only parses the list when a destination is set.
        if settings.trace_bwlist is not None:
            return ["trace_bwlist has no effect without trace_destination"]
        return []
    trace_target(settings.trace_destination, settings.hep_id)  # raises if unusable
    return []


def trace_target(destination: str, hep_ids: tuple[str, ...]) -> HepId:
    """The HEP destination ``trace_destination`` means: ``udp:host:port`` itself, or the
    ``hep_id`` it names, which must send HEP3 over UDP. Raises ``ConfigError``."""
    found = parse_trace_destination(destination)
    if isinstance(found, UdpAddress):
        return HepId(destination, found, HepTransport.UDP, HEP_VERSION)
    by_name = {hep_id.name: hep_id for hep_id in map(parse_hep_id, hep_ids)}
    hep_id = by_name.get(found)
    if hep_id is None:
        known = f" (defined: {', '.join(by_name)})" if by_name else ""
        raise ConfigError(
            "trace_destination",
            destination,
            f"names no hep_id{known}: define it, e.g. "
            f'hep_id = "[{found}]127.0.0.1:9060;transport=udp" (or modparam("proto_hep", '
            '"hep_id", ...) in the opensips.cfg given with --config), or write udp:host:port',
        )
    _check_hep_id(destination, hep_id)
    return hep_id


def _check_hep_id(destination: str, hep_id: HepId) -> None:
    if hep_id.transport is not HepTransport.UDP:
        raise ConfigError(
            "trace_destination",
            destination,
            f"hep_id {hep_id.name!r} sends over {hep_id.transport.upper()} (proto_hep's "
            "default when no transport is given), and midgram traces over UDP only: add "
            ";transport=udp to it",
        )
    if hep_id.version != HEP_VERSION:
        raise ConfigError(
            "trace_destination",
            destination,
            f"hep_id {hep_id.name!r} is HEP version {hep_id.version}, which carries no MI "
            "data (OpenSIPS adds none below version 3): use version=3",
        )


_RULES: Final[tuple[Callable[[Settings], list[str]], ...]] = (_address_rules, _tracing_rules)


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    """The server's parameters, validated. Build it with ``from_mapping`` from untyped input.

    Constructing it directly runs the same checks and coercions. ``socket_name=None`` means the
    caller (the CLI) picks ``default_socket_name(...)``.
    """

    socket_name: str | None = None
    children_count: int = DEFAULT_CHILDREN_COUNT
    socket_timeout: int = DEFAULT_SOCKET_TIMEOUT
    socket_buf_size: int = DEFAULT_SOCKET_BUF_SIZE
    unix_socket_mode: int = DEFAULT_UNIX_SOCKET_MODE
    unix_socket_user: str | int | None = None
    unix_socket_group: str | int | None = None
    trace_destination: str | None = None
    trace_bwlist: str | None = None
    hep_id: tuple[str, ...] = ()
    homer5_on: bool = DEFAULT_HOMER5_ON
    homer5_delim: str = DEFAULT_HOMER5_DELIM
    hep_capture_id: int = DEFAULT_HEP_CAPTURE_ID
    pretty_printing: bool = False
    json_errors: bool = False
    allow_from: tuple[str, ...] = ()
    allow_any: bool = False
    log_level: str = DEFAULT_LOG_LEVEL
    worker_timeout: float = 0.0
    _warnings: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        notes: list[str] = []
        for name, coerce in _COERCERS.items():
            # Frozen: coercion replaces the raw value once, here, before anyone sees it.
            object.__setattr__(self, name, coerce(name, getattr(self, name), notes))
        for rule in _RULES:
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


# --------------------------------------------------------------------------------------------
# TOML

_TOML_LINE_RE: Final = re.compile(r"at line (\d+)")


def load_toml(text: str, *, source: str | None = None) -> dict[str, object]:
    """The parameters of a TOML document: top-level keys, or the ``[mi_datagram]`` table.

    With a ``[mi_datagram]`` table, other tables are ignored (the file may configure other
    things) but a top-level key is refused, since it would be silently lost. A syntax error
    names ``source`` (the file) when given.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_line(text, str(exc))
        raise _toml_error(source, line, f"not valid TOML: {exc}", shown=f": {line!r}") from exc
    except ValueError as exc:  # an integer beyond the digits Python reads
        raise _toml_error(source, "", f"not usable TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise _toml_error(source, "", "not usable TOML: nested too deeply") from None
    if SECTION not in data:
        return data
    section = data[SECTION]
    if not isinstance(section, dict):
        raise ConfigError(SECTION, section, f"must be a table: [{SECTION}]")
    for key, value in data.items():
        if key != SECTION and not isinstance(value, dict):
            raise ConfigError(key, value, f"outside the [{SECTION}] table: move it inside")
    return dict(section)


def _toml_error(source: str | None, value: str, reason: str, *, shown: str = "") -> ConfigError:
    """A TOML document that cannot be used: naming the file (``source``) when there is one."""
    if source is not None:
        return ConfigFileError(source, reason + shown)
    return ConfigError("TOML", value, reason)


def _toml_line(text: str, message: str) -> str:
    match = _TOML_LINE_RE.search(message)
    lines = text.splitlines()
    if match and 0 < int(match.group(1)) <= len(lines):
        return lines[int(match.group(1)) - 1].strip()
    return ""


# --------------------------------------------------------------------------------------------
# opensips.cfg

# OpenSIPS's cfg lexer, reduced to what a modparam needs. Order matters: comments and strings
# are taken whole first, so a '#' or ',' inside a string is not mistaken for syntax. A string
# left open runs to the end of the text, as a comment does: trying it again from each of its
# quotes would take quadratic time (OpenSIPS refuses such a file; its modparam is skipped).
_CFG_TOKEN_RE: Final = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>(?:\#|//)[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<dquote>"(?:[^"\\]|\\.)*")
    | (?P<squote>'[^']*')
    | (?P<unclosed>["'].*)
    | (?P<number>0[xX][0-9a-fA-F]+|[0-9]+)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SKIPPED_TOKENS: Final = frozenset({"space", "comment"})
# Escapes of a double-quoted cfg string (cfg.lex); a backslash-newline joins lines.
_CFG_ESCAPES: Final[Mapping[str, str]] = MappingProxyType(
    {"n": "\n", "r": "\r", "a": "\a", "t": "\t", "\\": "\\", "0": "\0", '"': '"', "\n": ""}
)
_CFG_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_HEP_ID_RE: Final = re.compile(r"\s*\[([^\]]+)\](.*)", re.DOTALL)
_HEP_MODULE: Final = "proto_hep"
#: The proto_hep modparams that shape MI traces (besides hep_id).
_HEP_PARAMS: Final = frozenset({"homer5_on", "homer5_delim", "hep_capture_id"})
_INCLUDE_WORDS: Final = frozenset({"include_file", "import_file"})

_Token = tuple[str, str]


@dataclass(frozen=True)
class OpensipsCfg:
    """What ``parse_opensips_cfg`` found in an opensips.cfg.

    ``params``: the ``mi_datagram`` modparams (str or int values, the last one wins).
    ``hep_ids``: the proto_hep ``hep_id`` destinations, name -> spec (``trace_destination``
    names one of them). ``includes``: files the cfg includes, which were not read.
    ``hep_params``: the proto_hep modparams that shape traces (``homer5_on``,
    ``homer5_delim``, ``hep_capture_id``). ``unread``: module patterns of modparams that
    were skipped, being regular expressions beyond what ``_module_matches`` reads.
    """

    params: dict[str, object]
    hep_ids: dict[str, str]
    includes: tuple[str, ...] = ()
    hep_params: dict[str, object] = field(default_factory=dict)
    unread: tuple[str, ...] = ()

    def layer(self) -> dict[str, object]:
        """The settings this file gives, for ``merge``: the mi_datagram modparams, and the
        proto_hep ones that tracing uses."""
        layer = {**self.params, **self.hep_params}
        if self.hep_ids:
            layer["hep_id"] = tuple(f"[{name}]{spec}" for name, spec in self.hep_ids.items())
        return layer

    def warnings(self) -> tuple[str, ...]:
        """Problems OpenSIPS would not report (it silently disables tracing for a missing
        hep_id), and modparams skipped for their module pattern."""
        notes = [
            f"modparam skipped: its module {pattern[:80]!r} is a regular expression beyond "
            "names, '.', '.*' and '|'"
            for pattern in self.unread
        ]
        destination = self.params.get("trace_destination")
        if isinstance(destination, str) and destination not in self.hep_ids:
            notes.append(
                f"trace_destination {destination!r} names no proto_hep hep_id "
                "in this file: OpenSIPS would silently trace nothing"
            )
        return tuple(notes)


def _unescape(body: str) -> str:
    return _CFG_ESCAPE_RE.sub(lambda m: _CFG_ESCAPES.get(m.group(1), m.group(0)), body)


def _cfg_tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _CFG_TOKEN_RE.finditer(text):
        kind = match.lastgroup or "other"
        if kind not in _SKIPPED_TOKENS:
            tokens.append((kind, match.group()))
    return tokens


# How each kind of string token becomes its value; single-quoted cfg strings have no escapes.
_STRING_DECODERS: Final[Mapping[str, Callable[[str], str]]] = MappingProxyType(
    {"dquote": lambda raw: _unescape(raw[1:-1]), "squote": lambda raw: raw[1:-1]}
)


def _string_at(tokens: list[_Token], at: int) -> str | None:
    if at >= len(tokens):
        return None
    kind, raw = tokens[at]
    decode = _STRING_DECODERS.get(kind)
    return None if decode is None else decode(raw)


def _is_punct(tokens: list[_Token], at: int, char: str) -> bool:
    return at < len(tokens) and tokens[at] == ("other", char)


def _number_value(raw: str) -> int | str:
    """A cfg number's value; beyond the digits Python reads, its text, which the parameter's
    own check then refuses by name."""
    if raw[:2].lower() == "0x":
        return int(raw, 16)
    # A C-style leading zero is octal, as in 0660; "08" is not octal and reads as 8.
    if len(raw) > 1 and raw[0] == "0" and all(c in "01234567" for c in raw):
        return int(raw, 8)
    try:
        return int(raw, 10)
    except ValueError:
        return raw


def _modparam_value(tokens: list[_Token], at: int) -> tuple[str | int | None, int]:
    """Read a modparam's value (a string or a signed number) at ``tokens[at]``."""
    text = _string_at(tokens, at)
    if text is not None:
        return text, at + 1
    sign = 1
    if _is_punct(tokens, at, "-") or _is_punct(tokens, at, "+"):
        sign = -1 if tokens[at][1] == "-" else 1
        at += 1
    if at < len(tokens) and tokens[at][0] == "number":
        number = _number_value(tokens[at][1])
        if isinstance(number, str):
            return ("-" if sign < 0 else "") + number, at + 1
        return sign * number, at + 1
    return None, at


def _modparam_at(tokens: list[_Token], at: int) -> tuple[str, str, str | int] | None:
    """Parse ``( "module" , "name" , value )``: the tokens after the ``modparam`` keyword."""
    if not _is_punct(tokens, at, "("):
        return None
    module = _string_at(tokens, at + 1)
    if module is None or not _is_punct(tokens, at + 2, ","):
        return None
    name = _string_at(tokens, at + 3)
    if name is None or not _is_punct(tokens, at + 4, ","):
        return None
    value, end = _modparam_value(tokens, at + 5)
    if value is None or not _is_punct(tokens, end, ")"):
        return None
    return module, name, value


# A modparam's module is a POSIX ERE (set_mod_param_regex: anchored, case-insensitive), so
# modparam("mi_datagram|mi_fifo", ...) sets both. Python's re backtracks, and a pattern with
# nested quantifiers takes exponential time even on an 11-character name: only names, with
# "." and ".*" wildcards, joined by "|" (maybe in one pair of parentheses) are read, as
# globs (fnmatch never backtracks exponentially). Real files use no more.
_MODULE_GLOB_RE: Final = re.compile(r"(?:[A-Za-z0-9_]|\.\*?)+")


def _module_matches(pattern: str, module: str) -> bool | None:
    """Whether the modparam module ``pattern`` names ``module``; None when the pattern is
    beyond what is read here (see _MODULE_GLOB_RE)."""
    if pattern == module:
        return True
    body = pattern[1:-1] if pattern[:1] == "(" and pattern[-1:] == ")" else pattern
    alternatives = body.split("|")
    if not all(_MODULE_GLOB_RE.fullmatch(alternative) for alternative in alternatives):
        return None
    name = module.lower()
    return any(fnmatch.fnmatchcase(name, _glob(alternative)) for alternative in alternatives)


def _glob(alternative: str) -> str:
    return alternative.lower().replace(".*", "*").replace(".", "?")


def _add_hep_id(hep_ids: dict[str, str], value: str | int) -> None:
    match = _HEP_ID_RE.fullmatch(value) if isinstance(value, str) else None
    if match:
        hep_ids[match.group(1).strip()] = match.group(2).strip()


def parse_opensips_cfg(text: str) -> OpensipsCfg:
    """Extract the ``mi_datagram`` modparams and proto_hep ``hep_id``s from cfg text.

    Comments (``#``, ``//``, ``/* */``), both quote styles, octal and hex numbers and several
    statements on one line are handled; malformed modparams are skipped (OpenSIPS itself
    would refuse the file). ``include_file``/``import_file`` are listed, not followed.
    """
    tokens = _cfg_tokens(text)
    params: dict[str, object] = {}
    hep_ids: dict[str, str] = {}
    hep_params: dict[str, object] = {}
    includes: list[str] = []
    unread: list[str] = []
    for at, (kind, raw) in enumerate(tokens):
        if kind != "word":
            continue
        if raw in _INCLUDE_WORDS:
            included = _string_at(tokens, at + 1)
            if included is not None:
                includes.append(included)
        if raw != "modparam":
            continue
        found = _modparam_at(tokens, at + 1)
        if found is None:
            continue
        module, name, value = found
        ours, hep = _module_matches(module, SECTION), _module_matches(module, _HEP_MODULE)
        if ours is None:
            unread.append(module)
        if ours:
            params[name] = value
        if hep and name == "hep_id":
            _add_hep_id(hep_ids, value)
        elif hep and name in _HEP_PARAMS:
            hep_params[name] = value
    return OpensipsCfg(params, hep_ids, tuple(includes), hep_params, tuple(unread))


# --------------------------------------------------------------------------------------------
# A config file of either kind


@dataclass(frozen=True)
class ConfigFile:
    """What a config file gives: its layer for ``merge``, the format it was read as, and
    warnings for the caller to show."""

    layer: dict[str, object]
    format: str
    warnings: tuple[str, ...] = ()


def _has_modparam(text: str) -> bool:
    """Whether the text holds a ``modparam(`` statement, which no TOML document can."""
    tokens = _cfg_tokens(text)
    return any(
        token == ("word", "modparam") and _is_punct(tokens, at + 1, "(")
        for at, token in enumerate(tokens)
    )


def read_config(data: bytes, name: str) -> ConfigFile:
    """The parameters of the config file ``name`` (its bytes), told apart by content, not by
    name: an opensips.cfg has ``modparam(...)`` statements, which TOML cannot have; anything
    else is TOML. A file that gives no parameter at all is refused (``ConfigFileError``
    naming it): serving the defaults after a config file was given would hide the mistake.

    OpenSIPS reads its cfg as bytes, so a Latin-1 comment there is no error: bytes that are
    not UTF-8 go through as surrogates and back out as the same bytes (a path, say). TOML is
    UTF-8 by definition."""
    text = data.decode(errors="surrogateescape")
    if _has_modparam(text):
        cfg = parse_opensips_cfg(text)
        found = ConfigFile(cfg.layer(), "opensips.cfg", cfg.warnings())
        missing = 'an opensips.cfg without a modparam("mi_datagram", ...) line'
    else:
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            where = f"byte {data[exc.start]:#04x} at offset {exc.start}"
            raise ConfigFileError(name, f"not UTF-8 text ({where}), so not TOML") from None
        try:
            found = ConfigFile(load_toml(text, source=name), "TOML")
        except ConfigFileError as exc:
            if name.endswith(".toml"):
                raise
            raise ConfigFileError(
                name, f"{exc.reason}; nor is it an opensips.cfg (no modparam(...) in it)"
            ) from exc
        missing = f"TOML with neither parameters nor a [{SECTION}] table"
    if not found.layer:
        raise ConfigFileError(name, f"no midgram parameter in it ({missing})")
    return found
