"""Access control: which callers may run which commands (the ``acl`` parameter). Sans-IO.

A rule is ``"PATTERNS: PRINCIPALS"`` (docs/security.md):

- PATTERNS: command names, ``*`` matching any run of characters (``reset_*``), and named
  sets of commands (``@readonly``: the commands that declare themselves in it);
- PRINCIPALS: who may call them: a user name or a uid, ``@group`` (a group name or gid),
  a network (CIDR, or one address) for a UDP socket, or ``*``, anyone.

For each command the first rule whose patterns match it decides; a command no rule matches
keeps the default its program declared (``@mi.command(acl=...)``), and without one it is open
to anyone who can reach the socket, as before access control. Who the caller is comes from the
kernel, never from the datagram: the uid and gid of the sending process (``SCM_CREDENTIALS``)
on a UNIX socket, the source address on UDP.

Names are resolved by the caller (``Resolver``, the server's user and group database) when
the policy is built, at start: nothing here looks anything up, and a check is a set lookup.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, TypeAlias, TypeVar

from midgram.errors import ConfigError
from midgram.logs import peer_label
from midgram.wire.address import parse_network

if TYPE_CHECKING:
    from midgram.engine.registry import Command

__all__ = [
    "ANYONE",
    "PARAMETER",
    "READONLY",
    "AccessPolicy",
    "Credentials",
    "Kind",
    "Network",
    "Principal",
    "Principals",
    "Resolver",
    "Rule",
    "build_policy",
    "caller_label",
    "check_rule",
    "in_networks",
    "parse_principals",
    "parse_rule",
]

#: The parameter that holds the operator's rules.
PARAMETER: Final = "acl"
#: The principal that is anyone.
ANYONE: Final = "*"
#: The named set of the commands that only read (docs/security.md lists its built-ins).
READONLY: Final = "readonly"

#: What the kernel says of a UNIX datagram's sender: ``(pid, uid, gid)``.
Credentials: TypeAlias = tuple[int, int, int]
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_SEPARATORS: Final = re.compile(r"[,\s]+")
# The names a user or group may have (the portable POSIX names, as unix_socket_user takes).
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
_NUMBER: Final = re.compile(r"[0-9]+")
_ID_MAX: Final = 2**32 - 2  # (uid_t)-1 is "no one"

T = TypeVar("T")


class Kind(enum.Enum):
    """What a principal names."""

    ANYONE = "anyone"
    USER = "user"
    GROUP = "group"
    NETWORK = "network"


class Principal(NamedTuple):
    """One principal of a rule, as written: a user or group by name (str) or id (int), a
    network, or anyone."""

    kind: Kind
    value: str | int | Network | None
    text: str


class Rule(NamedTuple):
    """One rule, parsed: its patterns, its principals, and its text for messages."""

    patterns: tuple[str, ...]
    principals: tuple[Principal, ...]
    text: str


def _split(text: str) -> list[str]:
    return [item for item in _SEPARATORS.split(text) if item]


def parse_principals(text: str) -> tuple[Principal, ...]:
    """``"root, @opensips, 10.0.0.0/8"``, parsed; ValueError saying what is wrong."""
    items = _split(text)
    if not items:
        raise ValueError("names no one: give users, @groups, networks or * (anyone)")
    return tuple(_principal(item) for item in items)


def _principal(item: str) -> Principal:
    if item == ANYONE:
        return Principal(Kind.ANYONE, None, item)
    if item.startswith("@"):
        return Principal(Kind.GROUP, _id_or_name(item[1:], "group", item), item)
    if _NUMBER.fullmatch(item) or _NAME.fullmatch(item):
        return Principal(Kind.USER, _id_or_name(item, "user", item), item)
    try:
        network = parse_network(item)
    except ValueError as exc:
        raise ValueError(f"{item!r} is not a user, @group, network or *: {exc}") from None
    return Principal(Kind.NETWORK, network, item)


def _id_or_name(text: str, what: str, item: str) -> str | int:
    if _NUMBER.fullmatch(text):
        number = int(text)
        if number > _ID_MAX:
            raise ValueError(f"{item!r}: a {what} id is at most {_ID_MAX}")
        return number
    if not _NAME.fullmatch(text):
        raise ValueError(f"{item!r} is not a {what} name or id")
    return text


def parse_rule(text: str) -> Rule:
    """``"kill, log_level, reset_*: root, @opensips"``, parsed; ValueError saying what is
    wrong. Whether its names exist is the policy's to check (``build_policy``)."""
    patterns, colon, principals = text.partition(":")
    if not colon:
        raise ValueError('must be "COMMANDS: WHO", e.g. "kill, log_level: root, @opensips"')
    names = tuple(_split(patterns))
    if not names:
        raise ValueError("names no command before the ':'")
    for name in names:
        if name == "@":
            raise ValueError("'@' names no set of commands")
    return Rule(names, parse_principals(principals), text.strip())


