"""The socket_name grammar (docs/parameters.md, "socket_name"): every rule and error text."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midgram.errors import AddressError, ConfigError
from midgram.wire.address import (
    HEP_DEFAULT_PORT,
    SUN_PATH_MAX,
    HepId,
    HepTransport,
    HostKind,
    UdpAddress,
    UnixAddress,
    parse_hep_id,
    parse_socket_name,
    parse_target,
    parse_trace_destination,
)

#: OpenSIPS's text for a server port out of its range.
OUT_OF_RANGE = "invalid port number; must be in [1024,65535]"

# --- UDP: what parses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "kind"),
    [
        ("udp:127.0.0.1:8080", "127.0.0.1", 8080, HostKind.IPV4),
        ("udp:[::1]:8080", "::1", 8080, HostKind.IPV6),
        ("udp:::1:8080", "::1", 8080, HostKind.IPV6),
        ("udp::::8080", "::", 8080, HostKind.IPV6),
        ("udp:[::]:8080", "::", 8080, HostKind.IPV6),
        ("udp:0.0.0.0:1024", "0.0.0.0", 1024, HostKind.IPV4),
        ("udp:10.0.0.1:65535", "10.0.0.1", 65535, HostKind.IPV4),
        ("udp:localhost:8080", "localhost", 8080, HostKind.NAME),
        ("udp:mi.example.com:8080", "mi.example.com", 8080, HostKind.NAME),
        ("udp:mi.example.com.:8080", "mi.example.com.", 8080, HostKind.NAME),
        ("udp:fe80::1%eth0:8080", "fe80::1%eth0", 8080, HostKind.IPV6),
        ("udp:[fe80::1%eth0]:8080", "fe80::1%eth0", 8080, HostKind.IPV6),
        # Leading zeros are decimal digits to str2int.
        ("udp:127.0.0.1:08080", "127.0.0.1", 8080, HostKind.IPV4),
        # IPv6 literals are kept in their canonical spelling.
        ("udp:[0:0:0:0:0:0:0:1]:8080", "::1", 8080, HostKind.IPV6),
        ("udp:[2001:DB8::1]:8080", "2001:db8::1", 8080, HostKind.IPV6),
        # Port 0: any free port, chosen at bind (docs/compatibility.md, difference 29).
        ("udp:127.0.0.1:0", "127.0.0.1", 0, HostKind.IPV4),
        ("udp:[::1]:00", "::1", 0, HostKind.IPV6),
        ("udp:localhost:0", "localhost", 0, HostKind.NAME),
    ],
)
def test_udp_parses(text: str, host: str, port: int, kind: HostKind) -> None:
    address = parse_socket_name(text)
    assert address == UdpAddress(host, port)
    assert isinstance(address, UdpAddress)
    assert address.host == host
    assert address.port == port
    assert address.host_kind is kind


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("udp:127.0.0.1:8080", "udp:127.0.0.1:8080"),
        ("udp:[::1]:8080", "udp:[::1]:8080"),
        ("udp:::1:8080", "udp:[::1]:8080"),
        ("udp:localhost:9000", "udp:localhost:9000"),
        ("udp:127.0.0.1:08080", "udp:127.0.0.1:8080"),
    ],
)
def test_udp_str_is_canonical_socket_name(text: str, canonical: str) -> None:
    assert str(parse_socket_name(text)) == canonical


def test_udp_sockaddr() -> None:
    assert parse_socket_name("udp:[::1]:8080").sockaddr() == ("::1", 8080)
    assert parse_socket_name("udp:localhost:8080").sockaddr() == ("localhost", 8080)


# --- UDP: errors, with OpenSIPS's texts -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("udp:", "malformed ip address"),
        # The separator search starts one character after "udp:".
        ("udp:8080", "no port specified"),
        ("udp::8080", "no port specified"),
        ("udp:localhost", "no port specified"),
        ("udp:[]:8080", "malformed ip address"),
        ("udp:127.0.0.1:", "there is not a valid number port"),
        ("udp:127.0.0.1:http", "there is not a valid number port"),
        ("udp:127.0.0.1:+8080", "there is not a valid number port"),
        ("udp:127.0.0.1:-8080", "there is not a valid number port"),
        ("udp:127.0.0.1: 8080", "there is not a valid number port"),
        ("udp:127.0.0.1:8080 ", "there is not a valid number port"),
        ("udp:127.0.0.1:８０８０", "there is not a valid number port"),
        # Brackets without a port: the last ':' is inside them.
        ("udp:[::1]", "there is not a valid number port"),
        # OpenSIPS's text, then midgram's port 0 (docs/compatibility.md, difference 29).
        ("udp:127.0.0.1:80", f"{OUT_OF_RANGE}, or 0 for any free port"),
        ("udp:127.0.0.1:1", f"{OUT_OF_RANGE}, or 0 for any free port"),
        ("udp:127.0.0.1:1023", f"{OUT_OF_RANGE}, or 0 for any free port"),
        ("udp:127.0.0.1:65536", f"{OUT_OF_RANGE}, or 0 for any free port"),
        # OpenSIPS's str2int wraps this into range; we do not.
        ("udp:127.0.0.1:4294968320", f"{OUT_OF_RANGE}, or 0 for any free port"),
    ],
)
def test_udp_errors(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_socket_name(text)
    assert info.value.reason == reason
    assert info.value.parameter == "socket_name"
    assert info.value.value == text


@pytest.mark.parametrize(
    "text",
    [
        "udp:1.2.3.999:8080",
        "udp:a b:8080",
        "udp:a::8080",
        # The last ':' leaves the host ":" here; "::" needs "udp::::8080" or "udp:[::]:8080".
        "udp:::8080",
        "udp:-bad.example:8080",
        "udp:bad-.example:8080",
        "udp:" + "a" * 64 + ":8080",
        "udp:" + ".".join(["a" * 60] * 5) + ":8080",
    ],
)
def test_udp_bad_host_is_refused_without_resolving(text: str) -> None:
    with pytest.raises(AddressError, match="failed to resolve"):
        parse_socket_name(text)


@pytest.mark.parametrize("text", ["udp:[1.2.3.4]:8080", "udp:[localhost]:8080"])
def test_brackets_hold_only_ipv6(text: str) -> None:
    with pytest.raises(AddressError, match=r"only an IPv6 address goes in brackets"):
        parse_socket_name(text)


def test_address_error_is_a_config_error_and_names_the_parameter() -> None:
    with pytest.raises(ConfigError) as info:
        parse_socket_name("udp:", parameter="--socket")
    assert isinstance(info.value, AddressError)
    assert info.value.parameter == "--socket"
    assert str(info.value) == "bad value for --socket: 'udp:': malformed ip address"


# --- What is not UDP is a UNIX path ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/run/opensips/opensips_mi.sock",
        "relative.sock",
        "./relative.sock",
        # Only the exact, lower-case prefix means UDP.
        "UDP:127.0.0.1:8080",
        "udp6:[::1]:8080",
        "1.2.3.4:8080",
        "udp",
        " udp:127.0.0.1:8080",
        "/tmp/with space.sock",
    ],
)
def test_everything_else_is_a_unix_path(text: str) -> None:
    address = parse_socket_name(text)
    assert address == UnixAddress(text)
    assert isinstance(address, UnixAddress)
    assert address.sockaddr() == text
    # A path that a client would refuse as another tool's scheme is written "./udp6:...".
    assert str(address) == (f"./{text}" if text.startswith("udp6:") else text)


def test_unix_path_of_exactly_108_bytes_is_allowed() -> None:
    text = "/" + "x" * (SUN_PATH_MAX - 1)
    assert parse_socket_name(text) == UnixAddress(text)


def test_unix_path_too_long() -> None:
    text = "/" + "x" * SUN_PATH_MAX
    with pytest.raises(AddressError) as info:
        parse_socket_name(text)
    assert info.value.reason == "socket name too long: 109 - should be less than 108 chars"


def test_unix_path_length_counts_utf8_bytes() -> None:
    text = "/" + "é" * 54  # 1 + 108 bytes
    with pytest.raises(AddressError, match="socket name too long: 109 - should be less"):
        parse_socket_name(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty socket name"),
        ("/tmp/a\0b", "socket name contains a NUL character"),
        ("@", "empty abstract socket name"),
    ],
)
def test_unix_errors(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_socket_name(text)
    assert info.value.reason == reason


# --- Abstract names (a midgram extension) ---------------------------------------------------


def test_abstract_name() -> None:
    address = parse_socket_name("@midgram-test")
    assert address == UnixAddress("midgram-test", abstract=True)
    assert isinstance(address, UnixAddress)
    assert address.sockaddr() == b"\0midgram-test"
    assert str(address) == "@midgram-test"


def test_abstract_name_length_includes_the_leading_nul() -> None:
    assert parse_socket_name("@" + "x" * (SUN_PATH_MAX - 1)).sockaddr() == b"\0" + b"x" * 107
    with pytest.raises(AddressError, match="socket name too long: 109"):
        parse_socket_name("@" + "x" * SUN_PATH_MAX)


def test_abstract_can_be_turned_off_to_read_like_opensips() -> None:
    address = parse_socket_name("@name", allow_abstract=False)
    assert address == UnixAddress("@name")
    assert isinstance(address, UnixAddress)
    assert address.sockaddr() == "@name"
    # Written so that it does not read back as an abstract name.
    assert str(address) == "./@name"
    assert parse_socket_name(str(address)) == UnixAddress("./@name")


def test_abstract_sockaddr_encodes_utf8() -> None:
    assert UnixAddress("é", abstract=True).sockaddr() == b"\0\xc3\xa9"


# --- Direct construction is validated too ----------------------------------------------------


def test_udp_address_constructor_validates() -> None:
    assert UdpAddress("127.0.0.1", 0).port == 0  # "any port", for tests binding port 0
    with pytest.raises(AddressError, match=r"must be in \[0,65535\]"):
        UdpAddress("127.0.0.1", 65536)
    with pytest.raises(AddressError, match="must be an integer"):
        UdpAddress("127.0.0.1", True)
    with pytest.raises(AddressError, match="failed to resolve"):
        UdpAddress("[::1]", 8080)


def test_unix_address_constructor_validates() -> None:
    with pytest.raises(AddressError, match="empty socket name"):
        UnixAddress("")


def test_addresses_are_frozen_and_hashable() -> None:
    address = UdpAddress("::1", 8080)
    assert {address, UdpAddress("0::1", 8080), parse_socket_name("udp:::1:8080")} == {address}
    with pytest.raises(AttributeError):
        address.port = 9000  # type: ignore[misc]


# --- Loopback --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("localhost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("localhost.example.com", False),
        ("mi.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert UdpAddress(host, 8080).is_loopback is loopback


# --- Client targets --------------------------------------------------------------------------


@pytest.mark.parametrize("port", [1, 80, 1023, 65535])
def test_target_accepts_any_real_port(port: int) -> None:
    assert parse_target(f"udp:127.0.0.1:{port}") == UdpAddress("127.0.0.1", port)


@pytest.mark.parametrize("port", ["0", "65536"])
def test_target_port_range(port: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_target(f"udp:127.0.0.1:{port}")
    assert info.value.reason == "invalid port number; must be in [1,65535]"
    assert info.value.parameter == "target"


def test_target_takes_paths_and_abstract_names() -> None:
    assert parse_target("/run/opensips/opensips_mi.sock") == UnixAddress(
        "/run/opensips/opensips_mi.sock"
    )
    assert parse_target("@srv") == UnixAddress("srv", abstract=True)


# --- Properties --------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z](\.[a-z][a-z0-9]{0,5}){0,3}", fullmatch=True)


@st.composite
def udp_texts(draw: st.DrawFn) -> str:
    port = draw(st.integers(1024, 65535))
    kind = draw(st.sampled_from(["v4", "v6", "v6-bare", "name"]))
    if kind == "name":
        return f"udp:{draw(_names)}:{port}"
    host = str(draw(st.ip_addresses(v=4) if kind == "v4" else st.ip_addresses(v=6)))
    return f"udp:[{host}]:{port}" if kind == "v6" else f"udp:{host}:{port}"


@given(udp_texts())
def test_udp_round_trips_through_str(text: str) -> None:
    address = parse_socket_name(text)
    canonical = str(address)
    assert parse_socket_name(canonical) == address
    assert str(parse_socket_name(canonical)) == canonical


@given(st.ip_addresses())
def test_host_kind_matches_ipaddress(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    address = UdpAddress(str(ip), 8080)
    assert address.host_kind is (HostKind.IPV4 if ip.version == 4 else HostKind.IPV6)
    assert address.host == str(ip)


def _parse_or_error(text: str) -> UnixAddress | UdpAddress | AddressError:
    try:
        return parse_socket_name(text)
    except AddressError as exc:
        return exc


@given(st.text(min_size=1).filter(lambda t: not t.startswith(("udp:", "@")) and "\0" not in t))
def test_non_udp_text_is_a_path_or_too_long(text: str) -> None:
    if len(text.encode("utf-8", "surrogateescape")) > SUN_PATH_MAX:
        with pytest.raises(AddressError, match="socket name too long"):
            parse_socket_name(text)
    else:
        assert parse_socket_name(text) == UnixAddress(text)


@given(st.text())
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    result = _parse_or_error(text)
    if isinstance(result, AddressError):
        assert (result.parameter, result.value) == ("socket_name", text)
    else:
        assert parse_socket_name(str(result)) == result


# --- proto_hep's hep_id and trace_destination ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[hep_dst]127.0.0.1:9060;transport=udp;version=3",
            HepId("hep_dst", UdpAddress("127.0.0.1", 9060), HepTransport.UDP, 3),
        ),
        # proto_hep's defaults: port 9060, TCP, version 3.
        ("[a]10.0.0.2", HepId("a", UdpAddress("10.0.0.2", HEP_DEFAULT_PORT))),
        (
            "  [hep_dst] 127.0.0.1:8001; transport=tcp; version=3  ",
            HepId("hep_dst", UdpAddress("127.0.0.1", 8001), HepTransport.TCP, 3),
        ),
        ("[x]h;TRANSPORT=UDP;", HepId("x", UdpAddress("h", 9060), HepTransport.UDP)),
        ("[x]h;version=2", HepId("x", UdpAddress("h", 9060), HepTransport.TCP, 2)),
        # The name ends at the first space (the rest up to ']' is ignored, as OpenSIPS does).
        ("[name ignored]h", HepId("name", UdpAddress("h", 9060))),
        # IPv6 in brackets: a midgram extension (OpenSIPS cannot parse it).
        ("[v6][::1]:9061;transport=udp", HepId("v6", UdpAddress("::1", 9061), HepTransport.UDP)),
        ("[v6][2001:db8::1]", HepId("v6", UdpAddress("2001:db8::1", 9060))),
    ],
)
def test_hep_id_parses(text: str, expected: HepId) -> None:
    assert parse_hep_id(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hep_dst", "must be [name]host:port;transport=udp;version=3"),
        ("[]127.0.0.1", "must be [name]host:port"),
        ("[a]", "no host given"),
        ("[a];transport=udp", "no host given"),
        ("[a]h;uri=x", "unknown parameter 'uri': transport or version"),
        ("[a]h;transport", "empty value for 'transport'"),
        ("[a]h;transport=sctp", "unknown transport 'sctp': udp, tcp or tls"),
        ("[a]h;version=4", "unknown HEP version '4': 1, 2 or 3"),
        ("[a]h:0", "invalid port number; must be in [1,65535]"),
        ("[a]h:x", "there is not a valid number port"),
        ("[a]::1", "write an IPv6 address in brackets: [::1]:9060"),
        ("[a][::1", "malformed IPv6 address"),
        ("[a][::1]x", "malformed IPv6 address"),
        ("[a][10.0.0.1]:9060", "only an IPv6 address goes in brackets"),
        ("[a]bad host", "failed to resolve bad host"),
    ],
)
def test_hep_id_errors(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_hep_id(text)
    assert info.value.parameter == "hep_id"
    assert info.value.value == text
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    "text",
    [
        "[hep_dst]127.0.0.1:9060;transport=udp;version=3",
        "[a][::1]:9061;transport=tls;version=1",
        "[b]collector.example:1;transport=tcp;version=3",
    ],
)
def test_hep_id_str_reads_back(text: str) -> None:
    assert str(parse_hep_id(text)) == text
    assert parse_hep_id(str(parse_hep_id(text))) == parse_hep_id(text)


def test_trace_destination_forms() -> None:
    assert parse_trace_destination("hep_dst") == "hep_dst"
    assert parse_trace_destination("udp:127.0.0.1:9060") == UdpAddress("127.0.0.1", 9060)
    assert parse_trace_destination("udp:[::1]:1") == UdpAddress("::1", 1)
    for text in ("tcp:10.0.0.1:9060", "tls:10.0.0.1:9060"):
        with pytest.raises(AddressError, match="midgram sends HEP over UDP only"):
            parse_trace_destination(text)
    with pytest.raises(AddressError) as info:
        parse_trace_destination("udp:10.0.0.1:0")
    assert info.value.parameter == "trace_destination"


@given(st.text(max_size=60))
def test_any_hep_id_parses_or_raises_address_error(text: str) -> None:
    try:
        parsed = parse_hep_id(text)
    except AddressError:
        return
    assert parse_hep_id(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tcp:10.0.0.1:8080", "write udp:10.0.0.1:8080 (./tcp:10.0.0.1:8080 for a file of"),
        ("TLS:host:5061", "write udp:host:5061"),
        ("unix:/run/opensips/mi.sock", "write the socket's path itself: /run/opensips/mi.sock"),
        ("unix:///run/mi.sock", "write the socket's path itself: /run/mi.sock"),
        ("http://127.0.0.1:8888/mi", "mi_datagram has no HTTP"),
    ],
)
def test_a_target_with_another_tools_scheme_says_what_to_write(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_target(text)
    assert reason in info.value.reason


def test_a_file_named_like_a_scheme_is_written_so_that_it_reads_back() -> None:
    assert str(parse_target("./tcp:x")) == "./tcp:x"
    assert parse_target(str(UnixAddress("tcp:x"))) == UnixAddress("./tcp:x")
    assert parse_socket_name("tcp:x") == UnixAddress("tcp:x")  # the server: OpenSIPS's grammar
