"""The rules between parameters, checked once each has its type. Sans-IO.

Each rule takes the coerced ``Settings`` and returns warnings (a value that works, but not as
written) or raises ``ConfigError`` naming the parameter and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from midgram.engine.access import check_rule
from midgram.errors import ConfigError
from midgram.wire.address import (
    UDP_MAX_PAYLOAD,
    HepId,
    HepTransport,
    UdpAddress,
    UnixAddress,
    parse_hep_id,
    parse_trace_destination,
)

if TYPE_CHECKING:
    from midgram.config.settings import Settings

__all__ = ["HEP_VERSION", "RULES", "trace_target"]

#: The only HEP version midgram sends: OpenSIPS adds no MI data to version 1 or 2 packets.
HEP_VERSION: Final = 3


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


def _acl_rules(settings: Settings) -> list[str]:
    """Each ``acl`` rule names what its socket can tell: users and groups on a UNIX socket
    (the default), networks on UDP."""
    udp = isinstance(settings.address, UdpAddress)
    for rule in settings.acl:
        check_rule(rule, udp=udp)
    return []


#: Every rule, in the order they run.
RULES: Final[tuple[Callable[[Settings], list[str]], ...]] = (
    _address_rules,
    _tracing_rules,
    _acl_rules,
)