def _matcher(pattern: str) -> Callable[[str], bool]:
    """A command pattern as a test of a name: ``*`` is any run of characters, nothing else
    is special."""
    if "*" not in pattern:
        return pattern.__eq__
    regex = re.compile(".*".join(map(re.escape, pattern.split("*"))), re.DOTALL)
    return lambda name: regex.fullmatch(name) is not None


class Resolver(Protocol):
    """The user and group database, as the server reads it at start. Each raises KeyError,
    with the reason as its argument (``no user named 'x'``), for a name that is not there."""

    def user(self, name: str) -> int:
        """A user name's uid."""

    def group(self, spec: str | int) -> tuple[int, frozenset[int]]:
        """A group's gid and the uids of the users its entry lists as members (a gid that
        has no entry: no members)."""


@dataclass(frozen=True)
class Principals:
    """Who may call one command, resolved: the test each of its calls passes or fails."""

    #: Anyone (then nothing else is looked at).
    anyone: bool
    #: The users named, and the members the group database lists for each group named.
    uids: frozenset[int]
    #: The groups named: a process running with one of them as its group id.
    gids: frozenset[int]
    networks: tuple[Network, ...]
    #: Where it was declared, for the log line of a refusal.
    source: str

    def admits(self, peer: Any, credentials: Credentials | None) -> bool:
        """Whether a caller (its address, and what the kernel says of it on a UNIX
        socket) may call the command."""
        if self.anyone:
            return True
        if credentials is not None and (credentials[1] in self.uids or credentials[2] in self.gids):
            return True
        return bool(self.networks) and in_networks(self.networks, peer)


