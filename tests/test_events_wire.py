"""The event codec (midgram.wire.events) and the subscriber socket grammar
(midgram.wire.address), held against OpenSIPS 3.6.8's captures where they say what it does,
and against docs/compatibility.md where midgram does otherwise on purpose."""

from __future__ import annotations

import json
from typing import Any

import pytest
from golden_events import Notification, load_run, summary
from hypothesis import given
from hypothesis import strategies as st

from midgram.errors import AddressError, MIError
from midgram.wire.address import UdpAddress, UnixAddress, event_socket_text, parse_event_socket
from midgram.wire.events import (
    Members,
    decode_notification,
    encode_notification,
    mi_event_params,
    valueint,
)

# --- the socket grammar --------------------------------------------------------------------

ACCEPTED = {
    "udp:127.0.0.1:17001": UdpAddress("127.0.0.1", 17001),
    "udp:localhost:17001": UdpAddress("localhost", 17001),
    "unix:/run/opensips/sub_unix.sock": UnixAddress("/run/opensips/sub_unix.sock"),
    "unix:rel.sock": UnixAddress("rel.sock"),
}
# What OpenSIPS refused too (the captures' event_subscribe_bad_socket[...] cases, and the
# bare transports of C_subscribe_dangerous[...]).
REFUSED_BOTH = [
    "foo:127.0.0.1:17001",
    "127.0.0.1:17001",
    "/run/opensips/sub_unix.sock",
    "udp:127.0.0.1",
    "udp:127.0.0.1:",
    "udp::17001",
    "udp:127.0.0.1:0",
    "udp:127.0.0.1:abc",
    "udp:127.0.0.1:65536",
    "udp:127.0.0.1:170011",
    "udp:127.0.0.1:17001:5",
    "unix:",
    "udp:",
    "UDP:127.0.0.1:17001",
    "tcp:127.0.0.1:17001",
    "route:no_such_route",
    "unix",
    "udp",
    "17001",
]


@pytest.mark.parametrize(("text", "address"), ACCEPTED.items())
def test_a_subscriber_socket_reads_as_opensips_reads_it(text: str, address: Any) -> None:
    parsed = parse_event_socket(text)
    assert parsed == address
    assert event_socket_text(parsed) == text  # as subscribers_list shows it


@pytest.mark.parametrize("text", REFUSED_BOTH)
def test_a_socket_opensips_refuses_is_refused(text: str) -> None:
    with pytest.raises(AddressError) as error:
        parse_event_socket(text)
    assert error.value.parameter == "socket"
    assert error.value.value == text


def test_the_refused_socket_texts_are_the_captured_ones() -> None:
    captured = {
        json.loads(e.request)["params"]["socket"]
        for e in load_run()
        if e.name.startswith("event_subscribe_bad_socket[")
    }
    ipv6 = {"udp:[::1]:17001", "udp:::1:17001"}  # difference 23, below
    assert captured - ipv6 <= set(REFUSED_BOTH)
    assert ipv6 <= captured


@pytest.mark.parametrize("text", ["udp:[::1]:17001", "udp:::1:17001"])
def test_ipv6_subscribers_work(text: str) -> None:
    """docs/compatibility.md, difference 23: OpenSIPS takes the host up to the first colon,
    so it can have no IPv6 subscriber; midgram reads a target's grammar (the port after the
    last colon)."""
    assert parse_event_socket(text) == UdpAddress("::1", 17001)
    assert event_socket_text(parse_event_socket(text)) == "udp:[::1]:17001"


def test_a_port_beyond_65535_is_refused_not_wrapped() -> None:
    """Difference 23: OpenSIPS accepts udp:127.0.0.1:70000 as port 4464."""
    with pytest.raises(AddressError, match="65535"):
        parse_event_socket("udp:127.0.0.1:70000")


def test_a_path_too_long_for_sun_path_is_refused() -> None:
    """Difference 23: OpenSIPS accepts a 150-byte path and never reaches it (the send fails
    with ENOENT on the truncated path)."""
    path = "/run/opensips/" + "p" * 136
    with pytest.raises(AddressError, match="too long"):
        parse_event_socket("unix:" + path)


def test_an_abstract_unix_subscriber_is_written_with_an_at() -> None:
    parsed = parse_event_socket("unix:@listener")
    assert parsed == UnixAddress("listener", abstract=True)
    assert event_socket_text(parsed) == "unix:@listener"


# --- notifications -------------------------------------------------------------------------


def _notifications(run: str = "") -> list[Notification]:
    return [n for n in load_run(run) if isinstance(n, Notification) and n.datagram is not None]


def test_a_notification_without_params_is_the_captured_one() -> None:
    assert encode_notification("E_CORE_THRESHOLD") == (
        b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD"}'
    )


@pytest.mark.parametrize(
    "name",
    [
        "notif_raise_event_json_string_params_doc_example",
        "notif_raise_event_json_string_params_str_int",
        "notif_raise_event_json_string_params_float_bigint",
        "notif_raise_event_json_string_params_dup_keys",
        "notif_raise_event_with_localhost_dup",
        "notif_raise_event_2s_after_expire0",
    ],
)
def test_a_decoded_notification_encodes_to_the_same_bytes(name: str) -> None:
    """What the notification datagram is, byte for byte: cJSON's escapes, members in order
    (a repeated name kept), raw UTF-8."""
    (captured, *_) = [n for n in _notifications() if n.name == name]
    assert captured.datagram is not None
    parsed = json.loads(captured.datagram, object_pairs_hook=Members)
    params = parsed[2][1] if len(parsed) > 2 else None
    assert encode_notification(parsed[1][1], params) == captured.datagram


