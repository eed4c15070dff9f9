"""MI tracing without sockets: payloads, params, correlation ids, the bw-list, what is traced
when, addresses, and the golden OpenSIPS captures replayed through the engine."""

from __future__ import annotations

import base64
import ipaddress
import random
import struct
from typing import Any

import pytest
from golden_hep import Exchange, all_exchanges, canonical
from hypothesis import given
from hypothesis import strategies as st

from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher, Outcome, Status
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.engine.tracing import (
    MAX_PARAMS,
    MAX_TRACE_FIELD,
    UNIX_CLIENT,
    UNIX_SERVER,
    CorrelationIds,
    PayloadFormat,
    Trace,
    TraceFilter,
    Tracer,
    cjson_object,
    correlation_id,
    params_text,
)
from midgram.errors import ConfigError
from midgram.wire import hep
from midgram.wire.jsonrpc import INTERNAL_ERROR_REPLY, PARSE_ERROR_REPLY

CORRELATION = b"MICORR0gQAAADxU2UqAAAAAAAAAAcAAAA="
NOW = 1_700_000_000_123_456_000
SERVER = ("127.0.0.1", 8080)
CLIENT = ("127.0.0.1", 40000)
AOR_REPLY = b'{"jsonrpc":"2.0","error":{"code":404,"message":"AOR not found"},"id":7}'
UL_SHOW = Outcome(
    AOR_REPLY, Status.COMMAND_ERROR, "ul_show_contact", ["location", "alice@example.com"]
)


def tracer(server: Any = SERVER, **options: Any) -> Tracer:
    return Tracer(server, lambda: CORRELATION, **options)


def traced(trace: Trace | None) -> hep.HepPacket:
    assert trace is not None
    return hep.decode(trace.packet)


# --- the worked vectors (docs/tracing.md, "Worked vectors"), through the tracer ------------


@pytest.mark.parametrize("homer5", [0, 1])
def test_canonical_vectors(homer5: int) -> None:
    ours = tracer(payload=PayloadFormat(homer5=bool(homer5)))
    trace = ours.request(UL_SHOW, CLIENT, NOW)
    assert trace is not None
    assert trace.packet == canonical(f"req_homer5_{homer5}")
    reply = ours.reply(trace, AOR_REPLY, 1_700_000_000_123_706_000)
    assert reply == canonical(f"rpl_homer5_{homer5}")


def test_canonical_correlation_id() -> None:
    # pid 1234, startup 1700000000, ticks 42, rand 7.
    assert correlation_id(1234, 1_700_000_000, 42, 7) == CORRELATION


# --- the params text (build_mi_trace_request) -----------------------------------------------


@pytest.mark.parametrize(
    ("params", "text"),
    [
        (None, b""),
        ([], b""),
        ({}, b""),
        (["location", "alice@example.com"], b"location,alice@example.com"),
        ({"level": 4, "pid": 1234}, b"4,1234"),
        ({"statistics": ["dialog:"]}, b""),
        (["dialog:", "tm:"], b"dialog:,tm:"),
        # The comma is written before every value that is not the first of the params.
        ([True, "x"], b",x"),
        ([None, None, "a", 1], b",a,1"),
        ([1, True], b"1"),
        ([[1], {"a": 1}, False, None], b""),
        # Numbers are C ints: truncated toward zero, saturated.
        ([3.9, -3.9, 0.5], b"3,-3,0"),
        ([2**40, -(2**40), 1e300], b"2147483647,-2147483648,2147483647"),
        (["", "a"], b",a"),
        (["h\u00e9", "\u4e2d"], "h\u00e9,\u4e2d".encode()),
        (["x" * 200], b"x" * MAX_PARAMS),
    ],
)
def test_params_text(params: Any, text: bytes) -> None:
    assert params_text(params) == text


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.lists(_json, max_size=8) | st.dictionaries(st.text(), _json, max_size=8))
def test_params_text_is_at_most_127_bytes(params: Any) -> None:
    assert len(params_text(params)) <= MAX_PARAMS


