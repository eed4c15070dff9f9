"""Sans-IO HEP v3 (sipcapture's Homer Encapsulation Protocol): bytes and values only.

::

    "HEP3" | total length (u16) | chunk | chunk | ...
    chunk := vendor (u16) | type (u16) | length (u16, includes these 6 bytes) | payload

All integers are big-endian, addresses are their raw 4 or 16 octets. ``encode`` writes the
chunks in the order OpenSIPS's ``build_hep3_buf`` does for an MI trace (docs/tracing.md,
"What a trace packet holds": family, protocol, ports, time, protocol type, capture id,
addresses, payload, correlation id), so a packet is byte-identical to OpenSIPS's for the same
values; ``decode`` accepts any order, as the HEP spec allows, and keeps chunks it does not
know so that nothing is lost.

No compression, no authentication key, no node name: OpenSIPS sends none of them for MI.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple, TypeAlias

from midgram.errors import HepError

__all__ = [
    "AF_INET",
    "AF_INET6",
    "IPPROTO_TCP",
    "MAGIC",
    "MAX_PACKET",
    "PROTO_MI",
    "Chunk",
    "ChunkType",
    "HepPacket",
    "IPAddress",
    "decode",
    "decode_chunks",
    "encode",
    "encode_chunks",
    "route_encoder",
]

MAGIC: Final = b"HEP3"
#: The total length is a u16: no HEP message is longer (sipcapture/HEP issue #9).
MAX_PACKET: Final = 0xFFFF
#: The chunk vendor of every chunk defined by the HEP spec.
GENERIC: Final = 0x0000
#: Address families as HEP carries them: Linux's AF_INET and AF_INET6.
AF_INET: Final = 2
AF_INET6: Final = 10
#: What OpenSIPS writes as the IP protocol of every MI trace ("FIXME" in its source).
IPPROTO_TCP: Final = 6
#: OpenSIPS's protocol type for MI (hep.c, "not standard").
PROTO_MI: Final = 0x57

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_HEADER: Final = struct.Struct(">4sH")
_CHUNK_HEADER: Final = struct.Struct(">HHH")
_HEADER_SIZE: Final = _HEADER.size
_CHUNK_HEADER_SIZE: Final = _CHUNK_HEADER.size


class ChunkType(enum.IntEnum):
    """The generic chunk types (vendor 0) of HEP3 rev 37 that midgram reads or writes.

    The lower-case member name is the name the golden captures' decoded listings use.
    """

    IP_FAMILY = 0x0001
    IP_PROTO = 0x0002
    SRC_IP4 = 0x0003
    DST_IP4 = 0x0004
    SRC_IP6 = 0x0005
    DST_IP6 = 0x0006
    SRC_PORT = 0x0007
    DST_PORT = 0x0008
    TS_SEC = 0x0009
    TS_USEC = 0x000A
    PROTO_TYPE = 0x000B
    CAPTURE_ID = 0x000C
    KEEP_ALIVE = 0x000D
    AUTH_KEY = 0x000E
    PAYLOAD = 0x000F
    COMPRESSED_PAYLOAD = 0x0010
    CORRELATION_ID = 0x0011
    VLAN_ID = 0x0012
    NODE_NAME = 0x0013


class Chunk(NamedTuple):
    """One chunk as it is on the wire: ``value`` is the payload, without the 6-byte header."""

    vendor: int
    type: int
    value: bytes


def encode_chunks(chunks: Iterable[Chunk]) -> bytes:
    """A HEP3 message made of ``chunks``, in the order given."""
    chunks = tuple(chunks)
    # Checked first: a chunk too long for its own u16 length makes the message too long.
    total = _HEADER_SIZE + sum(_CHUNK_HEADER_SIZE + len(chunk.value) for chunk in chunks)
    if total > MAX_PACKET:
        raise HepError(f"a HEP3 message holds at most {MAX_PACKET} bytes, not {total}")
    body = b"".join(
        _CHUNK_HEADER.pack(vendor, kind, _CHUNK_HEADER_SIZE + len(value)) + value
        for vendor, kind, value in chunks
    )
    return _HEADER.pack(MAGIC, total) + body


def decode_chunks(data: bytes) -> tuple[Chunk, ...]:
    """The chunks of one HEP3 message, in wire order. Raises ``HepError`` if malformed.

    ``data`` must be exactly one message, as one UDP datagram carries.
    """
    if len(data) < _HEADER_SIZE:
        raise HepError(f"{len(data)} bytes are too few for a HEP3 header")
    magic, total = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HepError(f"not a HEP3 message: it starts with {magic!r}")
    if total != len(data):
        raise HepError(f"the header says {total} bytes, the message has {len(data)}")
    chunks = []
    at = _HEADER_SIZE
    while at < total:
        if total - at < _CHUNK_HEADER_SIZE:
            raise HepError(f"a chunk header at offset {at} is cut short")
        vendor, kind, length = _CHUNK_HEADER.unpack_from(data, at)
        if length < _CHUNK_HEADER_SIZE or at + length > total:
            raise HepError(f"the chunk at offset {at} has a bad length {length}")
        chunks.append(Chunk(vendor, kind, data[at + _CHUNK_HEADER_SIZE : at + length]))
        at += length
    return tuple(chunks)


# --- typed chunk values -------------------------------------------------------------------

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")

#: The integer chunks and their layout.
_INTEGERS: Final[Mapping[int, struct.Struct]] = MappingProxyType(
    {
        ChunkType.IP_FAMILY: _U8,
        ChunkType.IP_PROTO: _U8,
        ChunkType.SRC_PORT: _U16,
        ChunkType.DST_PORT: _U16,
        ChunkType.TS_SEC: _U32,
        ChunkType.TS_USEC: _U32,
        ChunkType.PROTO_TYPE: _U8,
        ChunkType.CAPTURE_ID: _U32,
    }
)
_ADDRESSES: Final[Mapping[int, Callable[[bytes], IPAddress]]] = MappingProxyType(
    {
        ChunkType.SRC_IP4: ipaddress.IPv4Address,
        ChunkType.DST_IP4: ipaddress.IPv4Address,
        ChunkType.SRC_IP6: ipaddress.IPv6Address,
        ChunkType.DST_IP6: ipaddress.IPv6Address,
    }
)
_ADDRESS_SIZES: Final[Mapping[int, int]] = MappingProxyType(
    {ChunkType.SRC_IP4: 4, ChunkType.DST_IP4: 4, ChunkType.SRC_IP6: 16, ChunkType.DST_IP6: 16}
)
#: (family chunk value, src chunk, dst chunk) for each IP version.
_BY_VERSION: Final[Mapping[int, tuple[int, ChunkType, ChunkType]]] = MappingProxyType(
    {
        4: (AF_INET, ChunkType.SRC_IP4, ChunkType.DST_IP4),
        6: (AF_INET6, ChunkType.SRC_IP6, ChunkType.DST_IP6),
    }
)
_FAMILY_VERSION: Final[Mapping[int, int]] = MappingProxyType({AF_INET: 4, AF_INET6: 6})
#: The chunks a HepPacket holds in its own fields; any other chunk goes to ``extra``.
_KNOWN: Final = frozenset({*_INTEGERS, *_ADDRESSES, ChunkType.PAYLOAD, ChunkType.CORRELATION_ID})
_REQUIRED: Final = (
    ChunkType.IP_FAMILY,
    ChunkType.IP_PROTO,
    ChunkType.SRC_PORT,
    ChunkType.DST_PORT,
    ChunkType.TS_SEC,
    ChunkType.TS_USEC,
    ChunkType.PROTO_TYPE,
    ChunkType.CAPTURE_ID,
)


class HepPacket(NamedTuple):
    """One captured message as HEP describes it: who sent it to whom, when, and what.

    Both addresses are of one IP version, which gives the family chunk. ``payload`` and
    ``correlation_id`` are None when the packet has no such chunk; ``extra`` holds any
    other chunk, written after the rest. A NamedTuple: the tracer makes two per request.
    """

    src_ip: IPAddress
    dst_ip: IPAddress
    src_port: int
    dst_port: int
    ts_sec: int
    ts_usec: int
    capture_id: int
    payload: bytes | None = None
    correlation_id: bytes | None = None
    proto_type: int = PROTO_MI
    ip_proto: int = IPPROTO_TCP
    extra: tuple[Chunk, ...] = ()

    @property
    def family(self) -> int:
        """2 (IPv4) or 10 (IPv6), as the family chunk carries it."""
        return _BY_VERSION[self.src_ip.version][0]

    def chunks(self) -> tuple[Chunk, ...]:
        """The chunks ``encode`` writes, in OpenSIPS's order."""
        family, src_kind, dst_kind = _BY_VERSION[self.src_ip.version]
        if self.dst_ip.version != self.src_ip.version:
            raise HepError(f"addresses of two IP versions: {self.src_ip} and {self.dst_ip}")
        integers = (
            (ChunkType.IP_FAMILY, family),
            (ChunkType.IP_PROTO, self.ip_proto),
            (ChunkType.SRC_PORT, self.src_port),
            (ChunkType.DST_PORT, self.dst_port),
            (ChunkType.TS_SEC, self.ts_sec),
            (ChunkType.TS_USEC, self.ts_usec),
            (ChunkType.PROTO_TYPE, self.proto_type),
            (ChunkType.CAPTURE_ID, self.capture_id),
        )
        chunks = [Chunk(GENERIC, kind, _pack_int(kind, value)) for kind, value in integers]
        chunks.append(Chunk(GENERIC, src_kind, self.src_ip.packed))
        chunks.append(Chunk(GENERIC, dst_kind, self.dst_ip.packed))
        if self.payload is not None:
            chunks.append(Chunk(GENERIC, ChunkType.PAYLOAD, self.payload))
        if self.correlation_id is not None:
            chunks.append(Chunk(GENERIC, ChunkType.CORRELATION_ID, self.correlation_id))
        chunks.extend(self.extra)
        return tuple(chunks)

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk]) -> HepPacket:
        """The packet these chunks describe; raises ``HepError`` if one is missing,
        repeated, of the wrong size, or the addresses disagree with the family."""
        known: dict[int, bytes] = {}
        extra: list[Chunk] = []
        for chunk in chunks:
            if chunk.vendor != GENERIC or chunk.type not in _KNOWN:
                extra.append(chunk)
                continue
            if chunk.type in known:
                raise HepError(f"chunk {_name(chunk.type)} appears twice")
            known[chunk.type] = chunk.value
        ints = {kind: _unpack_int(kind, known) for kind in _REQUIRED}
        src, dst = _addresses(ints[ChunkType.IP_FAMILY], known)
        return cls(
            src_ip=src,
            dst_ip=dst,
            src_port=ints[ChunkType.SRC_PORT],
            dst_port=ints[ChunkType.DST_PORT],
            ts_sec=ints[ChunkType.TS_SEC],
            ts_usec=ints[ChunkType.TS_USEC],
            capture_id=ints[ChunkType.CAPTURE_ID],
            payload=known.get(ChunkType.PAYLOAD),
            correlation_id=known.get(ChunkType.CORRELATION_ID),
            proto_type=ints[ChunkType.PROTO_TYPE],
            ip_proto=ints[ChunkType.IP_PROTO],
            extra=tuple(extra),
        )