def in_networks(networks: Sequence[Network], peer: Any) -> bool:
    """Whether a UDP peer's address (host, port[, ...]) is in one of ``networks``; an IPv4
    address mapped into IPv6 counts as the IPv4 one."""
    try:
        address = ipaddress.ip_address(peer[0])
    except (ValueError, TypeError, IndexError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def caller_label(peer: Any, credentials: Credentials | None) -> str:
    """Who called, as a refusal's log line names them: ``uid 65534 (gid 65534, pid 4321)``
    on a UNIX socket, the address on UDP."""
    if credentials is not None:
        pid, uid, gid = credentials
        return f"uid {uid} (gid {gid}, pid {pid})"
    return peer_label(peer)


@dataclass(frozen=True)
class AccessPolicy:
    """The rules resolved against the commands a server runs: who may call each command
    that is not open to anyone."""

    #: By command name: the commands that not everyone may call.
    guards: Mapping[str, Principals]
    #: Whether a check needs the callers' credentials (a UNIX socket with a rule that names
    #: users or groups): the socket must then pass them (``SO_PASSCRED``).
    needs_credentials: bool
    #: What works, but not as written (a program's default naming users on a UDP socket).
    warnings: tuple[str, ...] = ()


def build_policy(
    rules: Sequence[str],
    commands: Iterable[Command],
    resolver: Resolver,
    *,
    udp: bool,
) -> AccessPolicy:
    """The policy of ``rules`` (the ``acl`` parameter) and the commands' own defaults, for
    a UDP socket or a UNIX one. ConfigError names a rule whose commands, sets, users or
    groups do not exist, or whose principals the socket cannot tell."""
    served = list(commands)
    checked = [check_rule(text, udp=udp) for text in rules]
    decided = [
        (_rule_matcher(rule, served), _resolve(rule.principals, resolver, (PARAMETER, rule.text)))
        for rule in checked
    ]
    warnings: list[str] = []
    guards: dict[str, Principals] = {}
    for command in served:
        found = next((who for matches, who in decided if matches(command)), None)
        if found is None and command.acl:
            found = _default(command, resolver, udp, warnings)
        if found is not None and not found.anyone:
            guards[command.name] = found
    needs = not udp and any(p.uids or p.gids for p in guards.values())
    return AccessPolicy(guards, needs, tuple(warnings))


def check_rule(text: str, *, udp: bool) -> Rule:
    """A rule of the ``acl`` parameter parsed, for a UDP socket or a UNIX one; ConfigError
    for one that does not parse, or names principals that socket cannot tell."""
    try:
        rule = parse_rule(text)
    except ValueError as exc:
        raise ConfigError(PARAMETER, text, str(exc)) from None
    unusable = [p.text for p in rule.principals if _unusable(p, udp)]
    if unusable:
        raise ConfigError(PARAMETER, text, _why_unusable(unusable, udp))
    return rule


def _unusable(principal: Principal, udp: bool) -> bool:
    """Whether the socket cannot tell it: users and groups on UDP, networks on UNIX."""
    if principal.kind is Kind.ANYONE:
        return False
    return principal.kind is not Kind.NETWORK if udp else principal.kind is Kind.NETWORK


def _why_unusable(items: list[str], udp: bool) -> str:
    named = ", ".join(items)
    if udp:
        return (
            f"{named}: a UDP socket cannot tell users or groups (no credentials come with a "
            "datagram): name the networks allowed (CIDR), or serve on a UNIX socket"
        )
    return f"{named}: a UNIX socket has no source address: name users or @groups"


def _rule_matcher(rule: Rule, served: list[Command]) -> Callable[[Command], bool]:
    """The test of whether ``rule`` covers a command; ConfigError for a pattern that covers
    none of ``served`` (a typo would otherwise leave a command open)."""
    tests: list[Callable[[Command], bool]] = []
    for pattern in rule.patterns:
        test = _pattern_test(pattern)
        if not any(test(command) for command in served):
            raise ConfigError(PARAMETER, rule.text, _no_command(pattern, served))
        tests.append(test)
    return lambda command: any(test(command) for test in tests)


def _pattern_test(pattern: str) -> Callable[[Command], bool]:
    if pattern.startswith("@"):
        named = pattern[1:]
        return lambda command: named in command.sets
    matches = _matcher(pattern)
    return lambda command: matches(command.name)


def _no_command(pattern: str, served: list[Command]) -> str:
    if pattern.startswith("@"):
        sets = sorted({name for command in served for name in command.sets})
        known = ", ".join(f"@{name}" for name in sets) or "none"
        return f"no command is in a set named {pattern} (the sets: {known})"
    close = difflib.get_close_matches(pattern, [command.name for command in served], n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see `midgram call which`"
    return f"no MI command is named {pattern!r} ({hint})"


def _resolve(
    principals: Iterable[Principal], resolver: Resolver, declared: tuple[str, str]
) -> Principals:
    """Names to ids; ConfigError naming what the user and group database lacks.
    ``declared``: the parameter and the value they come from, for the error and the log."""
    uids: set[int] = set()
    gids: set[int] = set()
    networks: list[Network] = []
    anyone = False
    for principal in principals:
        value = principal.value
        if principal.kind is Kind.ANYONE:
            anyone = True
        elif principal.kind is Kind.NETWORK:
            assert isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network)
            networks.append(value)
        elif principal.kind is Kind.USER:
            assert isinstance(value, str | int)
            uids.add(value if isinstance(value, int) else _find(resolver.user, value, declared))
        else:
            assert isinstance(value, str | int)
            gid, members = _find(resolver.group, value, declared)
            gids.add(gid)
            uids |= members
    source = f"{declared[0]} {declared[1]!r}"
    return Principals(anyone, frozenset(uids), frozenset(gids), tuple(networks), source)


def _find(find: Callable[[Any], T], value: str | int, declared: tuple[str, str]) -> T:
    """``find(value)``; its KeyError (the user or group is not in the database) as the
    ConfigError of the rule that names it."""
    try:
        return find(value)
    except KeyError as exc:
        raise ConfigError(*declared, str(exc.args[0]) if exc.args else "unknown") from None


def _default(command: Command, resolver: Resolver, udp: bool, warnings: list[str]) -> Principals:
    """A command's own default (``@mi.command(acl=...)``): principals the socket cannot
    tell are left out, with a warning, so that the command is refused rather than open."""
    principals = command.acl
    text = ", ".join(p.text for p in principals)
    usable = tuple(p for p in principals if not _unusable(p, udp))
    if len(usable) < len(principals):
        left_out = ", ".join(p.text for p in principals if _unusable(p, udp))
        allowed = ", ".join(p.text for p in usable) or "no one"
        warnings.append(
            f"MI command {command.name}'s default acl names {left_out}, which this socket "
            f"cannot tell: only {allowed} may call it (an acl rule naming {command.name} "
            "overrides it)"
        )
    return _resolve(usable, resolver, (f"the acl of MI command {command.name}", text))