@given(st.lists(st.text(alphabet="abc:@.", max_size=40), min_size=1, max_size=6))
def test_params_text_of_strings_is_their_join(params: list[str]) -> None:
    assert params_text(params) == ",".join(params).encode()[:MAX_PARAMS]


# --- payload formats ---------------------------------------------------------------------


def test_cjson_object_format_and_escaping() -> None:
    assert cjson_object([(b"reply", b"400 Parse_error")]) == b'{\n\t"reply":\t"400 Parse_error"\n}'
    assert cjson_object([(b"a", b"1"), (b"b", b"2")]) == b'{\n\t"a":\t"1",\n\t"b":\t"2"\n}'
    raw = b'q" b\\ \b\f\n\r\t \x01\x1f / \x7f \xc3\xa9'
    escaped = b'q\\" b\\\\ \\b\\f\\n\\r\\t \\u0001\\u001f / \x7f \xc3\xa9'
    assert cjson_object([(b"k", raw)]) == b'{\n\t"k":\t"' + escaped + b'"\n}'


@pytest.mark.parametrize(
    ("fmt", "command", "params", "payload"),
    [
        (PayloadFormat(), "ps", b"", b"ps:datagram"),
        (PayloadFormat(), "log_level", b"4", b"log_level:datagram:4"),
        (PayloadFormat(delim="|"), "log_level", b"4,1", b"log_level|datagram|4,1"),
        (PayloadFormat(delim=""), "ps", b"", b"psdatagram"),
        (
            PayloadFormat(homer5=False),
            "get_statistics",
            b"dialog:,tm:",
            b'{\n\t"command":\t"get_statistics",\n\t"backend":\t"datagram",\n'
            b'\t"parameters":\t"dialog:,tm:"\n}',
        ),
        (
            PayloadFormat(homer5=False),
            "ps",
            b"",
            b'{\n\t"command":\t"ps",\n\t"backend":\t"datagram"\n}',
        ),
        # An empty part is refused by add_payload_part, so it is left out.
        (PayloadFormat(), "", b"x", b"datagram:x"),
    ],
)
def test_request_payloads(fmt: PayloadFormat, command: str, params: bytes, payload: bytes) -> None:
    assert fmt.request(command, params) == payload


def test_reply_payloads_are_cut_to_128_bytes() -> None:
    long_reply = b'{"jsonrpc":"2.0","result":"' + b"\xc3\xa9" * 100 + b'","id":1}'
    assert PayloadFormat().reply(long_reply) == long_reply[:MAX_TRACE_FIELD]
    assert len(PayloadFormat().reply(long_reply) or b"") == 128
    assert PayloadFormat(homer5=False).reply(b'"x"') == b'{\n\t"reply":\t"\\"x\\""\n}'
    assert PayloadFormat().reply(b"") is None


# --- correlation ids ---------------------------------------------------------------------


