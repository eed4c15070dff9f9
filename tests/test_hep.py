"""The HEP v3 codec: the spec's example, the worked vectors, real OpenSIPS captures, and
round trips of anything it can encode."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import struct
from typing import Any

import pytest
from golden_hep import Captured, all_packets, canonical
from hypothesis import given
from hypothesis import strategies as st

from midgram.errors import HepError
from midgram.wire import hep
from midgram.wire.hep import Chunk, ChunkType, HepPacket

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

# The HEP3 specification (rev 37), its section "example": 113 bytes of a SIP INVITE.
SPEC_EXAMPLE = bytes.fromhex(
    "484550330071"
    "00000001000702"
    "00000002000711"
    "00000003000ad4ca0001"
    "00000004000a527400d3"
    "0000000700082eea"
    "00000008000813c4"
    "00000009000a4e4982cb"
    "0000000a000a0001d4c0"
    "0000000b000701"
    "0000000c000a000000e4"
    "0000000f0014" + b"INVITE sip:bob".hex()
)

CORRELATION = b"MICORR0gQAAADxU2UqAAAAAAAAAAcAAAA="
REPLY = b'{"jsonrpc":"2.0","error":{"code":404,"message":"AOR not found"},"id":7}'
REQUEST_TEXT = b"ul_show_contact:datagram:location,alice@example.com"
REQUEST_JSON = (
    b'{\n\t"command":\t"ul_show_contact",\n\t"backend":\t"datagram",\n'
    b'\t"parameters":\t"location,alice@example.com"\n}'
)


def _canonical_packet(payload: bytes, *, reply: bool) -> HepPacket:
    """docs/tracing.md, "Worked vectors": client 127.0.0.1:40000, server 127.0.0.1:8080,
    capture id 1."""
    client, server = (V4("127.0.0.1"), 40000), (V4("127.0.0.1"), 8080)
    src, dst = (server, client) if reply else (client, server)
    return HepPacket(
        src_ip=src[0],
        dst_ip=dst[0],
        src_port=src[1],
        dst_port=dst[1],
        ts_sec=1700000000,
        ts_usec=123706 if reply else 123456,
        capture_id=1,
        payload=payload,
        correlation_id=CORRELATION,
    )


def test_spec_example_decodes() -> None:
    assert len(SPEC_EXAMPLE) == 113
    packet = hep.decode(SPEC_EXAMPLE)
    assert packet == HepPacket(
        src_ip=V4("212.202.0.1"),
        dst_ip=V4("82.116.0.211"),
        src_port=12010,
        dst_port=5060,
        ts_sec=1313440459,
        ts_usec=120000,
        capture_id=228,
        payload=b"INVITE sip:bob",
        correlation_id=None,
        proto_type=1,
        ip_proto=17,
    )
    assert packet.family == hep.AF_INET
    # The HEP3 specification puts the addresses before the ports, OpenSIPS after the capture
    # id: the order is free, and ours is OpenSIPS's, so only the chunks' contents compare.
    again = hep.encode(packet)
    assert len(again) == len(SPEC_EXAMPLE)
    assert sorted(hep.decode_chunks(again)) == sorted(hep.decode_chunks(SPEC_EXAMPLE))


@pytest.mark.parametrize(
    ("name", "payload", "reply"),
    [
        ("req_homer5_1", REQUEST_TEXT, False),
        ("req_homer5_0", REQUEST_JSON, False),
        ("rpl_homer5_1", REPLY, True),
        (
            "rpl_homer5_0",
            b'{\n\t"reply":\t"' + REPLY.replace(b'"', b'\\"') + b'"\n}',
            True,
        ),
    ],
)
def test_canonical_vectors_byte_for_byte(name: str, payload: bytes, reply: bool) -> None:
    expected = canonical(name)
    packet = _canonical_packet(payload, reply=reply)
    assert hep.encode(packet) == expected
    assert hep.decode(expected) == packet


def test_canonical_request_layout() -> None:
    """docs/tracing.md, "Worked vectors", chunk by chunk: OpenSIPS's order, sizes and values."""
    chunks = hep.decode_chunks(canonical("req_homer5_0"))
    assert [(c.vendor, c.type, len(c.value)) for c in chunks] == [
        (0, ChunkType.IP_FAMILY, 1),
        (0, ChunkType.IP_PROTO, 1),
        (0, ChunkType.SRC_PORT, 2),
        (0, ChunkType.DST_PORT, 2),
        (0, ChunkType.TS_SEC, 4),
        (0, ChunkType.TS_USEC, 4),
        (0, ChunkType.PROTO_TYPE, 1),
        (0, ChunkType.CAPTURE_ID, 4),
        (0, ChunkType.SRC_IP4, 4),
        (0, ChunkType.DST_IP4, 4),
        (0, ChunkType.PAYLOAD, 102),
        (0, ChunkType.CORRELATION_ID, 34),
    ]
    packet = hep.decode(canonical("req_homer5_0"))
    assert (packet.ip_proto, packet.proto_type) == (hep.IPPROTO_TCP, hep.PROTO_MI) == (6, 0x57)
    assert len(canonical("req_homer5_1")) == 190
    assert len(canonical("rpl_homer5_1")) == 210


