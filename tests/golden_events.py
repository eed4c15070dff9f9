"""The event captures of a real OpenSIPS 3.6.8 (``tests/golden/opensips-3.6/events/``: see
its NOTES.md), read for the tests.

``captures.jsonl`` holds the MI exchanges and the notification datagrams of several runs,
each against a fresh OpenSIPS: the main one (no prefix), ``B_`` (core events), ``C_`` (edge
cases), ``D_`` (summaries), ``E_`` (relative paths). The subscribers the capture bound were
``udp:127.0.0.1:17001`` and ``unix:/run/opensips/sub_unix.sock``; a test binds its own and
puts their names in place of these (``Rename``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from golden_cases import GOLDEN, golden_files

EVENTS_GOLDEN = GOLDEN / "opensips-3.6" / "events"
CAPTURED_UDP = "udp:127.0.0.1:17001"
CAPTURED_UNIX = "unix:/run/opensips/sub_unix.sock"
#: The events of OpenSIPS 3.6.8 with core, mi_datagram and event_datagram, in id order.
CORE_EVENTS = (
    "E_CORE_SR_STATUS_CHANGED",
    "E_CORE_THRESHOLD",
    "E_CORE_SHM_THRESHOLD",
    "E_CORE_PKG_THRESHOLD",
    "E_CORE_PROC_AUTO_SCALE",
    "E_CORE_TCP_DISCONNECT",
    "E_CORE_LOG",
)


@dataclass(frozen=True)
class Exchange:
    """An MI request and OpenSIPS's reply (None: it sent none)."""

    name: str
    request: bytes
    reply: bytes | None


@dataclass(frozen=True)
class Notification:
    """A datagram a subscriber got: its exact bytes (None where only the size was kept)."""

    name: str
    transport: str
    datagram: bytes | None
    size: int | None


def raw_records() -> list[dict[str, Any]]:
    (path,) = golden_files(EVENTS_GOLDEN, "captures.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _datagram(record: dict[str, Any]) -> bytes | None:
    if "datagram_hex" in record:
        return bytes.fromhex(record["datagram_hex"])
    if "datagram" in record:
        return str(record["datagram"]).encode()
    return None


def load_run(prefix: str = "") -> list[Exchange | Notification]:
    """The exchanges and notifications of one run, in capture order (``prefix``: ``""`` for
    the main run, ``"B_"``, ``"C_"``, ``"E_"``). Entries that kept only the head of a large
    request are left out."""
    run: list[Exchange | Notification] = []
    for record in raw_records():
        name = record["name"]
        in_run = name.startswith(prefix) if prefix else name[:2] not in ("B_", "C_", "D_", "E_")
        if not in_run:
            continue
        if "request" in record:
            reply = record["reply"]
            run.append(Exchange(name, record["request"].encode(), reply and reply.encode()))
        elif "transport" in record:
            run.append(
                Notification(name, record["transport"], _datagram(record), record.get("bytes"))
            )
    if not run:
        raise FileNotFoundError(f"no {prefix or 'main'} run in {EVENTS_GOLDEN}")
    return run


def summary(name: str) -> dict[str, Any]:
    """One of the ``*_summary_*`` records."""
    for record in raw_records():
        if record["name"] == name:
            return record
    raise KeyError(name)


@dataclass(frozen=True)
class Rename:
    """The capture's subscriber sockets, as a test's own (in JSON text: quoted)."""

    udp: str
    unix: str

    def __call__(self, data: bytes) -> bytes:
        text = data.decode()
        for theirs, ours in ((CAPTURED_UDP, self.udp), (CAPTURED_UNIX, self.unix)):
            text = text.replace(json.dumps(theirs), json.dumps(ours))
        return text.encode()


def shape(value: Any) -> Any:
    """A reply with each subscriber's ``ttl`` as its type: it varies with the clock."""
    if isinstance(value, dict):
        return {k: type(v).__name__ if k == "ttl" else shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return value