def _name(kind: int) -> str:
    try:
        return ChunkType(kind).name.lower()
    except ValueError:
        return f"0x{kind:04x}"


def _pack_int(kind: ChunkType, value: int) -> bytes:
    layout = _INTEGERS[kind]
    try:
        return layout.pack(value)
    except struct.error as exc:
        raise HepError(f"{_name(kind)} {value} does not fit {layout.size} byte(s)") from exc


def _unpack_int(kind: ChunkType, known: Mapping[int, bytes]) -> int:
    value = known.get(kind)
    if value is None:
        raise HepError(f"no {_name(kind)} chunk")
    layout = _INTEGERS[kind]
    if len(value) != layout.size:
        raise HepError(f"{_name(kind)} has {len(value)} bytes, not {layout.size}")
    number: int = layout.unpack(value)[0]
    return number


def _addresses(family: int, known: Mapping[int, bytes]) -> tuple[IPAddress, IPAddress]:
    version = _FAMILY_VERSION.get(family)
    if version is None:
        raise HepError(f"unknown IP family {family}")
    _family, src_kind, dst_kind = _BY_VERSION[version]
    return _address(src_kind, known), _address(dst_kind, known)


def _address(kind: ChunkType, known: Mapping[int, bytes]) -> IPAddress:
    value = known.get(kind)
    if value is None:
        raise HepError(f"no {_name(kind)} chunk")
    if len(value) != _ADDRESS_SIZES[kind]:
        raise HepError(f"{_name(kind)} has {len(value)} bytes, not {_ADDRESS_SIZES[kind]}")
    return _ADDRESSES[kind](value)


