"""OpenSIPS 3.6.8's event captures replayed against a real midgram server, in order, on real
sockets: the MI exchanges of ``events_list``, ``event_subscribe``, ``subscribers_list`` and
``raise_event``, and the notification datagrams the subscribers received.

The server serves the 7 events OpenSIPS's core publishes, in its order (``apps:opensips_events``),
with ``children_count`` 0 (so it publishes no event of its own). The test binds its own
subscribers and renames the capture's (``udp:127.0.0.1:17001``, ``/run/opensips/...``) to
them. Each reply is compared byte for byte, ``ttl`` aside (it varies with the clock); each
raise's notifications by their exact bytes, on UDP and UNIX.

Where midgram answers otherwise on purpose, the case is in ``DIFFERENCES`` with the number
of the difference (docs/compatibility.md) and what midgram sends; each difference also has
its own test in tests/test_events_server.py. After a case where OpenSIPS's state went wrong
(a prefix taken for the same subscriber), ``REALIGN`` brings midgram's subscriptions to the
state OpenSIPS's were left in, with ordinary requests, so the rest of the run still
compares byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datagrams import Sockets, drain
from golden_events import Exchange, Notification, load_run
from servers import (
    ROOT,
    ServerProcess,
    midgram_server,
    server_command,
    started_server,
    wait_until,
)

#: ``ttl`` varies with the clock (an int, or "expired" in a subscription's last second).
_TTL = re.compile(rb'"ttl":(-?\d+|"expired")')


def _masked(reply: bytes) -> bytes:
    return _TTL.sub(b'"ttl":T', reply)


@dataclass(frozen=True)
class Midgram:
    """What midgram answers instead of OpenSIPS (in the capture's names, renamed like it)."""

    difference: int
    reply: str | None = None  # None: OpenSIPS's reply
    notifications: tuple[tuple[str, str], ...] | None = None  # (transport, datagram)


def _array_params(event: str, *items: str) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "method": event, "params": list(items)}, separators=(",", ":")
    )


def _both(datagram: str) -> tuple[tuple[str, str], ...]:
    return (("udp", datagram), ("unix", datagram))


_THRESHOLD = "E_CORE_THRESHOLD"
_UDP = "udp:127.0.0.1:17001"
_UNIX = "unix:/run/opensips/sub_unix.sock"

_OK_39 = '{"jsonrpc":"2.0","result":"OK","id":39}'
_OK_40 = '{"jsonrpc":"2.0","result":"OK","id":40}'

