"""Tracing end to end: real ``midgram serve`` processes trace to a UDP collector bound here,
over UDP v4, UDP v6 and UNIX sockets; packets are read by midgram's decoder, held against
the packets a real OpenSIPS sent for the same requests, and read again by hep-js (the last
tests, which skip, saying why, where node and npm are missing)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from golden_cases import golden_files
from golden_hep import HEP_GOLDEN, Exchange, all_exchanges
from hepjs import Decoder, assert_hepjs_agrees, hepjs_decoder
from servers import (
    ANY_UDP,
    ANY_UDP6,
    ROOT,
    RawClient,
    ServerProcess,
    midgram_server,
    server_command,
)
from toolchain import needs_ipv6

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.engine.tracing import cjson_object
from midgram.server.asyncserver import AsyncServer
from midgram.wire import hep

CORRELATION_RE = re.compile(rb"MICORR[A-Za-z0-9+/]{27}=")
UPTIME = b'{"jsonrpc":"2.0","method":"uptime","id":1}'
RECV_TIMEOUT = 10.0
#: Every packet the collectors of this module received, for hep-js to read at the end.
RECEIVED: list[bytes] = []


class Collector:
    """A HEP collector: a UDP socket bound on a free port of ``host``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(RECV_TIMEOUT)
        port = self.sock.getsockname()[1]
        self.target = f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"

    def packets(self, count: int) -> list[bytes]:
        """The next ``count`` packets (fails if they do not come within the timeout)."""
        got = [self.sock.recv(1 << 16) for _ in range(count)]
        RECEIVED.extend(got)
        return got

    def decoded(self, count: int) -> list[hep.HepPacket]:
        return [hep.decode(packet) for packet in self.packets(count)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def traced_server(collector: Collector, *flags: str, socket: str | None = None) -> Any:
    return midgram_server("--trace-to", collector.target, *flags, socket=socket)


def exchange(client: RawClient, request: bytes, *, expect_reply: bool = True) -> bytes | None:
    client.send(request)
    return client.recv(5.0) if expect_reply else None


# --- UDP v4: against the packets a real OpenSIPS sent ----------------------------------------


def _cases() -> list[Exchange]:
    """Each captured case once (4.1dev adds the help cases to 3.6's)."""
    seen: dict[str, Exchange] = {}
    for captured in all_exchanges():
        seen.setdefault(captured.case, captured)
    return list(seen.values())


CASES = _cases()


@pytest.fixture(scope="module")
def udp_v4() -> Iterator[tuple[ServerProcess, Collector]]:
    running = Collector()
    with traced_server(running, "--children", "1", socket=ANY_UDP) as server:
        yield server, running
    running.close()


def _assert_like_opensips(
    ours: bytes, theirs: bytes, *, src_port: int, dst_port: int, payload: bytes
) -> None:
    """Same chunks, order, sizes and values as OpenSIPS's packet, but for the time, the
    ports (``src_port``, ``dst_port``), the correlation id and the payload (``payload``)."""
    our_chunks, their_chunks = hep.decode_chunks(ours), hep.decode_chunks(theirs)
    assert [(c.vendor, c.type) for c in our_chunks] == [(c.vendor, c.type) for c in their_chunks]
    variable = {hep.ChunkType.PAYLOAD}
    assert [len(c.value) for c in our_chunks if c.type not in variable] == [
        len(c.value) for c in their_chunks if c.type not in variable
    ]
    mine, opensips = hep.decode(ours), hep.decode(theirs)
    assert (mine.src_port, mine.dst_port) == (src_port, dst_port)
    assert mine.payload == payload
    assert mine.correlation_id is not None
    assert CORRELATION_RE.fullmatch(mine.correlation_id)
    same = {"src_ip", "dst_ip", "capture_id", "proto_type", "ip_proto", "extra"}
    assert {k: getattr(mine, k) for k in same} == {k: getattr(opensips, k) for k in same}
    assert mine.family == opensips.family


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.case)
def test_udp_v4_traces_are_opensips_packets(
    udp_v4: tuple[ServerProcess, Collector], case: Exchange
) -> None:
    server, collector = udp_v4
    server_port = server.port
    with server.client() as client:
        reply = exchange(client, case.mi_request, expect_reply=case.mi_reply is not None)
        client_port = client.sock.getsockname()[1]
    packets = collector.packets(len(case.packets))
    request, *replies = packets
    _assert_like_opensips(
        request,
        case.packets[0].data,
        src_port=client_port,
        dst_port=server_port,
        payload=hep.decode(case.packets[0].data).payload or b"",
    )
    if replies:
        assert reply is not None
        _assert_like_opensips(
            replies[0],
            case.packets[1].data,
            src_port=server_port,
            dst_port=client_port,
            payload=reply[:128],
        )
        if reply == case.mi_reply:
            assert hep.decode(replies[0]).payload == hep.decode(case.packets[1].data).payload
        assert hep.decode(replies[0]).correlation_id == hep.decode(request).correlation_id


