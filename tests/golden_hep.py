"""The HEP packets captured from real OpenSIPS servers (``tests/golden/hep/``).

Each capture lists, for one MI exchange over UDP, the request and reply datagrams and the HEP
packets OpenSIPS sent for them (``pkt0`` the request trace, ``pkt1`` the reply trace), with
every chunk decoded by an independent tool (``*-decoded.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from golden_cases import GOLDEN, golden_files

HEP_GOLDEN = GOLDEN / "hep"
CAPTURES = ("opensips-3.6-udp", "opensips-4.1dev-udp")


@dataclass(frozen=True)
class Captured:
    """One HEP packet OpenSIPS sent, with its decoded chunk list."""

    capture: str
    case: str
    index: int
    data: bytes
    chunks: list[dict[str, Any]]
    mi_request: bytes
    mi_reply: bytes | None

    def __str__(self) -> str:
        return f"{self.capture}-{self.case}_pkt{self.index}"


@dataclass(frozen=True)
class Exchange:
    """One MI request, its reply, and the HEP packets OpenSIPS traced it with."""

    capture: str
    case: str
    mi_request: bytes
    mi_reply: bytes | None
    packets: tuple[Captured, ...]

    def __str__(self) -> str:
        return f"{self.capture}-{self.case}"


def load_exchanges(capture: str) -> list[Exchange]:
    (listing_file,) = golden_files(HEP_GOLDEN, f"{capture}-decoded.json")
    listing = json.loads(listing_file.read_text())
    if not listing:
        raise ValueError(f"golden set empty: {listing_file} lists no exchange")
    exchanges = []
    for entry in listing:
        request = entry["mi_request"].encode()
        reply = None if entry["mi_reply"] is None else entry["mi_reply"].encode()
        packets = tuple(
            Captured(
                capture,
                entry["case"],
                index,
                (HEP_GOLDEN / f"{capture}-{entry['case']}_pkt{index}.bin").read_bytes(),
                packet["decoded"]["chunks"],
                request,
                reply,
            )
            for index, packet in enumerate(entry["hep_packets"])
        )
        exchanges.append(Exchange(capture, entry["case"], request, reply, packets))
    return exchanges


def all_exchanges() -> list[Exchange]:
    return [exchange for capture in CAPTURES for exchange in load_exchanges(capture)]


def all_packets() -> list[Captured]:
    return [packet for exchange in all_exchanges() for packet in exchange.packets]


def canonical(name: str) -> bytes:
    """A worked vector built to OpenSIPS's rules (docs/tracing.md):
    ``canonical_{req,rpl}_homer5_{0,1}``."""
    return (HEP_GOLDEN / f"canonical_{name}.bin").read_bytes()