DIFFERENCES: dict[str, Midgram] = {
    # Difference 26: non-scalar values as their JSON text; "{}" sends no params.
    "raise_event_json_string_params_nonscalar": Midgram(
        26,
        notifications=_both(
            '{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":{"t":"true","f":"false",'
            '"n":"null","arr":"[1,2]","obj":"{\\"k\\":\\"v\\"}"}}'
        ),
    ),
    "raise_event_json_string_params_empty_object": Midgram(
        26, notifications=_both('{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD"}')
    ),
    # Difference 25: array params as an array, not an object with empty names.
    "raise_event_array_params_named": Midgram(
        25, notifications=_both(_array_params(_THRESHOLD, "x", "y"))
    ),
    "raise_event_array_params_positional_mixed": Midgram(
        25, notifications=_both(_array_params(_THRESHOLD, "s", "42", "-1", "1"))
    ),
    "raise_event_array_params_single": Midgram(
        25, notifications=_both(_array_params(_THRESHOLD, "only"))
    ),
    "raise_event_notification_no_id": Midgram(
        25, notifications=_both(_array_params(_THRESHOLD, "no-id"))
    ),
    # Difference 24: a prefix of a subscriber's path is another path.
    "subscribers_list_lookup_by_prefix": Midgram(
        24,
        reply=(
            '{"jsonrpc":"2.0","error":{"code":404,"message":"Subscriber does not exist"},"id":94}'
        ),
    ),
    # Difference 23: IPv6 subscribers work.
    "event_subscribe_bad_socket[udp:[::1]:17001]": Midgram(23, reply=_OK_39),
    "event_subscribe_bad_socket[udp:::1:17001]": Midgram(23, reply=_OK_40),
    # Difference 23: a port beyond 65535 is refused, not wrapped.
    "subscribe_udp_port_70000": Midgram(
        23, reply='{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value"},"id":99}'
    ),
    # Difference 22: expire 0 unsubscribes at once; a fresh expire 0 subscribes nobody.
    "subscribers_list_right_after_expire0": Midgram(
        22,
        reply=(
            '{"jsonrpc":"2.0","result":{"Event":{"name":"E_CORE_THRESHOLD","id":1,"Subscribers":'
            '[{"socket":"unix:/run/opensips/sub_unix.sock","expire":77,"ttl":T},'
            '{"socket":"udp:127.0.0.1:17001","expire":99,"ttl":T}]}},"id":102}'
        ),
    ),
    "raise_event_right_after_expire0": Midgram(
        22, notifications=_both(_array_params(_THRESHOLD, "same-second"))
    ),
    "subscribers_list_shm_after_fresh_expire0": Midgram(
        22, reply='{"jsonrpc":"2.0","result":{"Event":{}},"id":107}'
    ),
    # Difference 22: a subscription that expired is not raised to (OpenSIPS answers OK once).
    "raise_event_expire2_after_expiry": Midgram(
        22,
        reply='{"jsonrpc":"2.0","error":{"code":480,"message":"Temporarily Unavailable"},"id":113}',
    ),
}

_DANGEROUS = ("unix_path_150", "unix_path_300", "unix_no_colon", "udp_no_colon")
_ARRAY_AB = _array_params(_THRESHOLD, "a", "b")
DIFFERENCES.update(
    {
        # Difference 25, in a fresh process: OpenSIPS sends {"":"a","":"b"} every time.
        **{
            f"C_raise_array_repeat_{n}": Midgram(25, notifications=(("udp", _ARRAY_AB),))
            for n in range(5)
        },
        "C_raise_array_after_json": Midgram(25, notifications=(("udp", _ARRAY_AB),)),
        # Difference 27: the text does not depend on the error before.
        "C_subscribe_empty_event_after_empty_array": Midgram(
            27,
            reply=(
                '{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
                '"data":"Bad type for parameter \'event\'"},"id":12}'
            ),
        ),
        # Difference 23: paths longer than sun_path refused; so nobody is subscribed to
        # E_CORE_PKG_THRESHOLD in the rest of the run.
        "C_subscribe_dangerous[unix_path_150]": Midgram(
            23,
            reply='{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value"},"id":20}',
        ),
        "C_subscribe_dangerous[unix_path_300]": Midgram(
            23,
            reply='{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value"},"id":25}',
        ),
        **{
            f"C_subscribers_list_after[{case}]": Midgram(
                23, reply=f'{{"jsonrpc":"2.0","result":{{"Event":{{}}}},"id":{req_id}}}'
            )
            for case, req_id in zip(_DANGEROUS, (22, 27, 32, 37), strict=True)
        },
        **{
            f"C_raise_after[{case}]": Midgram(
                23,
                reply=(
                    '{"jsonrpc":"2.0","error":{"code":480,"message":"Temporarily Unavailable"},'
                    f'"id":{req_id}}}'
                ),
            )
            for case, req_id in zip(_DANGEROUS, (23, 28, 33, 38), strict=True)
        },
    }
)