def test_the_notification_reply_is_not_traced(udp_v4: tuple[ServerProcess, Collector]) -> None:
    server, collector = udp_v4
    with server.client() as client:
        exchange(client, b'{"jsonrpc":"2.0","method":"uptime"}', expect_reply=False)
        assert exchange(client, b'{"jsonrpc":"2.0","method":"which","id":1}') is not None
    notification, request, reply = collector.decoded(3)
    # The worker serves in order: had the notification's reply been traced, it would be here.
    assert notification.payload == b"uptime:datagram"
    assert request.payload == b"which:datagram"
    assert reply.payload is not None
    assert reply.payload.startswith(b'{"jsonrpc":"2.0","result":[')
    assert request.correlation_id == reply.correlation_id != notification.correlation_id


def test_an_invalid_notification_is_answered_and_traced(
    udp_v4: tuple[ServerProcess, Collector],
) -> None:
    server, collector = udp_v4
    with server.client() as client:
        reply = exchange(client, b'{"method":"uptime"}')
    assert (
        reply == b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
    )
    request, traced_reply = collector.decoded(2)
    assert request.payload == b"uptime:datagram"
    assert traced_reply.payload == reply


def test_params_and_long_replies(udp_v4: tuple[ServerProcess, Collector]) -> None:
    server, collector = udp_v4
    params = [True, "core:", {"a": 1}, 5.7, "shmem:", None]
    with server.client() as client:
        reply = client.call("get_statistics", params)
        assert "error" in reply  # 6 params: a command error is traced like any reply
        long = client.call("which")
    request, traced_reply, _which, which_reply = collector.decoded(4)
    assert request.payload == b"get_statistics:datagram:,core:,5,shmem:"
    assert traced_reply.payload == orjson.dumps(reply)
    assert len(orjson.dumps(long)) > 128
    assert which_reply.payload == orjson.dumps(long)[:128]


def test_traced_packets_are_counted(udp_v4: tuple[ServerProcess, Collector]) -> None:
    server, collector = udp_v4
    with server.client() as client:
        before = client.call("get_statistics", [["traced"]])["result"]
        after = client.call("get_statistics", [["traced"]])["result"]
    collector.packets(4)
    # The first call's two packets went out before the second call counted them.
    assert after["mi_datagram:traced"] - before["mi_datagram:traced"] == 2


# --- IPv6 and UNIX sockets (docs/compatibility.md, difference 11) ----------------------------


def _ipv6_chunks(packet: bytes) -> tuple[str, str]:
    """The IPv6 addresses, read straight off the wire with the C library (not our decoder)."""
    chunks = {c.type: c.value for c in hep.decode_chunks(packet)}
    return (
        socket.inet_ntop(socket.AF_INET6, chunks[hep.ChunkType.SRC_IP6]),
        socket.inet_ntop(socket.AF_INET6, chunks[hep.ChunkType.DST_IP6]),
    )


@needs_ipv6
@pytest.mark.parametrize("collector_host", ["::1", "127.0.0.1"])
def test_ipv6_clients_are_traced_with_their_address(collector_host: str) -> None:
    collector = Collector(collector_host)
    try:
        with traced_server(collector, "--children", "2", socket=ANY_UDP6) as server:
            port = server.port
            with server.client() as client:
                reply = exchange(client, UPTIME)
                client_port = client.sock.getsockname()[1]
            packets = collector.packets(2)
    finally:
        collector.close()
    request, traced_reply = (hep.decode(packet) for packet in packets)
    assert request.family == traced_reply.family == hep.AF_INET6 == 10
    assert _ipv6_chunks(packets[0]) == ("::1", "::1")
    assert (request.src_port, request.dst_port) == (client_port, port)
    assert (traced_reply.src_port, traced_reply.dst_port) == (port, client_port)
    assert (str(request.src_ip), str(request.dst_ip)) == ("::1", "::1")
    assert request.payload == b"uptime:datagram"
    assert traced_reply.payload == reply
    # 73 fixed bytes, 2 x 22 of IPv6 addresses, the payload chunk, 40 of correlation id.
    assert len(packets[0]) == 73 + 44 + 6 + len(b"uptime:datagram") + 40