def encode(packet: HepPacket) -> bytes:
    """The packet as OpenSIPS would send it: its chunk order, then ``extra``.

    The reference encoder, chunk by chunk (``HepPacket.chunks``, ``encode_chunks``), which
    also says what does not fit. Its one fast path is ``route_encoder``, which a test holds
    byte-identical to it.
    """
    return encode_chunks(packet.chunks())


def decode(data: bytes) -> HepPacket:
    """One HEP3 message (a UDP datagram) as a ``HepPacket``; raises ``HepError``."""
    return HepPacket.from_chunks(decode_chunks(data))


#: The two time chunks, the only fixed-size fields that change between two packets of a route.
_TIMES: Final = struct.Struct(">HHHIHHHI")
_TIMES_OFFSET: Final = _HEADER_SIZE + 7 + 7 + 8 + 8  # after family, protocol and ports


def route_encoder(
    src_ip: IPAddress,
    dst_ip: IPAddress,
    src_port: int,
    dst_port: int,
    capture_id: int,
) -> Callable[[int, int, bytes | None, bytes | None], bytes]:
    """``encode`` for the packets of one route (same addresses, ports and capture id): a
    function of ``(ts_sec, ts_usec, payload, correlation_id)``, byte-identical to
    ``encode(HepPacket(...))`` (a test holds it), that packs only what changes.

    The fast path of HEP encoding: a tracer sends two packets per request, one each way of
    a route it keeps, and this costs a fraction of building a ``HepPacket`` and encoding it.
    The route's fixed chunks are ``encode``'s own, made once; whatever does not fit is left
    to ``encode``, which raises what it would.
    """
    template = HepPacket(src_ip, dst_ip, src_port, dst_port, 0, 0, capture_id)

    def encode_each(
        ts_sec: int, ts_usec: int, payload: bytes | None, correlation_id: bytes | None
    ) -> bytes:
        return encode(
            template._replace(
                ts_sec=ts_sec, ts_usec=ts_usec, payload=payload, correlation_id=correlation_id
            )
        )

    try:
        fixed = encode(template)  # no payload, no correlation id: the fixed chunks only
    except HepError:
        return encode_each  # each packet raises it, as encode() would
    before = fixed[:_TIMES_OFFSET]  # the header's length is written over (_Shape)
    after = fixed[_TIMES_OFFSET + _TIMES.size :]
    shapes: dict[tuple[int, int], _Shape] = {}

    def encode_route(
        ts_sec: int, ts_usec: int, payload: bytes | None, correlation_id: bytes | None
    ) -> bytes:
        if payload is None or correlation_id is None:  # never, from a tracer
            return encode_each(ts_sec, ts_usec, payload, correlation_id)
        sizes = (len(payload), len(correlation_id))
        shape = shapes.get(sizes)
        if shape is None:
            if len(fixed) + 2 * _CHUNK_HEADER_SIZE + sum(sizes) > MAX_PACKET:
                return encode_each(ts_sec, ts_usec, payload, correlation_id)  # it says why
            if len(shapes) >= _SHAPES_KEPT:
                shapes.clear()
            shape = shapes[sizes] = _Shape.of(before, after, *sizes)
        try:
            return shape.pack(shape.head, ts_sec, shape.middle, ts_usec, shape.tail, payload,
                              shape.correlation, correlation_id)  # fmt: skip
        except struct.error:
            return encode_each(ts_sec, ts_usec, payload, correlation_id)  # it says why

    return encode_route


