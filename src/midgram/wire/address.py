"""The address grammars, sans-IO: mi_datagram's ``socket_name`` (docs/parameters.md), client
targets, event_datagram's subscriber sockets (``event_subscribe``), and proto_hep's ``hep_id``
with the ``trace_destination`` that names one (see the end).

::

    socket_name := "udp:" host ":" port     (the prefix is exact and case-sensitive)
                 | "@" name                 (Linux abstract name: a midgram extension)
                 | path                     (anything else, relative paths included)
    host        := IPv4 | IPv6 | "[" IPv6 "]" | host name

The port separator is the *last* ``:``, searched from the second character after ``udp:``, so
``udp:::1:8080`` and ``udp:[::1]:8080`` both mean host ``::1``, while ``udp:8080`` and
``udp::8080`` have no port. Error reasons reuse OpenSIPS's texts so an operator can search for
them in either project.

Differences from OpenSIPS, on purpose:

- Host names are not resolved here (that is the transport's job); their syntax is checked.
- ``@name`` is a Linux abstract socket name. OpenSIPS cannot bind one (it uses ``strlen`` and
  ``SUN_LEN``) and would create a file called ``@name`` in its working directory instead; pass
  ``allow_abstract=False`` to get that reading back.
- OpenSIPS's ``str2int`` does not check overflow, so a huge port can wrap into range there;
  here it is refused.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from midgram.errors import AddressError

__all__ = [
    "ANY_PORT",
    "HEP_DEFAULT_PORT",
    "SERVER_PORT_RANGE",
    "SUN_PATH_MAX",
    "TARGET_PORT_RANGE",
    "UDP_MAX_PAYLOAD",
    "Address",
    "HepId",
    "HepTransport",
    "HostKind",
    "UdpAddress",
    "UnixAddress",
    "default_socket_name",
    "event_socket_text",
    "parse_event_socket",
    "parse_hep_id",
    "parse_network",
    "parse_socket_name",
    "parse_target",
    "parse_trace_destination",
]

UDP_PREFIX: Final = "udp:"
ABSTRACT_PREFIX: Final = "@"
#: ``sizeof(((struct sockaddr_un *)0)->sun_path)`` on Linux. OpenSIPS allows exactly 108 bytes
#: (no terminating NUL); an abstract name spends one of them on its leading NUL.
SUN_PATH_MAX: Final = 108
#: OpenSIPS refuses privileged ports for the server socket.
SERVER_PORT_RANGE: Final = (1024, 65535)
#: A server's port 0 (midgram's own): any free port, chosen by the kernel at bind time. The
#: server then says which one wherever it says where it listens.
ANY_PORT: Final = 0
#: A client may talk to any real port.
TARGET_PORT_RANGE: Final = (1, 65535)
#: 65535 - 8 (UDP header) - 20 (IPv4 header): the largest payload a UDP datagram can carry.
UDP_MAX_PAYLOAD: Final = 65507

# str2int accepts ASCII decimal digits only (str.isdigit would also accept "²" or "٣").
_PORT_RE: Final = re.compile(r"[0-9]+")
# RFC 1123 labels, plus "_" because real resolvers accept it. The last label must not be all
# digits: "1.2.3.999" is a mistyped address, not a name to send to DNS.
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
_HOSTNAME_MAX: Final = 253
_LOCALHOST: Final = "localhost"


class HostKind(enum.Enum):
    """What the host part of a UDP address is; a name still has to be resolved."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    NAME = "name"


def _encoded(text: str) -> bytes:
    # Python's socket module encodes AF_UNIX str paths with the filesystem encoding and
    # surrogateescape; on Linux that is UTF-8, and the limit is on those bytes.
    return text.encode("utf-8", "surrogateescape")


def _check_unix(path: str, abstract: bool) -> None:
    if not path:
        raise AddressError(
            "path", path, "empty abstract socket name" if abstract else "empty socket name"
        )
    if "\0" in path:
        raise AddressError("path", path, "socket name contains a NUL character")
    size = len(_encoded(path)) + (1 if abstract else 0)
    if size > SUN_PATH_MAX:
        raise AddressError(
            "path",
            path,
            f"socket name too long: {size} - should be less than {SUN_PATH_MAX} chars",
        )


