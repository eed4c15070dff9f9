"""The golden captures of a real OpenSIPS 3.6.8 (``tests/golden/``, see its README), and how
a midgram reply is held against them.

Used by the engine tests (through the Dispatcher) and the server tests (through real
sockets). Each case is compared byte for byte, or by shape where the value varies by nature
(times, pids, versions, counters, the command list), or as one of the deliberate differences
of docs/compatibility.md says: those are listed in ``DIFFERENCES`` with the reason and the
reply we send.

A golden set that is missing or empty is an error, never an empty parameter list: the
oracle is the point of these tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"
OPENSIPS_UNIX = GOLDEN / "opensips-3.6" / "unix"
KAMAILIO_UNIX = GOLDEN / "kamailio-5.6" / "unix"
#: The sets of request/reply files (``NN_case.req`` and ``.rsp``).
REQUEST_SETS = (OPENSIPS_UNIX, KAMAILIO_UNIX)


def golden_files(folder: Path, pattern: str) -> list[Path]:
    """The files of a golden set matching ``pattern``, sorted; an error when there are none."""
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"golden set missing or empty: no {pattern} in {folder}")
    return found


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    reply: bytes | None  # None: the server sent nothing

    def __str__(self) -> str:
        return self.name


def load_cases(folder: Path = OPENSIPS_UNIX) -> list[Case]:
    cases = []
    for req in golden_files(folder, "*.req"):
        rsp = req.with_suffix(".rsp")
        reply = rsp.read_bytes() if rsp.exists() else None
        cases.append(Case(req.stem, req.read_bytes(), reply))
    return cases


_INVALID_NULL = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'

#: docs/compatibility.md, deliberate differences: case -> (reason, the exact reply midgram sends).
DIFFERENCES: dict[str, tuple[str, bytes | None]] = {
    "26_id_object": ("difference 4: a bad id type gets -32600 with id null", _INVALID_NULL),
    "27_id_array": ("difference 4: a bad id type gets -32600 with id null", _INVALID_NULL),
    "28_id_bool": ("difference 4: a bad id type gets -32600 with id null", _INVALID_NULL),
    "44_big_trailing_spaces_70000": (
        "difference 5: an oversize datagram is never executed in part",
        b"400 Parse_error",
    ),
}

#: Cases whose reply differs from OpenSIPS's only in the id (difference 2 and 3).
ID_DIFFERENCES: dict[str, tuple[str, Any]] = {
    "20_id_float": ("difference 3: the reply id is the request's id exactly", 1.5),
    "38_duplicate_id_keys": ("difference 2: with duplicate members the last one wins", 2),
}

_VARYING_RESULTS = {"00_uptime", "02_ps", "03_version"}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


def assert_matches(case: Case, actual: bytes | None) -> None:
    """Fail unless ``actual`` is what midgram must answer to ``case``."""
    if case.name in DIFFERENCES:
        reason, expected = DIFFERENCES[case.name]
        assert actual == expected, f"{case}: {reason}"
        return
    if case.reply is None or actual is None or not case.reply.startswith(b"{"):
        assert actual == case.reply, case.name
        return
    theirs, ours = json.loads(case.reply), json.loads(actual)
    if case.name in ID_DIFFERENCES:
        reason, expected_id = ID_DIFFERENCES[case.name]
        assert ours["id"] == expected_id, f"{case}: {reason}"
        theirs["id"] = expected_id
    assert list(ours) == list(theirs), case.name  # member order: jsonrpc, result|error, id
    assert ours["id"] == theirs["id"], case.name
    if "error" in theirs:
        assert actual == json.dumps(theirs, separators=(",", ":")).encode(), case.name
        return
    _assert_result(case, theirs["result"], ours["result"])


def _assert_result(case: Case, theirs: Any, ours: Any) -> None:
    if case.name == "01_which":
        # Ours lists the commands midgram has, in OpenSIPS's order.
        common = [name for name in theirs if name in ours]
        assert common == [name for name in ours if name in theirs], case.name
        assert len(common) >= 12, case.name
        return
    if case.name == "24_help_which_param":
        theirs = {**theirs, "Help": theirs["Help"].replace("OpenSIPS", "midgram")}
        assert ours == theirs, case.name
        return
    if case.name.startswith(("04_get_statistics", "05_get_statistics")):
        # Counters vary and our groups are our own: "group:name" keys with integer values.
        prefix = "core:" if case.name.startswith("05") else ""
        assert ours, case.name
        assert all(":" in k and k.startswith(prefix) for k in ours), case.name
        assert all(type(v) is int for v in ours.values()), case.name
        return
    if case.name in _VARYING_RESULTS or _is_uptime(theirs):
        assert _shape(ours) == _shape(theirs), case.name
        return
    assert ours == theirs, case.name


def _is_uptime(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == {"Now", "Up since", "Up time"}