#: Packet layouts (payload and correlation id sizes) a route encoder keeps: a tracer's
#: request payloads come in a few sizes, its replies' in up to MAX_TRACE_FIELD.
_SHAPES_KEPT: Final = 256


class _Shape(NamedTuple):
    """A route's packets with a payload and a correlation id of given sizes: all but the two
    times and those two values is known, so a packet is one ``pack``."""

    pack: Callable[..., bytes]
    #: The header, the chunks before the times, the first time chunk's header.
    head: bytes
    #: The second time chunk's header.
    middle: bytes
    #: The chunks after the times, the payload chunk's header.
    tail: bytes
    #: The correlation id chunk's header.
    correlation: bytes

    @classmethod
    def of(cls, before: bytes, after: bytes, payload_size: int, correlation_size: int) -> _Shape:
        total = len(before) + _TIMES.size + len(after) + 2 * _CHUNK_HEADER_SIZE
        total += payload_size + correlation_size
        times = _TIMES.pack(GENERIC, ChunkType.TS_SEC, 10, 0, GENERIC, ChunkType.TS_USEC, 10, 0)
        head = _HEADER.pack(MAGIC, total) + before[_HEADER_SIZE:] + times[:_CHUNK_HEADER_SIZE]
        middle = times[_CHUNK_HEADER_SIZE + 4 : 2 * _CHUNK_HEADER_SIZE + 4]
        chunk = _CHUNK_HEADER.pack
        tail = after + chunk(GENERIC, ChunkType.PAYLOAD, _CHUNK_HEADER_SIZE + payload_size)
        correlation = chunk(
            GENERIC, ChunkType.CORRELATION_ID, _CHUNK_HEADER_SIZE + correlation_size
        )
        layout = f">{len(head)}sI{len(middle)}sI{len(tail)}s{payload_size}s"
        layout += f"{len(correlation)}s{correlation_size}s"
        return cls(struct.Struct(layout).pack, head, middle, tail, correlation)