@dataclass(frozen=True)
class UnixAddress:
    """A UNIX datagram socket address: a filesystem path, or a Linux abstract name.

    ``path`` holds the abstract name without its ``@`` when ``abstract`` is true.
    """

    path: str
    abstract: bool = False

    def __post_init__(self) -> None:
        _check_unix(self.path, self.abstract)

    def sockaddr(self) -> str | bytes:
        """The address as ``socket.bind``/``sendto`` want it for ``AF_UNIX``.

        A path is passed as ``str``; an abstract name as ``bytes`` starting with NUL, which is
        how Python spells the abstract namespace.
        """
        if self.abstract:
            return b"\0" + _encoded(self.path)
        return self.path

    def __str__(self) -> str:
        if self.abstract:
            return ABSTRACT_PREFIX + self.path
        # A file really named "@x" (or "tcp:x") is written "./@x" so that the text does not
        # read back as an abstract name (or a refused target).
        if self.path.startswith(ABSTRACT_PREFIX) or _foreign_scheme(self.path) is not None:
            return "./" + self.path
        return self.path


_LITERALS: Final[tuple[tuple[HostKind, Callable[[str], object]], ...]] = (
    (HostKind.IPV4, ipaddress.IPv4Address),
    (HostKind.IPV6, ipaddress.IPv6Address),
)


def _classify(host: str) -> tuple[HostKind, str]:
    """Return the kind of ``host`` and its canonical spelling, or raise ``ValueError``."""
    for kind, parse in _LITERALS:
        try:
            return kind, str(parse(host))
        except ValueError:
            continue
    if len(host) <= _HOSTNAME_MAX and _HOSTNAME_RE.fullmatch(host):
        last_label = host.rstrip(".").rsplit(".", 1)[-1]
        if not last_label.isdigit():
            return HostKind.NAME, host
    raise ValueError(host)