def test_correlation_ids_are_34_bytes_unique_and_seedable() -> None:
    ids = CorrelationIds(4242, 1_700_000_000, random.Random(7))
    made = [ids() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(len(one) == 34 and one.startswith(b"MICORR") for one in made)
    again = CorrelationIds(4242, 1_700_000_000, random.Random(7))
    assert [again() for _ in range(5)] == made[:5]
    pid, startup, ticks, rand = struct.unpack("<IIQI", base64.b64decode(made[2][6:]))
    assert (pid, startup, ticks) == (4242, 1_700_000_000, 3)
    assert 0 <= rand < 2**31
    other = CorrelationIds(4243, 1_700_000_000, random.Random(7))
    assert other() != made[0]


# --- trace_bwlist ------------------------------------------------------------------------

COMMANDS = {"ps", "which", "uptime", "sip_trace"}


@pytest.mark.parametrize(
    ("bwlist", "traced_methods", "untraced_methods"),
    [
        (None, ["ps", "which", "nope"], []),
        ("w: sip_trace", ["sip_trace", "nope", ""], ["ps", "which", "uptime"]),
        ("W:ps,which", ["ps", "which", "nope"], ["uptime", "sip_trace"]),
        ("b: ps, which", ["uptime", "sip_trace", "nope"], ["ps", "which"]),
        ("B:uptime", ["ps", "nope"], ["uptime"]),
    ],
)
def test_trace_filter(
    bwlist: str | None, traced_methods: list[str], untraced_methods: list[str]
) -> None:
    is_traced = TraceFilter.from_bwlist(bwlist, COMMANDS)
    assert [m for m in traced_methods if not is_traced(m)] == []
    assert [m for m in untraced_methods if is_traced(m)] == []


def test_an_unknown_command_in_the_bwlist_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        TraceFilter.from_bwlist("b: ps, no_such_cmd", COMMANDS)
    assert info.value.parameter == "trace_bwlist"
    assert info.value.value == "b: ps, no_such_cmd"
    assert info.value.reason == "can't find mi command [no_such_cmd]!"
    assert "trace_bwlist" in str(info.value)
    assert "no_such_cmd" in str(info.value)


def test_bwlist_checks_against_a_registry() -> None:
    served = with_builtins(Registry(), LocalRuntime())
    assert TraceFilter.from_bwlist("w: uptime, log_level", served)("ps") is False
    with pytest.raises(ConfigError, match=r"can't find mi command \[sip_trace\]!"):
        TraceFilter.from_bwlist("w: sip_trace", served)


# --- what is traced when -----------------------------------------------------------------

WHITELIST_NOTHING_KNOWN = TraceFilter.from_bwlist("w: which", COMMANDS)


@pytest.mark.parametrize(
    ("outcome", "payload"),
    [
        (Outcome(b"{}", Status.OK, "ps"), b"ps:datagram"),
        (Outcome(b"{}", Status.OK, "ps", {"x": 1}), b"ps:datagram:1"),
        (Outcome(None, Status.OK, "ps"), b"ps:datagram"),
        (Outcome(b"{}", Status.UNKNOWN_METHOD, "nope", ["a"]), b"nope:datagram:a"),
        (Outcome(b"{}", Status.INVALID_PARAMS, "ps", ["x"]), b"ps:datagram:x"),
        (Outcome(b"{}", Status.SERVER_ERROR, "ps"), b"ps:datagram"),
        (Outcome(INTERNAL_ERROR_REPLY, Status.REPLY_TOO_BIG, "ps"), b"ps:datagram"),
        (Outcome(b"{}", Status.INVALID_REQUEST, "ps"), b"ps:datagram"),
        (Outcome(b"{}", Status.INVALID_REQUEST, None), b"unknown:datagram"),
        (Outcome(PARSE_ERROR_REPLY, Status.PARSE_ERROR), b"unknown:datagram"),
        (Outcome(PARSE_ERROR_REPLY, Status.OVERSIZE), b"unknown:datagram"),
    ],
)
def test_request_traces(outcome: Outcome, payload: bytes) -> None:
    assert traced(tracer().request(outcome, CLIENT, NOW)).payload == payload


def test_an_empty_datagram_is_not_traced() -> None:
    assert tracer().request(Outcome(None, Status.EMPTY), CLIENT, NOW) is None


@pytest.mark.parametrize(
    ("outcome", "is_traced"),
    [
        (Outcome(b"{}", Status.OK, "ps"), False),
        (Outcome(b"{}", Status.INVALID_PARAMS, "ps"), False),
        (Outcome(b"{}", Status.INVALID_REQUEST, "ps"), False),
        (Outcome(b"{}", Status.OK, "which"), True),
        # Not a command: traced whatever the list says.
        (Outcome(b"{}", Status.UNKNOWN_METHOD, "nope"), True),
        (Outcome(b"{}", Status.INVALID_REQUEST, None), True),
        # Not a call at all: traced as "unknown", the list is not even asked.
        (Outcome(PARSE_ERROR_REPLY, Status.PARSE_ERROR), True),
        (Outcome(PARSE_ERROR_REPLY, Status.OVERSIZE), True),
    ],
)
def test_the_bwlist_applies_to_calls_of_commands(outcome: Outcome, is_traced: bool) -> None:
    trace = tracer(traced=WHITELIST_NOTHING_KNOWN).request(outcome, CLIENT, NOW)
    assert (trace is not None) is is_traced


def test_a_bwlist_that_excludes_unknown_still_traces_parse_errors() -> None:
    everything_but = TraceFilter.from_bwlist("b: unknown", {"unknown"})
    outcome = Outcome(PARSE_ERROR_REPLY, Status.PARSE_ERROR)
    assert traced(tracer(traced=everything_but).request(outcome, CLIENT, NOW)).payload == (
        b"unknown:datagram"
    )


def test_request_and_reply_packets() -> None:
    ours = tracer(capture_id=2001)
    trace = ours.request(Outcome(b"R", Status.OK, "ps"), CLIENT, NOW)
    request = traced(trace)
    assert trace is not None
    reply = hep.decode(ours.reply(trace, b"R", NOW + 1_500_000_000))
    assert (request.src_ip, request.src_port) == (ipaddress.ip_address("127.0.0.1"), 40000)
    assert (request.dst_ip, request.dst_port) == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert (reply.src_port, reply.dst_port) == (8080, 40000)
    assert (request.ts_sec, request.ts_usec) == (1_700_000_000, 123456)
    assert (reply.ts_sec, reply.ts_usec) == (1_700_000_001, 623456)
    assert request.correlation_id == reply.correlation_id == trace.correlation_id == CORRELATION
    assert request.capture_id == reply.capture_id == 2001
    assert (request.ip_proto, request.proto_type) == (6, 0x57)
    assert reply.payload == b"R"


def test_each_request_gets_its_own_correlation_id() -> None:
    ours = Tracer(SERVER, CorrelationIds(1, 2, random.Random(3)))
    first = ours.request(Outcome(b"R", Status.OK, "ps"), CLIENT, NOW)
    second = ours.request(Outcome(b"R", Status.OK, "ps"), CLIENT, NOW)
    assert first is not None
    assert second is not None
    assert first.correlation_id != second.correlation_id


# --- addresses (docs/compatibility.md, difference 11) ---------------------------------------


def test_ipv6_peers_are_traced_with_their_whole_address() -> None:
    ours = tracer(server=("2001:db8::1", 8080, 0, 0))
    trace = ours.request(Outcome(b"R", Status.OK, "ps"), ("2001:db8::dead:beef", 5555, 0, 0), NOW)
    request = traced(trace)
    assert request.family == hep.AF_INET6
    assert request.src_ip == ipaddress.ip_address("2001:db8::dead:beef")
    assert request.dst_ip == ipaddress.ip_address("2001:db8::1")
    assert (request.src_port, request.dst_port) == (5555, 8080)
    assert trace is not None
    reply = hep.decode(ours.reply(trace, b"R", NOW))
    assert (reply.src_ip, reply.dst_ip) == (request.dst_ip, request.src_ip)


def test_a_link_local_zone_is_dropped() -> None:
    ours = tracer(server=("fe80::1%lo", 8080, 0, 1))
    request = traced(ours.request(Outcome(b"R", Status.OK, "ps"), ("fe80::2%lo", 1, 0, 1), NOW))
    assert request.src_ip == ipaddress.ip_address("fe80::2")
    assert request.dst_ip == ipaddress.ip_address("fe80::1")


@pytest.mark.parametrize("server", ["/run/mi.sock", b"\0abstract"])
@pytest.mark.parametrize("peer", ["/tmp/client.sock", b"\0c", None])
def test_unix_peers_are_traced_with_loopback_placeholders(server: Any, peer: Any) -> None:
    ours = tracer(server=server)
    trace = ours.request(Outcome(b"R", Status.OK, "ps"), peer, NOW)
    request = traced(trace)
    assert (request.family, request.src_ip, request.src_port) == (
        hep.AF_INET,
        ipaddress.ip_address("127.0.0.1"),
        0,
    )
    assert (request.dst_ip, request.dst_port) == (ipaddress.ip_address("127.0.0.2"), 0)
    assert trace is not None
    assert (trace.client, trace.server) == (UNIX_CLIENT, UNIX_SERVER)
    reply = hep.decode(ours.reply(trace, b"R", NOW))
    assert (str(reply.src_ip), reply.src_port, str(reply.dst_ip), reply.dst_port) == (
        "127.0.0.2",
        0,
        "127.0.0.1",
        0,
    )


def test_the_client_address_follows_the_peer() -> None:
    ours = tracer()
    traces = []
    for port in (1, 2, 2, 1, 3):
        trace = ours.request(Outcome(b"R", Status.OK, "ps"), ("127.0.0.9", port), NOW)
        request = traced(trace)
        assert (str(request.src_ip), request.src_port) == ("127.0.0.9", port)
        traces.append(trace)
    # each reply goes back to its own request's client, whoever came since
    for port, trace in reversed(list(zip((1, 2, 2, 1, 3), traces, strict=True))):
        assert trace is not None
        reply = hep.decode(ours.reply(trace, b"R", NOW))
        assert (str(reply.dst_ip), reply.dst_port, reply.src_port) == ("127.0.0.9", port, 8080)


# --- the golden captures, replayed through midgram's engine ------------------------------

EXCHANGES = all_exchanges()


def _engine() -> Dispatcher:
    return Dispatcher(with_builtins(Registry(), LocalRuntime()))


def _replayed(exchange: Exchange) -> tuple[Outcome, list[bytes]]:
    """midgram's outcome for the captured request, and its trace packets built with the
    capture's own addresses, times and correlation id."""
    captured = [hep.decode(packet.data) for packet in exchange.packets]
    request = captured[0]
    correlation = request.correlation_id
    assert correlation is not None
    ours = Tracer((str(request.dst_ip), request.dst_port), lambda: correlation)
    outcome = _engine().handle(exchange.mi_request)
    assert isinstance(outcome, Outcome)
    peer = (str(request.src_ip), request.src_port)
    trace = ours.request(outcome, peer, (request.ts_sec * 1_000_000 + request.ts_usec) * 1000)
    assert trace is not None
    packets = [trace.packet]
    if outcome.reply is not None:
        sent = captured[1]
        packets.append(
            ours.reply(trace, outcome.reply, (sent.ts_sec * 10**6 + sent.ts_usec) * 1000)
        )
    return outcome, packets


@pytest.mark.parametrize("exchange", EXCHANGES, ids=str)
def test_request_traces_match_opensips_byte_for_byte(exchange: Exchange) -> None:
    _outcome, packets = _replayed(exchange)
    assert packets[0] == exchange.packets[0].data


@pytest.mark.parametrize("exchange", EXCHANGES, ids=str)
def test_reply_traces_match_opensips(exchange: Exchange) -> None:
    outcome, packets = _replayed(exchange)
    assert len(packets) == len(exchange.packets)  # a notification: no reply, no reply trace
    if outcome.reply is None:
        return
    theirs = hep.decode(exchange.packets[1].data)
    ours = hep.decode(packets[1])
    assert ours.payload == outcome.reply[:MAX_TRACE_FIELD]
    if outcome.reply == exchange.mi_reply:
        assert packets[1] == exchange.packets[1].data
    else:
        # Only the reply differs (uptime's times, the server's name, its statistics).
        assert hep.encode(theirs._replace(payload=ours.payload)) == packets[1]


def test_some_replies_are_identical_to_opensips() -> None:
    identical = [e.case for e in EXCHANGES if _replayed(e)[0].reply == e.mi_reply]
    assert {"unknown_method", "parse_error"} <= set(identical)