# --- real OpenSIPS captures ----------------------------------------------------------------

PACKETS = all_packets()


def _chunk_value(chunk: Chunk, packet: HepPacket) -> Any:
    """The value of a chunk the way the captures' listings write it."""
    fields: dict[int, Any] = {
        ChunkType.IP_FAMILY: packet.family,
        ChunkType.IP_PROTO: packet.ip_proto,
        ChunkType.SRC_PORT: packet.src_port,
        ChunkType.DST_PORT: packet.dst_port,
        ChunkType.TS_SEC: packet.ts_sec,
        ChunkType.TS_USEC: packet.ts_usec,
        ChunkType.PROTO_TYPE: packet.proto_type,
        ChunkType.CAPTURE_ID: packet.capture_id,
        ChunkType.SRC_IP4: str(packet.src_ip),
        ChunkType.DST_IP4: str(packet.dst_ip),
        ChunkType.PAYLOAD: (packet.payload or b"").decode(),
        ChunkType.CORRELATION_ID: (packet.correlation_id or b"").decode(),
    }
    return fields[chunk.type]


@pytest.mark.parametrize("captured", PACKETS, ids=str)
def test_opensips_captures_decode_as_listed(captured: Captured) -> None:
    chunks = hep.decode_chunks(captured.data)
    packet = hep.decode(captured.data)
    listed = [
        {
            "vendor": chunk.vendor,
            "type": chunk.type,
            "name": ChunkType(chunk.type).name.lower(),
            "len": 6 + len(chunk.value),
            "hex": chunk.value.hex(),
            "value": _chunk_value(chunk, packet),
        }
        for chunk in chunks
    ]
    assert listed == captured.chunks


@pytest.mark.parametrize("captured", PACKETS, ids=str)
def test_opensips_captures_re_encode_byte_for_byte(captured: Captured) -> None:
    assert hep.encode(hep.decode(captured.data)) == captured.data


@pytest.mark.parametrize("captured", PACKETS, ids=str)
def test_opensips_captures_are_mi_traces(captured: Captured) -> None:
    packet = hep.decode(captured.data)
    assert (packet.ip_proto, packet.proto_type, packet.capture_id) == (6, 0x57, 1)
    assert packet.correlation_id is not None
    assert packet.correlation_id.startswith(b"MICORR")
    assert len(packet.correlation_id) == 34
    assert packet.extra == ()


# --- errors ------------------------------------------------------------------------------

_GOOD = canonical("req_homer5_1")


def _chunk(kind: int, value: bytes, vendor: int = 0) -> bytes:
    return struct.pack(">HHH", vendor, kind, 6 + len(value)) + value


def _message(body: bytes) -> bytes:
    return b"HEP3" + struct.pack(">H", 6 + len(body)) + body


def _without(kind: ChunkType) -> bytes:
    return hep.encode_chunks(c for c in hep.decode_chunks(_GOOD) if c.type != kind)


def _replaced(kind: ChunkType, value: bytes) -> bytes:
    return hep.encode_chunks(
        Chunk(c.vendor, c.type, value if c.type == kind else c.value)
        for c in hep.decode_chunks(_GOOD)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HEP3", "4 bytes are too few for a HEP3 header"),
        (b"EEP1" + _GOOD[4:], "not a HEP3 message"),
        (_GOOD + b"x", "the header says 190 bytes, the message has 191"),
        (_GOOD[:-1], "the header says 190 bytes, the message has 189"),
        (_message(b"\0\0\0"), "a chunk header at offset 6 is cut short"),
        (_message(_chunk(1, b"\2")[:4] + b"\0\5"), "the chunk at offset 6 has a bad length 5"),
        (_message(_chunk(1, b"\2")[:4] + b"\0\x09"), "the chunk at offset 6 has a bad length 9"),
        (_without(ChunkType.IP_FAMILY), "no ip_family chunk"),
        (_without(ChunkType.CAPTURE_ID), "no capture_id chunk"),
        (_without(ChunkType.SRC_IP4), "no src_ip4 chunk"),
        (_replaced(ChunkType.SRC_PORT, b"\1"), "src_port has 1 bytes, not 2"),
        (_replaced(ChunkType.DST_IP4, b"\1\2\3"), "dst_ip4 has 3 bytes, not 4"),
        (_replaced(ChunkType.IP_FAMILY, b"\1"), "unknown IP family 1"),
        (_replaced(ChunkType.IP_FAMILY, b"\x0a"), "no src_ip6 chunk"),
    ],
)
def test_decode_errors(data: bytes, reason: str) -> None:
    with pytest.raises(HepError, match=reason.replace("(", r"\(")):
        hep.decode(data)