def test_unix_clients_are_traced_with_loopback_placeholders(collector: Collector) -> None:
    with traced_server(collector, "--children", "2") as server:
        with server.client() as client:
            reply = exchange(client, UPTIME)
        packets = collector.packets(2)
    request, traced_reply = (hep.decode(packet) for packet in packets)
    assert (request.family, str(request.src_ip), request.src_port) == (2, "127.0.0.1", 0)
    assert (str(request.dst_ip), request.dst_port) == ("127.0.0.2", 0)
    assert (str(traced_reply.src_ip), traced_reply.src_port) == ("127.0.0.2", 0)
    assert (str(traced_reply.dst_ip), traced_reply.dst_port) == ("127.0.0.1", 0)
    assert traced_reply.payload == reply
    assert request.correlation_id == traced_reply.correlation_id


def test_a_reply_that_cannot_be_sent_is_traced_as_an_internal_error(collector: Collector) -> None:
    with traced_server(collector) as server:
        # A UNIX client that did not bind an address cannot be answered (difference 6).
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
            unbound.sendto(UPTIME, server.target)
        request, reply = collector.decoded(2)
    assert request.payload == b"uptime:datagram"
    assert reply.payload == b"500 Internal error"
    assert request.correlation_id == reply.correlation_id


def test_a_batch_of_every_kind_is_traced_in_order(collector: Collector) -> None:
    # The worker is stopped while the datagrams queue up, so that it reads them as one
    # batch: the native loop traces the calls without params itself and hands every other
    # datagram, in turn, to the reference path.
    burst: list[tuple[bytes, bytes | None]] = [  # (datagram, its request trace's payload)
        (UPTIME, b"uptime:datagram"),
        (b'{"jsonrpc":"2.0","method":"which","params":[],"id":2}', b"which:datagram"),
        (b'{"jsonrpc":"2.0","method":"help","params":["uptime"],"id":3}', b"help:datagram:uptime"),
        (b'{"jsonrpc":"2.0","method":"help","params":{"mi_cmd":"ps"},"id":4}', b"help:datagram:ps"),
        (b"not json", b"unknown:datagram"),
        (b'{"jsonrpc":"2.0","method":"uptime"}', b"uptime:datagram"),  # no reply, no trace
        (UPTIME, b"uptime:datagram"),  # from an unbound client: traced as not sent
        (b'{"jsonrpc":"2.0","method":"nope","id":5}', b"nope:datagram"),
        (b'{"jsonrpc":"2.0","method":"uptime","id":8}', b"uptime:datagram"),
    ]
    unbound_at, notification_at = 6, 5
    with traced_server(collector, "--children", "1") as server:
        (worker,) = server.worker_pids()
        collector.packets(2)  # ps's
        with server.client() as client, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as lone:
            os.kill(worker, signal.SIGSTOP)
            try:
                for at, (datagram, _payload) in enumerate(burst):
                    (lone if at == unbound_at else client.sock).sendto(datagram, server.target)
            finally:
                os.kill(worker, signal.SIGCONT)
            replies = [client.recv(5.0) for _ in range(len(burst) - 2)]
        packets = collector.decoded(2 * len(burst) - 1)
    by_id: dict[bytes | None, list[tuple[int, bytes | None]]] = {}
    for index, packet in enumerate(packets):
        by_id.setdefault(packet.correlation_id, []).append((index, packet.payload))
    traces = list(by_id.values())  # in the order of their request traces
    assert [trace[0][1] for trace in traces] == [payload for _datagram, payload in burst]
    expected = iter(replies)
    for at, trace in enumerate(traces):
        if at == notification_at:
            assert len(trace) == 1
            continue
        (request_at, _), (reply_at, traced_reply) = trace
        assert request_at < reply_at
        sent = b"500 Internal error" if at == unbound_at else next(expected)[:128]
        assert traced_reply == sent