#: Requests sent after a case, to give midgram the subscriptions OpenSIPS was left with.
REALIGN: dict[str, list[list[Any]]] = {
    # OpenSIPS can have no IPv6 subscriber: unsubscribed.
    "event_subscribe_bad_socket[udp:[::1]:17001]": [[_THRESHOLD, "udp:[::1]:17001", 0]],
    "event_subscribe_bad_socket[udp:::1:17001]": [[_THRESHOLD, "udp:[::1]:17001", 0]],
    # OpenSIPS renewed sub_unix.sock for "sub_unix.so" (a prefix); midgram subscribed the
    # path given. Unsubscribed, and the .sock renewed as OpenSIPS did.
    "subscribe_unix_prefix_of_existing": [
        [_THRESHOLD, "unix:/run/opensips/sub_unix.so", 0],
        [_THRESHOLD, _UNIX, 77],
    ],
    # OpenSIPS renewed 127.0.0.10 for 127.0.0.1 (a prefix): one subscriber, not two.
    "subscribe_udp_127.0.0.1_after_127.0.0.10": [
        ["E_CORE_PKG_THRESHOLD", "udp:127.0.0.1:17002", 0],
        ["E_CORE_PKG_THRESHOLD", "udp:127.0.0.10:17002", 400],
    ],
    # OpenSIPS took port 70000 as 4464.
    "subscribe_udp_port_70000": [["E_CORE_PKG_THRESHOLD", "udp:127.0.0.1:4464", 300]],
}

#: Cases whose outcome needs time to pass: (the case whose reply starts the clock, the
#: whole seconds after that second by which the case is sent).
WAIT_AFTER: dict[str, tuple[str, int]] = {
    # expire 2: gone once since + 2 < now.
    "raise_event_expire2_after_expiry": ("subscribe_proc_auto_scale_unix_expire2", 3),
    # expire 1.
    "subscribers_list_event_after_expire1": ("subscribe_tcp_disconnect_udp_expire1", 2),
    # "2 s later": only ttl shows it, masked; no wait needed.
}

#: Cases of the capture not replayed, and why.
NOT_REPLAYED = {
    # OpenSIPS's whole command list; midgram's own is checked by test_builtins.
    "which_all",
}


@dataclass
class Subscribers:
    """The test's subscriber sockets, named as the capture's."""

    folder: Path
    udp: dict[str, socket.socket] = field(default_factory=dict)
    unix: list[socket.socket] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def rename(self, text: str) -> str:
        text = text.replace("udp:localhost:17001", f"udp:localhost:{self.ports['localhost']}")
        for captured in ("17001", "17002", "17099", "17555"):
            text = text.replace(f":{captured}", f":{self.ports[captured]}")
        return text.replace("/run/opensips/", f"{self.folder}/")

    def drain(self) -> list[tuple[str, bytes]]:
        """Every datagram waiting on the subscribers, with its transport."""
        sockets = [("udp", s) for s in self.udp.values()] + [("unix", s) for s in self.unix]
        return [(transport, data) for transport, sock in sockets for data in drain(sock)]


def subscribers(sockets: Sockets) -> Subscribers:
    """The capture's subscribers, as the test's own sockets (closed with ``sockets``)."""
    folder = Path(sockets.folder)
    subs = Subscribers(folder)
    for name, host in (
        ("17001", "127.0.0.1"),
        ("localhost", "127.0.0.1"),  # udp:localhost:17001: its own port (difference 24)
        ("17002", "127.0.0.1"),
        ("17002.10", "127.0.0.10"),  # the same port as 17002, on 127.0.0.10
    ):
        key = name.split(".")[0]
        sock = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.bind((host, subs.ports.get(key, 0)))
        subs.udp[name] = sock
        subs.ports.setdefault(key, sock.getsockname()[1])
    subs.ports["17099"] = sockets.unanswered()  # nobody listens there
    subs.ports["17555"] = sockets.unanswered()
    # sub_unix.sock, and rel.sock: the E_ run's relative path
    subs.unix = [sockets.unix("sub_unix.sock"), sockets.unix("rel.sock")]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(str(folder / "stale.sock"))  # bound, then closed
    (folder / "regular_file").write_text("not a socket\n")
    return subs


def _steps(run: str = "") -> list[tuple[Exchange, list[Notification]]]:
    """A run's exchanges, each with the notifications that followed it (the size-only ones,
    whose requests the capture did not keep, aside: test_events_server sends those)."""
    steps: list[tuple[Exchange, list[Notification]]] = []
    for item in load_run(run):
        if isinstance(item, Exchange):
            steps.append((item, []))
        elif item.datagram is not None:
            steps[-1][1].append(item)
    return steps