def test_a_repeated_chunk_is_refused() -> None:
    chunks = hep.decode_chunks(_GOOD)
    with pytest.raises(HepError, match="chunk capture_id appears twice"):
        hep.decode(hep.encode_chunks((*chunks, chunks[7])))


def test_encode_errors() -> None:
    packet = _canonical_packet(b"x", reply=False)
    with pytest.raises(HepError, match="src_port 65536 does not fit 2 byte"):
        hep.encode(packet._replace(src_port=65536))
    with pytest.raises(HepError, match="addresses of two IP versions"):
        hep.encode(packet._replace(dst_ip=V6("::1")))
    with pytest.raises(HepError, match="a HEP3 message holds at most 65535 bytes, not 65536"):
        hep.encode_chunks([Chunk(0, ChunkType.PAYLOAD, b"x" * (65536 - 12))])
    assert len(hep.encode_chunks([Chunk(0, ChunkType.PAYLOAD, b"x" * (65535 - 12))])) == 65535


# --- round trips -------------------------------------------------------------------------

_u8 = st.integers(0, 0xFF)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFF_FFFF)
_v4 = st.ip_addresses(v=4)
_v6 = st.ip_addresses(v=6)
_bytes = st.binary(max_size=300)
# The generic chunks a HepPacket holds in its own fields; any other chunk is "extra".
_HELD = {*range(0x01, 0x0D), ChunkType.PAYLOAD, ChunkType.CORRELATION_ID}
_extra = st.builds(Chunk, vendor=_u16, type=_u16, value=_bytes).filter(
    lambda chunk: chunk.vendor != 0 or chunk.type not in _HELD
)


@st.composite
def packets(draw: st.DrawFn) -> HepPacket:
    src, dst = draw(st.sampled_from([(_v4, _v4), (_v6, _v6)]))
    return HepPacket(
        src_ip=draw(src),
        dst_ip=draw(dst),
        src_port=draw(_u16),
        dst_port=draw(_u16),
        ts_sec=draw(_u32),
        ts_usec=draw(_u32),
        capture_id=draw(_u32),
        payload=draw(st.none() | _bytes),
        correlation_id=draw(st.none() | _bytes),
        proto_type=draw(_u8),
        ip_proto=draw(_u8),
        extra=tuple(draw(st.lists(_extra, max_size=3))),
    )


@given(packets())
def test_packets_round_trip(packet: HepPacket) -> None:
    data = hep.encode(packet)
    assert hep.decode(data) == packet
    assert struct.unpack(">H", data[4:6])[0] == len(data)


@given(packets())
def test_a_route_encoder_is_encode(packet: HepPacket) -> None:
    mi = packet._replace(proto_type=hep.PROTO_MI, ip_proto=hep.IPPROTO_TCP, extra=())
    route = hep.route_encoder(mi.src_ip, mi.dst_ip, mi.src_port, mi.dst_port, mi.capture_id)
    for ts_sec, ts_usec in ((mi.ts_sec, mi.ts_usec), (0, 0), (0xFFFF_FFFF, 999_999)):
        expected = mi._replace(ts_sec=ts_sec, ts_usec=ts_usec)
        assert route(ts_sec, ts_usec, mi.payload, mi.correlation_id) == hep.encode(expected)


def test_a_route_encoder_fails_as_encode() -> None:
    packet = _canonical_packet(b"x", reply=False)
    cases = [
        (packet._replace(src_port=65536), (1, 2, b"x", None)),  # refused for every packet
        (packet._replace(dst_ip=V6("::1")), (1, 2, b"x", None)),
        (packet, (2**32, 0, b"x", None)),  # a time out of range
        (packet, (1, -1, b"x", None)),
        (packet, (1, 2, b"x" * 65535, b"c")),  # too long
    ]
    for route_of, (ts_sec, ts_usec, payload, correlation) in cases:
        route = hep.route_encoder(
            route_of.src_ip, route_of.dst_ip, route_of.src_port, route_of.dst_port,
            route_of.capture_id,
        )  # fmt: skip
        whole = route_of._replace(
            ts_sec=ts_sec, ts_usec=ts_usec, payload=payload, correlation_id=correlation
        )
        with pytest.raises(HepError) as expected:
            hep.encode(whole)
        with pytest.raises(HepError, match=re.escape(str(expected.value))):
            route(ts_sec, ts_usec, payload, correlation)


@given(st.lists(st.builds(Chunk, vendor=_u16, type=_u16, value=_bytes), max_size=8))
def test_chunks_round_trip(chunks: list[Chunk]) -> None:
    assert hep.decode_chunks(hep.encode_chunks(chunks)) == tuple(chunks)


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_hep_error(data: bytes) -> None:
    with contextlib.suppress(HepError):
        hep.decode(data)


@given(packets(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_corrupted_packets_raise_only_hep_error(packet: HepPacket, at: int, junk: bytes) -> None:
    data = bytearray(hep.encode(packet))
    at %= len(data)
    data[at : at + len(junk)] = junk
    with contextlib.suppress(HepError):
        hep.decode(bytes(data))