def test_pretty_replies_are_traced_as_sent(collector: Collector) -> None:
    with traced_server(collector, "--pretty") as server:
        with server.client() as client:
            reply = exchange(client, UPTIME)
        _request, traced_reply = collector.decoded(2)
    assert reply is not None
    assert reply.startswith(b'{\n\t"jsonrpc":\t"2.0",')
    assert traced_reply.payload == reply[:128]


def test_every_worker_makes_its_own_correlation_ids(collector: Collector) -> None:
    with traced_server(collector, "--children", "3") as server:
        for _ in range(30):
            with server.client() as client:
                assert exchange(client, UPTIME) is not None
        packets = collector.decoded(60)
    pairs: dict[bytes | None, list[bytes | None]] = {}
    for packet in packets:
        pairs.setdefault(packet.correlation_id, []).append(packet.payload)
    assert len(pairs) == 30
    assert all(len(payloads) == 2 for payloads in pairs.values())
    assert all(payloads[0] == b"uptime:datagram" for payloads in pairs.values())


def test_an_in_process_server_traces(collector: Collector) -> None:
    with traced_server(collector, "--children", "0") as server:
        assert server.call("uptime")["result"]
        request, reply = collector.decoded(2)
    assert request.payload == b"uptime:datagram"
    assert request.correlation_id == reply.correlation_id


def test_the_asyncio_server_traces_async_commands(collector: Collector) -> None:
    registry = Registry(module="app")

    @registry.command()
    async def ping(text: str = "pong") -> str:
        await asyncio.sleep(0)
        return text

    settings = Settings(socket_name=ANY_UDP, trace_destination=collector.target)

    async def scenario() -> bytes:
        async with AsyncServer(settings, registry) as server:
            port = int(server.address.rpartition(":")[2])
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.setblocking(False)
                request = b'{"jsonrpc":"2.0","method":"ping","params":["hi"],"id":1}'
                await loop.sock_sendto(client, request, ("127.0.0.1", port))
                return await asyncio.wait_for(loop.sock_recv(client, 65536), 5)

    reply = asyncio.run(scenario())
    request, traced_reply = collector.decoded(2)
    # Unlike OpenSIPS's async commands, midgram's answer at once, so they are traced.
    assert request.payload == b"ping:datagram:hi"
    assert traced_reply.payload == reply == b'{"jsonrpc":"2.0","result":"hi","id":1}'


# --- trace_bwlist, homer5_on, hep_capture_id -------------------------------------------------


def _payloads(collector: Collector, count: int) -> list[bytes | None]:
    return [packet.payload for packet in collector.decoded(count)]


def test_whitelist(collector: Collector) -> None:
    with traced_server(collector, "--trace-bwlist", "w: uptime, which") as server:
        with server.client() as client:
            client.call("ps")  # not traced
            client.call("which", ["uptime"])
            client.call("log_level")  # not traced
            client.call("nope")  # not a command: traced anyway
            assert exchange(client, b"not json") == b"400 Parse_error"
        payloads = _payloads(collector, 6)
    assert payloads[0::2] == [b"which:datagram:uptime", b"nope:datagram", b"unknown:datagram"]
    assert payloads[5] == b"400 Parse_error"


def test_blacklist(collector: Collector) -> None:
    with traced_server(collector, "--trace-bwlist", "b: ps, which") as server:
        with server.client() as client:
            client.call("ps")
            client.call("which")
            client.call("log_level", {"level": 4, "pid": 1})
            client.call("uptime")
        payloads = _payloads(collector, 4)
    assert payloads[0::2] == [b"log_level:datagram:4,1", b"uptime:datagram"]


def test_homer5_off_traces_cjson(collector: Collector) -> None:
    with traced_server(collector, "--no-homer5", "--hep-capture-id", "2001") as server:
        with server.client() as client:
            reply = exchange(client, b'{"jsonrpc":"2.0","method":"which","params":["ps"],"id":"a"}')
        packets = collector.packets(2)
    assert reply is not None
    request, traced_reply = (hep.decode(packet) for packet in packets)
    assert request.payload == (
        b'{\n\t"command":\t"which",\n\t"backend":\t"datagram",\n\t"parameters":\t"ps"\n}'
    )
    assert traced_reply.payload == cjson_object([(b"reply", reply)])
    assert b'\\"jsonrpc\\"' in (traced_reply.payload or b"")
    assert request.capture_id == traced_reply.capture_id == 2001


