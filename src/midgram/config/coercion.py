"""How each parameter's value is checked and made its type. Sans-IO.

A coercer takes (the parameter's name, the raw value, a list for warnings) and returns the
typed value, or raises ``ConfigError`` naming the parameter and the value. Coercers are
idempotent, so a ``Settings`` built from typed values goes through the same checks as one
built from a config file's text. Each parameter names its coercer where it is declared
(``midgram.config.settings``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from midgram.engine.access import parse_rule
from midgram.engine.tracing import parse_bwlist
from midgram.errors import ConfigError
from midgram.logs import LOG_LEVEL_CHOICES, find_log_level
from midgram.wire.address import (
    UdpAddress,
    parse_hep_id,
    parse_network,
    parse_socket_name,
    parse_trace_destination,
)

__all__ = [
    "ID_MAX",
    "UNSET_ID",
    "ZERO_MODE_REPLACEMENT",
    "Coercer",
    "acl_rules",
    "boolean",
    "bwlist",
    "cidrs",
    "hep_ids",
    "int_range",
    "log_level",
    "octal_mode",
    "optional",
    "owner",
    "seconds",
    "socket_name",
    "text",
    "trace_destination",
]

#: What OpenSIPS uses instead of a mode of 0 ("forcing it to rw-------").
ZERO_MODE_REPLACEMENT: Final = 0o600

Coercer = Callable[[str, object, list[str]], object]

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
# Octal digits, as "0660" or "660"; "0o660" is accepted too, as Python and TOML write it.
_MODE_RE: Final = re.compile(r"(?:0[oO])?([0-7]+)")
# The portable POSIX user/group name (useradd's NAME_REGEX, relaxed to upper case and dots),
# with the optional trailing "$" of Samba machine accounts. 32 is the usual utmpx limit.
_OWNER_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
# uid_t/gid_t are 32-bit; (uid_t)-1 means "do not change", which OpenSIPS spells -1.
ID_MAX: Final = 2**32 - 2
UNSET_ID: Final = -1
_HEP_NAME_RE: Final = re.compile(r"[^\s\[\]]+")

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


def int_range(low: int, high: int, unit: str = "") -> Coercer:
    def coerce(name: str, value: object, _notes: list[str]) -> int:
        number = _as_int(name, value)
        if not low <= number <= high:
            raise ConfigError(name, value, f"must be between {low} and {high}{unit}")
        return number

    return coerce


def seconds(high: float) -> Coercer:
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


def boolean(name: str, value: object, _notes: list[str]) -> bool:
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


def octal_mode(name: str, value: object, notes: list[str]) -> int:
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


def owner(name: str, value: object, _notes: list[str]) -> str | int | None:
    """A user or group: a name (checked for shape only) or a numeric id; -1 means unset."""
    if value is None:
        return None
    if isinstance(value, str) and not _INT_RE.fullmatch(value.strip()):
        if _OWNER_NAME_RE.fullmatch(value):
            return value
        raise ConfigError(name, value, f"not a valid {_OWNER_WORDS[name]} name or number")
    number = _as_int(name, value)
    if number == UNSET_ID:
        return None
    if not 0 <= number <= ID_MAX:
        raise ConfigError(name, value, f"a numeric {_OWNER_WORDS[name]} id must be 0..{ID_MAX}")
    return number


def optional(coerce: Coercer) -> Coercer:
    def optional(name: str, value: object, notes: list[str]) -> object:
        return None if value is None else coerce(name, value, notes)

    return optional


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, value, f"must be a string, not {_type_name(value)}")
    return value


def socket_name(name: str, value: object, _notes: list[str]) -> str:
    text = _string(name, value)
    parse_socket_name(text, parameter=name)
    return text


def trace_destination(name: str, value: object, _notes: list[str]) -> str:
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


def hep_ids(name: str, value: object, _notes: list[str]) -> tuple[str, ...]:
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


def text(name: str, value: object, _notes: list[str]) -> str:
    return _string(name, value)


def bwlist(name: str, value: object, _notes: list[str]) -> str:
    text = _string(name, value)
    parse_bwlist(text, parameter=name)
    return text


def cidrs(name: str, value: object, _notes: list[str]) -> tuple[str, ...]:
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
        return str(parse_network(item))
    except ValueError as exc:
        raise ConfigError(name, item, str(exc)) from exc


def acl_rules(name: str, value: object, _notes: list[str]) -> tuple[str, ...]:
    """A rule or a list of rules, ``"PATTERNS: PRINCIPALS"`` each (``engine.access``),
    parsed; which commands, users and groups exist is checked at start."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(
            name, value, 'must be a rule or a list of rules such as "kill, log_level: root"'
        )
    for item in items:
        try:
            parse_rule(item)
        except ValueError as exc:
            raise ConfigError(name, item, str(exc)) from None
    return tuple(item.strip() for item in items)


def _level_key(name: str, value: object) -> str | int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        return _decimal(name, value, word) if _INT_RE.fullmatch(word) else word
    return None


def log_level(name: str, value: object, _notes: list[str]) -> str:
    """A level's name, OpenSIPS's name or number: the name of the level it is (logs)."""
    key = _level_key(name, value)
    found = None if key is None else find_log_level(key)
    if found is None:
        raise ConfigError(name, value, f"must be {LOG_LEVEL_CHOICES}")
    return found.name