@given(
    st.dictionaries(
        st.text(max_size=45),
        st.one_of(st.text(max_size=300), st.integers(-(2**31), 2**31 - 1)),
        max_size=12,
    )
)
def test_string_and_int_params_come_out_as_opensips_sends_them(params: dict[str, Any]) -> None:
    """Phase D of the capture: 40 random objects raised as a JSON string came back as
    ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``, byte for byte."""
    assert summary("D_summary_json_string_mode_roundtrip")["result"]["mismatch"] == 0
    sent = mi_event_params(json.dumps(params))
    expected = json.dumps(
        {"jsonrpc": "2.0", "method": "E_X", **({"params": params} if params else {})},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert encode_notification("E_X", sent) == expected.encode()


# --- raise_event's params ------------------------------------------------------------------


def test_json_string_params_keep_their_order_and_repeated_names() -> None:
    assert mi_event_params('{"a":"1","a":"2"}') == Members((("a", "1"), ("a", "2")))


def test_numbers_are_cjson_valueint() -> None:
    """Truncated toward zero, saturated to a C int (float_bigint capture)."""
    sent = mi_event_params('{"f":1.7,"g":-2.5,"big":9999999999,"e":1e3}')
    assert sent == Members((("f", 1), ("g", -2), ("big", 2147483647), ("e", 1000)))
    assert [valueint(x) for x in (1e400, -1e400, -(2**40))] == [2**31 - 1, -(2**31), -(2**31)]


def test_array_items_are_sent_as_strings_in_an_array() -> None:
    """Difference 25: OpenSIPS 3.6 sends them as an object with empty names
    (``{"":"s","":"42"}``) most of the time; the array it means is sent."""
    assert mi_event_params(["s", 42, -1, 1.9]) == ["s", "42", "-1", "1"]
    assert encode_notification("E", mi_event_params(["x", "y"])) == (
        b'{"jsonrpc":"2.0","method":"E","params":["x","y"]}'
    )


def test_non_scalar_json_values_are_sent_as_their_json_text() -> None:
    """Difference 26: OpenSIPS frees them before it copies them, and sends garbage
    (``"t":"PS\\xb8\\xcf"``); midgram sends what it means to, each value's JSON text."""
    sent = mi_event_params('{"t":true,"f":false,"n":null,"arr":[1,2],"obj":{"k":"v"}}')
    assert encode_notification("E_CORE_THRESHOLD", sent) == (
        b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":{"t":"true","f":"false",'
        b'"n":"null","arr":"[1,2]","obj":"{\\"k\\":\\"v\\"}"}}'
    )


@pytest.mark.parametrize("value", ["{}", []])
def test_empty_params_send_none(value: Any) -> None:
    """``[]`` as OpenSIPS; ``"{}"`` too (difference 26: OpenSIPS sends stale params left by
    the previous event, or none in a fresh process)."""
    assert mi_event_params(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ip": "127.0.0.1"}, "No Params"),
        (None, "No Params"),
        (True, "No Params"),
        (5, "Bad Params"),
        ("abc", "Bad Params"),
        ("[1,2]", "Bad Params"),
        ('{"a":NaN}', "Bad Params"),
        ([{"a": 1}], "Bad Params"),
        (["a", None], "Bad Params"),
        ([True], "Bad Params"),
    ],
)
def test_params_opensips_refuses_are_refused_with_its_text(value: Any, message: str) -> None:
    with pytest.raises(MIError) as error:
        mi_event_params(value)
    assert (error.value.code, error.value.message) == (400, message)


# --- reading notifications back ------------------------------------------------------------


def test_every_captured_notification_decodes() -> None:
    for run in ("", "B_", "C_", "E_"):
        for notification in _notifications(run):
            assert notification.datagram is not None
            notice = decode_notification(notification.datagram)
            assert notice.event.startswith("E_CORE_"), notification.name


def test_opensips_empty_names_are_read_as_the_array_they_mean() -> None:
    (captured, *_) = [
        n for n in _notifications() if n.name == "notif_raise_event_array_params_named"
    ]
    assert (
        captured.datagram
        == b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":{"":"x","":"y"}}'
    )
    assert decode_notification(captured.datagram) == ("E_CORE_THRESHOLD", ["x", "y"])


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1]",
        b'{"jsonrpc":"2.0","method":"E","id":1}',
        b'{"jsonrpc":"1.0","method":"E"}',
        b'{"jsonrpc":"2.0","method":5}',
        b"[" * 100_000,
    ],
)
def test_what_is_not_a_notification_is_said_so(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"not|request"):
        decode_notification(data)


@pytest.mark.parametrize("depth", [500, 5000])
def test_params_nested_past_a_reply_s_depth_are_refused_not_recursed(depth: int) -> None:
    """Deeper than a reply may be, however the brackets nest: a ValueError, the answer for
    every datagram that is not a notification, never a RecursionError."""
    params = "[" * depth + "]" * depth
    data = b'{"jsonrpc":"2.0","method":"E_X","params":' + params.encode() + b"}"
    with pytest.raises(ValueError, match="nested deeper than"):
        decode_notification(data)