def test_an_opensips_cfg_configures_tracing(collector: Collector, tmp_path: Path) -> None:
    port = int(collector.target.rpartition(":")[2])
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(
        f"""
loadmodule "proto_hep.so"
socket = hep_udp:127.0.0.1:6061
modparam("proto_hep", "hep_id", "[hep_dst] 127.0.0.1:{port}; transport=udp; version=3")
modparam("proto_hep", "homer5_delim", "|")
modparam("proto_hep", "hep_capture_id", 42)
loadmodule "mi_datagram.so"
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:8080")
modparam("mi_datagram", "trace_destination", "hep_dst")
modparam("mi_datagram", "trace_bwlist", "b: ps")
"""
    )
    with midgram_server("--config", str(cfg)) as server:
        server.call("ps")
        server.call("log_level", [3])
        request, _reply = collector.decoded(2)
    assert request.payload == b"log_level|datagram|3"
    assert request.capture_id == 42


def test_a_toml_hep_id(collector: Collector, tmp_path: Path) -> None:
    port = int(collector.target.rpartition(":")[2])
    config = tmp_path / "midgram.toml"
    config.write_text(
        f'trace_destination = "dst"\nhep_id = ["[dst]127.0.0.1:{port};transport=udp"]\n'
    )
    with midgram_server("--config", str(config)) as server:
        server.call("uptime")
        assert _payloads(collector, 2)[0] == b"uptime:datagram"


def test_every_tracing_parameter_has_its_flag(collector: Collector) -> None:
    """hep_id and homer5_delim, which only a config file gave before the flags were
    generated from the parameter table."""
    port = int(collector.target.rpartition(":")[2])
    hep_id = f"[dst]127.0.0.1:{port};transport=udp"
    flags = ("--hep-id", hep_id, "--trace-to", "dst", "--homer5-delim", "|")
    with midgram_server(*flags) as server:
        server.call("log_level", [3])
        assert _payloads(collector, 2)[0] == b"log_level|datagram|3"


# --- errors at start, and a collector that cannot be reached ---------------------------------


def _refused_start(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command("--socket", "@midgram-trace-test", *flags),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--trace-to", "udp:127.0.0.1:9060", "--trace-bwlist", "w: uptime, no_such_cmd"],
            "trace_bwlist: 'w: uptime, no_such_cmd': can't find mi command [no_such_cmd]!",
        ),
        (["--trace-to", "tcp:127.0.0.1:9060"], "midgram sends HEP over UDP only"),
        (["--trace-to", "hep_dst"], "trace_destination: 'hep_dst': names no hep_id"),
    ],
)
def test_bad_tracing_stops_the_server_at_start(flags: list[str], message: str) -> None:
    done = _refused_start(*flags)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("children", ["0", "1"])
def test_a_bad_trace_bwlist_is_one_error_line(children: str) -> None:
    """Not "stopped" without "listening" first (issue 10 item 15)."""
    flags = ["--trace-to", "udp:127.0.0.1:9060", "--trace-bwlist", "w: no_such_cmd"]
    done = _refused_start(*flags, "--children", children)
    assert done.returncode == 2
    *before, error = done.stderr.splitlines()
    assert error == (
        "midgram: bad value for trace_bwlist: 'w: no_such_cmd': "
        "can't find mi command [no_such_cmd]!"
    )
    # Only the start line (the version, and whether native I/O is on) comes before it.
    assert len(before) == 1
    assert "native I/O:" in before[0]


def test_a_tcp_hep_id_in_an_opensips_cfg_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(
        'modparam("proto_hep", "hep_id", "[hep_dst]10.0.0.2")\n'
        'modparam("mi_datagram", "trace_destination", "hep_dst")\n'
    )
    done = _refused_start("--config", str(cfg))
    assert done.returncode == 2
    assert "sends over TCP" in done.stderr
    assert "add ;transport=udp to it" in done.stderr


def test_an_unresolvable_collector_stops_the_server() -> None:
    done = _refused_start("--trace-to", "udp:no-such-host.invalid:9060")
    assert done.returncode == 4
    assert "failed to resolve no-such-host.invalid" in done.stderr