def _expected_notifications(
    subs: Subscribers, exchange: Exchange, captured: list[Notification]
) -> list[tuple[str, bytes]]:
    midgram = DIFFERENCES.get(exchange.name)
    if midgram is not None and midgram.notifications is not None:
        pairs = [(t, d.encode()) for t, d in midgram.notifications]
    else:
        pairs = [(n.transport, n.datagram or b"") for n in captured]
    return sorted((t, subs.rename(d.decode()).encode()) for t, d in pairs)


def _expected_reply(subs: Subscribers, exchange: Exchange) -> bytes | None:
    midgram = DIFFERENCES.get(exchange.name)
    if midgram is not None and midgram.reply is not None:
        return subs.rename(midgram.reply).encode()
    return None if exchange.reply is None else subs.rename(exchange.reply.decode()).encode()


def _wait_for_second(second: int) -> None:
    wait_until(lambda: time.time() >= second, 5.0, f"the clock to reach {second}")


def replay(run: str, server: ServerProcess, subs: Subscribers) -> None:
    """Send a run's requests in order; hold each reply and each raise's notifications to the
    capture (or to ``DIFFERENCES``)."""
    clocks: dict[str, int] = {}
    with server.client() as client:
        for exchange, captured in _steps(run):
            if exchange.name in NOT_REPLAYED:
                continue
            if exchange.name in WAIT_AFTER:
                start, seconds = WAIT_AFTER[exchange.name]
                _wait_for_second(clocks[start] + seconds)
            expected = _expected_reply(subs, exchange)
            request = subs.rename(exchange.request.decode()).encode()
            if expected is None:
                client.send(request)
                # No reply: the next request's reply is the next datagram.
                sync = client.exchange(b'{"jsonrpc":"2.0","method":"events_list","id":"sync"}')
                assert sync is not None, exchange.name
                assert sync.endswith(b'"id":"sync"}'), exchange.name
            else:
                reply = client.exchange(request)
                assert reply is not None, f"{exchange.name}: no reply"
                clocks[exchange.name] = int(time.time())
                assert _masked(reply) == _masked(expected), exchange.name
            want = _expected_notifications(subs, exchange, captured)
            # Sent before the reply (or the sync's): all there now, nothing after.
            assert sorted(subs.drain()) == want, exchange.name
            for params in REALIGN.get(exchange.name, []):
                renamed = json.loads(subs.rename(json.dumps(params)))
                realigned = client.call("event_subscribe", renamed)
                assert realigned["result"] == "OK", (exchange.name, realigned)


def test_the_main_run_replays(sockets: Sockets) -> None:
    with midgram_server("--children", "0", "--app", "apps:opensips_events") as server:
        replay("", server, subscribers(sockets))


def test_the_edge_cases_run_replays(sockets: Sockets) -> None:
    """Run C: OpenSIPS's stale states (array params, error texts), notifications without an
    id, dangerous socket strings, and events_list still answered after each."""
    with midgram_server("--children", "0", "--app", "apps:opensips_events") as server:
        replay("C_", server, subscribers(sockets))


def test_the_relative_path_run_replays(folder: Path, sockets: Sockets) -> None:
    """Run E: a relative UNIX path is relative to the server's working directory."""
    target = str(folder / "mi.sock")
    command = server_command("--socket", target, "--children", "0", "--app", "apps:opensips_events")
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    with started_server(command, target, folder=str(folder), cwd=folder, env=environment) as server:
        replay("E_", server, subscribers(sockets))


def test_every_difference_is_a_case_of_a_run() -> None:
    names = {exchange.name for run in ("", "C_", "E_") for exchange, _ in _steps(run)}
    assert set(DIFFERENCES) | set(REALIGN) | set(WAIT_AFTER) | NOT_REPLAYED <= names