def _is_loopback_literal(text: str) -> bool:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 can only be reached from this host, like 127.0.0.1 itself.
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class UdpAddress:
    """A UDP address. ``host`` is an IPv4 or IPv6 literal (canonical, no brackets) or a name.

    The constructor accepts ports 0-65535 (0 lets the kernel pick: ``ANY_PORT``); the
    parsers apply the narrower ranges OpenSIPS uses.
    """

    host: str
    port: int
    _kind: HostKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            kind, canonical = _classify(self.host)
        except ValueError:
            raise AddressError(
                "host",
                self.host,
                f"failed to resolve {self.host}: not an IPv4 or IPv6 address nor a host name",
            ) from None
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise AddressError("port", self.port, "the port must be an integer")
        if not 0 <= self.port <= 65535:
            raise AddressError("port", self.port, "invalid port number; must be in [0,65535]")
        # Frozen: the canonical spelling makes equal addresses compare equal ("::1" written
        # as "0:0::1" is the same socket).
        object.__setattr__(self, "host", canonical)
        object.__setattr__(self, "_kind", kind)

    @property
    def host_kind(self) -> HostKind:
        """Whether ``host`` is an IPv4 literal, an IPv6 literal or a name to resolve."""
        return self._kind

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 (and ::ffff:127.x) and the name ``localhost``."""
        if self._kind is HostKind.NAME:
            return self.host.rstrip(".").lower() == _LOCALHOST
        return _is_loopback_literal(self.host)

    def sockaddr(self) -> tuple[str, int]:
        """``(host, port)`` as ``socket`` wants it; a name still needs resolving."""
        return (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if self._kind is HostKind.IPV6 else self.host
        return f"{UDP_PREFIX}{host}:{self.port}"


Address = UnixAddress | UdpAddress


def _split_udp(rest: str) -> tuple[str, str]:
    """Split what follows ``udp:`` into host and port text, as mi_datagram.c does."""
    if not rest:
        raise ValueError("malformed ip address")
    # strrchr(p + 1, ':'): the first character is never taken as the separator.
    colon = rest.rfind(":", 1)
    if colon < 0:
        raise ValueError("no port specified")
    host = rest[:colon]
    # str2ip6 strips one pair of brackets.
    bracketed = len(host) >= 2 and host[0] == "[" and host[-1] == "]"
    if bracketed:
        host = host[1:-1]
    if not host:
        raise ValueError("malformed ip address")
    if bracketed and not _is_ipv6(host):
        raise ValueError(f"failed to resolve [{host}]: only an IPv6 address goes in brackets")
    return host, rest[colon + 1 :]


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_port(text: str, port_range: tuple[int, int], any_port: bool = False) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError("there is not a valid number port")
    port = int(text)
    if any_port and port == ANY_PORT:
        return port
    low, high = port_range
    if not low <= port <= high:
        # OpenSIPS's text, so a search finds either project's answer; then midgram's own.
        reason = f"invalid port number; must be in [{low},{high}]"
        raise ValueError(f"{reason}, or {ANY_PORT} for any free port" if any_port else reason)
    return port


def _parse_udp(rest: str, port_range: tuple[int, int], any_port: bool) -> UdpAddress:
    host, port_text = _split_udp(rest)
    return UdpAddress(host, _parse_port(port_text, port_range, any_port))


def _parse(
    text: str,
    parameter: str,
    port_range: tuple[int, int],
    allow_abstract: bool,
    *,
    any_port: bool = False,
    unix_prefix: str = "",
) -> UnixAddress | UdpAddress:
    """``text`` as a UDP address, or else as a UNIX one (after ``unix_prefix``)."""
    try:
        if text.startswith(UDP_PREFIX):
            return _parse_udp(text[len(UDP_PREFIX) :], port_range, any_port)
        path = text[len(unix_prefix) :]
        if allow_abstract and path.startswith(ABSTRACT_PREFIX):
            return UnixAddress(path[len(ABSTRACT_PREFIX) :], abstract=True)
        return UnixAddress(path)
    except AddressError as exc:
        # Re-raised under the caller's parameter name with the whole text as the value.
        raise AddressError(parameter, text, exc.reason) from None
    except ValueError as exc:
        raise AddressError(parameter, text, str(exc)) from None


def parse_socket_name(
    text: str, *, parameter: str = "socket_name", allow_abstract: bool = True
) -> UnixAddress | UdpAddress:
    """Parse a server ``socket_name`` as OpenSIPS does (UDP ports 1024-65535), and port 0:
    any free port (``ANY_PORT``, midgram's own).

    ``allow_abstract=False`` reads ``@name`` as a relative path, which is what OpenSIPS does.
    Raises ``AddressError(parameter, text, reason)``.
    """
    return _parse(text, parameter, SERVER_PORT_RANGE, allow_abstract, any_port=True)


# Schemes a target may be written with by habit (other tools' URLs), and what to write
# instead. The socket_name grammar would read them as relative file paths and fail later as
# "no socket at tcp:host:port", which hides the mistake.
_UDP_INSTEAD: Final = "midgram speaks UDP and UNIX datagram sockets: write udp:{rest}"
_FOREIGN_SCHEMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "tcp": _UDP_INSTEAD,
        "tls": _UDP_INSTEAD,
        "sctp": _UDP_INSTEAD,
        "udp4": _UDP_INSTEAD,
        "udp6": _UDP_INSTEAD,
        "http": "mi_datagram has no HTTP (that is OpenSIPS's mi_http): write udp:host:port "
        "or a socket path",
        "https": "mi_datagram has no HTTP (that is OpenSIPS's mi_http): write udp:host:port "
        "or a socket path",
        "unix": "write the socket's path itself: {rest}",
    }
)
_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9]*):(?://)?(.*)", re.DOTALL)


def parse_target(text: str, *, parameter: str = "target") -> UnixAddress | UdpAddress:
    """Parse a client's target: the ``socket_name`` grammar, any UDP port 1-65535.

    ``tcp:``, ``http:``, ``unix:`` and the like are refused with what to write instead (a file
    really named so is written ``./tcp:...``)."""
    match = _foreign_scheme(text)
    if match is not None:
        scheme, rest = match.groups()
        reason = _FOREIGN_SCHEMES[scheme.lower()].format(rest=rest)
        if "/" not in text:
            reason += f" (./{text} for a file of that name)"
        raise AddressError(parameter, text, reason)
    return _parse(text, parameter, TARGET_PORT_RANGE, allow_abstract=True)


def _foreign_scheme(text: str) -> re.Match[str] | None:
    match = _SCHEME_RE.fullmatch(text)
    return match if match is not None and match.group(1).lower() in _FOREIGN_SCHEMES else None


# --- event subscribers (event_datagram's sockets) ------------------------------------------
#
#     event_socket := "udp:" host ":" port      (as a target's; any port 1-65535)
#                   | "unix:" path              (relative paths allowed)
#                   | "unix:@" name             (a Linux abstract name: a midgram extension)
#
# The transport is everything before the first ":", matched exactly (``UDP:`` and a bare path
# are refused), as OpenSIPS's evi_transport.c does. Unlike OpenSIPS: an IPv6 host in brackets
# works, a port beyond 65535 is refused instead of wrapping, and a path too long for
# ``sun_path`` is refused instead of being accepted and never reached (docs/compatibility.md,
# difference 23).

UNIX_EVENT_PREFIX: Final = "unix:"


def parse_event_socket(
    text: str, *, parameter: str = "socket", any_port: bool = False
) -> UnixAddress | UdpAddress:
    """A subscriber's socket, as ``event_subscribe`` takes it. ``AddressError`` says why not.

    ``any_port`` takes UDP port 0 too: where a listener binds (any free port), never what a
    server is told."""
    if text.startswith((UDP_PREFIX, UNIX_EVENT_PREFIX)):
        return _parse(
            text,
            parameter,
            TARGET_PORT_RANGE,
            True,
            any_port=any_port,
            unix_prefix=UNIX_EVENT_PREFIX,
        )
    transport = text.partition(":")[0] if ":" in text else ""
    why = f"no transport {transport!r}" if transport else "no transport"
    raise AddressError(parameter, text, f"{why}: write udp:host:port or unix:path")


def event_socket_text(address: UnixAddress | UdpAddress) -> str:
    """How ``subscribers_list`` shows a subscriber's socket (``parse_event_socket`` reads it)."""
    if isinstance(address, UdpAddress):
        return str(address)
    name = ABSTRACT_PREFIX + address.path if address.abstract else address.path
    return UNIX_EVENT_PREFIX + name


# --- proto_hep's hep_id, and trace_destination ------------------------------------------
#
#     hep_id  := "[" name "]" uri ( ";" param )* [ ";" ]       (spaces around parts trimmed)
#     uri     := host [ ":" port ]                          (port 9060 when not given)
#     param   := "transport=" ( "udp" | "tcp" | "tls" )     (proto_hep's default: tcp)
#              | "version=" ( "1" | "2" | "3" )             (default: 3)
#
# As OpenSIPS's parse_hep_id() reads it (docs/tracing.md, "hep_id"), except that an IPv6
# address in brackets works here (OpenSIPS takes its first ':' as the port separator) and
# a name that is not a valid host name is refused now rather than at the first send.

#: proto_hep's HEP_PORT, the port of a hep_id that gives none.
HEP_DEFAULT_PORT: Final = 9060


class HepTransport(enum.StrEnum):
    """How a hep_id sends. midgram's tracing sends UDP only (config.py says so)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


_HEP_VERSIONS: Final = frozenset({1, 2, 3})
_HEP_ID_NAME_RE: Final = re.compile(r"\[([^\]\s]+)[^\]]*\](.*)", re.DOTALL)
#: The prefixes of trace_destination's direct form, "udp:host:port".
_DIRECT_PREFIXES: Final = (UDP_PREFIX, "tcp:", "tls:")


@dataclass(frozen=True)
class HepId:
    """A parsed ``hep_id``: a named HEP destination. ``address`` is host and port (the
    host may still be a name to resolve), whatever the transport."""

    name: str
    address: UdpAddress
    transport: HepTransport = HepTransport.TCP
    version: int = 3

    def __str__(self) -> str:
        host = str(self.address).removeprefix(UDP_PREFIX)
        return f"[{self.name}]{host};transport={self.transport};version={self.version}"


def _hep_transport(value: str) -> HepTransport:
    try:
        return HepTransport(value.lower())
    except ValueError:
        raise ValueError(f"unknown transport {value!r}: udp, tcp or tls") from None


def _hep_version(value: str) -> int:
    if not (_PORT_RE.fullmatch(value) and int(value) in _HEP_VERSIONS):
        raise ValueError(f"unknown HEP version {value!r}: 1, 2 or 3")
    return int(value)


#: The hep_id parameters and proto_hep's defaults for them.
_HEP_PARAMS: Final[Mapping[str, str]] = MappingProxyType({"transport": "tcp", "version": "3"})


def _hep_params(params: list[str]) -> dict[str, str]:
    found = dict(_HEP_PARAMS)
    for param in params:
        if not param:
            continue  # a trailing ";" is allowed
        key, _, value = (part.strip() for part in param.partition("="))
        key = key.lower()
        if key not in _HEP_PARAMS:
            raise ValueError(f"unknown parameter {key!r}: transport or version")
        if not value:
            raise ValueError(f"empty value for {key!r}")
        found[key] = value
    return found


def _hep_uri(uri: str) -> UdpAddress:
    if not uri:
        raise ValueError("no host given")
    if uri.startswith("["):
        host, bracket, rest = uri[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed IPv6 address {uri!r}: write [v6-address]:port")
        if not _is_ipv6(host):
            raise ValueError(f"only an IPv6 address goes in brackets, not {host!r}")
        port_text = rest[1:] if rest else None
    else:
        if uri.count(":") > 1:
            raise ValueError(f"write an IPv6 address in brackets: [{uri}]:{HEP_DEFAULT_PORT}")
        host, colon, port_text_found = uri.partition(":")
        port_text = port_text_found if colon else None
    port = HEP_DEFAULT_PORT if port_text is None else _parse_port(port_text, TARGET_PORT_RANGE)
    return UdpAddress(host, port)


def parse_hep_id(text: str, *, parameter: str = "hep_id") -> HepId:
    """Parse ``[name]host[:port][;transport=udp|tcp|tls][;version=1|2|3]``.

    Raises ``AddressError(parameter, text, reason)``.
    """
    try:
        match = _HEP_ID_NAME_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError("must be [name]host:port;transport=udp;version=3")
        uri, *params = (part.strip() for part in match.group(2).split(";"))
        found = _hep_params(params)
        return HepId(
            match.group(1),
            _hep_uri(uri),
            _hep_transport(found["transport"]),
            _hep_version(found["version"]),
        )
    except AddressError as exc:
        raise AddressError(parameter, text, exc.reason) from None
    except ValueError as exc:
        raise AddressError(parameter, text, str(exc)) from None


def parse_trace_destination(text: str, *, parameter: str = "trace_destination") -> UdpAddress | str:
    """``udp:host:port`` (the direct form, any port 1-65535) as a ``UdpAddress``, or else the
    name of a hep_id, returned as it is. ``tcp:``/``tls:`` are refused: midgram traces over
    UDP only."""
    if not text.startswith(_DIRECT_PREFIXES):
        return text
    if not text.startswith(UDP_PREFIX):
        raise AddressError(parameter, text, "midgram sends HEP over UDP only: write udp:host:port")
    address = parse_target(text, parameter=parameter)
    assert isinstance(address, UdpAddress)  # the udp: prefix makes it one
    return address


def default_socket_name(runtime_dir: str | None, uid: int) -> str:
    """The socket path used when none is configured.

    ``runtime_dir`` is typically ``$XDG_RUNTIME_DIR`` (private to the user); without one, the
    uid keeps users of a shared ``/tmp`` apart.
    """
    if runtime_dir:
        return f"{runtime_dir.rstrip('/')}/midgram.sock"
    return f"/tmp/midgram-{uid}.sock"


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network (``10.0.0.0/8``) or one address, as an access list names it. Host bits set
    (``10.1.2.3/8``) are refused rather than widened silently: the operator may have meant a
    narrower network. ValueError: ``not a network: ...``, with the network probably meant."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            hint = ""
        raise ValueError(f"not a network: {exc}{hint}") from None