def test_a_collector_that_refuses_every_packet_never_disturbs_serving() -> None:
    # Sending to the broadcast address without SO_BROADCAST fails (EACCES) every time.
    with midgram_server("--trace-to", "udp:255.255.255.255:9") as server:
        with server.client() as client:
            for _ in range(20):
                assert client.call("uptime")["result"]
            stats = client.call("get_statistics", [["mi_datagram:"]])["result"]
        server.wait_for_log("cannot send a HEP trace to 255.255.255.255:9")
    assert stats["mi_datagram:traced"] == 0
    assert stats["mi_datagram:replied"] >= 20
    assert server.log().count("cannot send a HEP trace") == 1  # rate-limited


def test_without_tracing_nothing_is_traced(collector: Collector) -> None:
    with midgram_server() as server:
        assert server.call("uptime")["result"]
        stats = server.call("get_statistics", [["traced"]])["result"]
    assert stats == {"mi_datagram:traced": 0}
    assert "tracing MI commands" not in server.log()


def test_the_start_log_says_where_traces_go(collector: Collector) -> None:
    with traced_server(collector, "--trace-bwlist", "b: ps") as server:
        server.wait_for_log(f"tracing MI commands to {collector.target} as HEP3 over UDP")
    assert "capture id 1, HOMER 5 text payloads, trace_bwlist 'b: ps'" in server.log()


# --- hep-js, an independent decoder (npm) ----------------------------------------------------


@pytest.fixture(scope="module")
def hepjs() -> Decoder:
    return hepjs_decoder()


def test_hepjs_reads_the_golden_captures_as_we_do(hepjs: Decoder) -> None:
    packets = [path.read_bytes() for path in golden_files(HEP_GOLDEN, "*.bin")]
    for packet, decoded in zip(packets, hepjs(packets), strict=True):
        assert_hepjs_agrees(packet, decoded)


REQUESTS = (
    UPTIME,
    b'{"jsonrpc":"2.0","method":"which","params":["log_level"],"id":"w"}',
    b'{"jsonrpc":"2.0","method":"nope","id":3}',
    b"not json",
)


def _traced_by(collector: Collector, *flags: str, socket: str | None = None) -> list[bytes]:
    with traced_server(collector, *flags, socket=socket) as server:
        with server.client() as client:
            for request in REQUESTS:
                assert exchange(client, request) is not None
        return collector.packets(2 * len(REQUESTS))


@pytest.mark.parametrize(
    ("collector_host", "flags", "socket_name"),
    [
        pytest.param("127.0.0.1", (), ANY_UDP, id="udp-v4"),
        pytest.param("127.0.0.1", ("--no-homer5",), ANY_UDP, id="json"),
        pytest.param("127.0.0.1", (), None, id="unix"),
        pytest.param("::1", (), ANY_UDP6, id="udp-v6", marks=needs_ipv6),
    ],
)
def test_hepjs_reads_what_midgram_sends(
    hepjs: Decoder, collector_host: str, flags: tuple[str, ...], socket_name: str | None
) -> None:
    collector = Collector(collector_host)
    try:
        packets = _traced_by(collector, *flags, socket=socket_name)
    finally:
        collector.close()
    decoded = hepjs(packets)
    for packet, one in zip(packets, decoded, strict=True):
        assert_hepjs_agrees(packet, one)
    first = decoded[0]["rcinfo"]
    assert (first["payloadType"], first["protocol"], first["captureId"]) == (87, 6, 1)
    assert decoded[0]["rcinfo"]["correlation_id"] == decoded[1]["rcinfo"]["correlation_id"]
    if socket_name is None:  # UNIX: the placeholders, as hep-js reads them
        assert (first["srcIp"], first["srcPort"], first["dstIp"], first["dstPort"]) == (
            "127.0.0.1",
            0,
            "127.0.0.2",
            0,
        )
    if collector_host == "::1":
        assert first["protocolFamily"] == 10
        assert "srcIp" not in first  # hep-js has no IPv6 address chunks


def test_hepjs_reads_every_packet_of_this_module(hepjs: Decoder) -> None:
    """Whatever the tests above received (all of it when the whole module runs)."""
    for packet, decoded in zip(RECEIVED, hepjs(RECEIVED), strict=True):
        assert_hepjs_agrees(packet, decoded)
