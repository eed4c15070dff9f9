"""The datagram server end to end: real ``midgram serve`` processes, real sockets."""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import re
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from golden_cases import Case, assert_matches, load_cases
from servers import (
    ANY_UDP,
    ANY_UDP6,
    RawClient,
    ServerProcess,
    command_line,
    midgram_server,
    server_command,
    wait_until,
)

CASES = load_cases()
UPTIME = b'{"jsonrpc":"2.0","method":"uptime","id":1}'


@pytest.fixture(scope="module", params=[1, 3], ids=["children1", "children3"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with midgram_server("--children", str(request.param), "--app", "apps:mi") as running:
        yield running


@pytest.mark.parametrize("case", CASES, ids=str)
def test_golden_over_a_unix_socket(server: ServerProcess, case: Case) -> None:
    with server.client() as client:
        reply = client.exchange(case.request, timeout=5.0 if case.reply else 0.5)
    assert_matches(case, reply)


def test_ps_lists_attendant_and_workers(server: ServerProcess) -> None:
    processes = server.call("ps")["result"]["Processes"]
    assert processes[0]["Type"] == "attendant"
    assert processes[0]["PID"] == server.proc.pid
    workers = [p for p in processes if p["Type"] == "MI Datagram"]
    assert len(workers) == len(processes) - 1 >= 1
    assert [p["ID"] for p in processes] == list(range(len(processes)))


def test_statistics_are_summed_over_workers(server: ServerProcess) -> None:
    before = server.call("get_statistics", [["calls"]])["result"]["tests:calls"]
    with server.client() as client:
        for _ in range(20):
            assert client.call("big", [10])["result"] == "x" * 10
    after = server.call("get_statistics", [["calls"]])["result"]["tests:calls"]
    assert after - before == 20
    ours = server.call("get_statistics", [["mi_datagram:"]])["result"]
    assert ours["mi_datagram:received"] >= 20
    assert ours["mi_datagram:replied"] >= 20


def test_log_level_reaches_every_worker(server: ServerProcess) -> None:
    assert server.call("log_level", [4])["result"] == {"New global log level": 4}
    levels = server.call("log_level")["result"]["Processes"]
    assert {p["Log level"] for p in levels} == {4}
    pid = levels[-1]["PID"]
    assert server.call("log_level", [3, pid])["result"] == {"Log level": 3}
    assert server.call("log_level", [3, 1])["error"]["data"] == "Bad PID"
    server.call("log_level", [3])


def test_a_60k_reply_and_the_size_limit(server: ServerProcess) -> None:
    with server.client() as client:
        assert len(client.call("big", [60000])["result"]) == 60000
        limit = 65457 - 19 - len(b'{"jsonrpc":"2.0","result":"","id":1}')
        assert len(client.call("big", [limit])["result"]) == limit
        assert client.exchange(
            b'{"jsonrpc":"2.0","method":"big","params":[%d],"id":1}' % (limit + 1)
        ) == (b"500 Internal error")


# --- UDP, IPv4 and IPv6 ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_udp(host: str) -> None:
    with (
        midgram_server("--children", "2", socket=f"udp:{host}:0") as running,
        running.client() as client,
    ):
        for case in CASES:
            if len(case.request) > 65000:
                continue  # larger than a UDP datagram can be
            reply = client.exchange(case.request, timeout=5.0 if case.reply else 0.5)
            assert_matches(case, reply)


def test_udp_off_loopback_needs_allow_from() -> None:
    refused = subprocess.run(
        server_command("--socket", "udp:0.0.0.0:0"), capture_output=True, timeout=30
    )
    assert refused.returncode == 2
    assert b"socket_name" in refused.stderr
    assert b"allow" in refused.stderr


def test_allow_from_filters_senders() -> None:
    flags = ("--allow-from", "10.0.0.0/8", "--children", "0")
    with midgram_server(*flags, socket="udp:0.0.0.0:0") as running:
        with RawClient(f"udp:127.0.0.1:{running.port}") as client:
            assert client.exchange(UPTIME, timeout=0.5) is None
        running.wait_for_log("not in allow_from")
    with (
        midgram_server("--allow-from", "127.0.0.0/8", socket="udp:0.0.0.0:0") as running,
        RawClient(f"udp:127.0.0.1:{running.port}") as client,
    ):
        assert client.call("uptime")["result"]


@pytest.mark.parametrize("socket_name", [ANY_UDP, ANY_UDP6, "udp:localhost:0"])
def test_port_0_listens_on_a_free_port_and_names_it(socket_name: str) -> None:
    """docs/compatibility.md, difference 29. ``midgram_server`` took the port from the
    banner (``servers._bound``: the host asked for, a port that is not 0)."""
    with midgram_server("--children", "2", socket=socket_name) as running:
        assert running.call("uptime")["result"]
        assert f"INFO midgram.server.wiring: listening on {running.target} (2 worker(s))" in (
            running.log()
        )
        named = [
            f"midgram: attendant {running.target}",
            f"midgram: worker 1 {running.target}",
            f"midgram: worker 2 {running.target}",
        ]
        # A worker is forked with the attendant's title and names itself a moment later.
        wait_until(
            lambda: [command_line(p) for p in [running.proc.pid, *running.worker_pids()]] == named,
            what="the processes' titles",
        )


# --- the socket file -------------------------------------------------------------------------


def test_default_permissions_and_cleanup() -> None:
    with midgram_server() as running:
        info = os.stat(running.target)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        path = running.target
        assert running.stop() == 0
    assert not os.path.exists(path)


def test_mode_user_and_group() -> None:
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    with midgram_server("--mode", "0640", "--user", "nobody") as running:
        info = os.stat(running.target)
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert running.call("uptime")["result"]
    with midgram_server("--mode", "0", "--group", nogroup) as running:
        info = os.stat(running.target)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert (info.st_uid, info.st_gid) == (os.getuid(), grp.getgrnam(nogroup).gr_gid)
        running.wait_for_log("0600")


def test_stale_socket_is_replaced_and_live_one_refused(folder: Path) -> None:
    path = f"{folder}/mi.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: stale
    with midgram_server(socket=path) as running:
        assert running.call("uptime")["result"]
        second = subprocess.run(server_command("--socket", path), capture_output=True, timeout=30)
        assert second.returncode != 0
        assert b"another server" in second.stderr
        assert running.call("uptime")["result"]  # the first one still has its socket


def test_regular_file_is_never_replaced(folder: Path) -> None:
    path = f"{folder}/mi.sock"
    with open(path, "w") as handle:
        handle.write("precious")
    refused = subprocess.run(server_command("--socket", path), capture_output=True, timeout=30)
    assert refused.returncode != 0
    with open(path) as handle:
        assert handle.read() == "precious"


@pytest.mark.parametrize(
    ("flags", "parameter"),
    [
        (["--children", "-1"], "children_count"),
        (["--socket", "udp:127.0.0.1:80"], "socket_name"),
        (["--mode", "999"], "unix_socket_mode"),
        (["--timeout", "-5"], "socket_timeout"),
        (["--buf-size", "10"], "socket_buf_size"),
        (["--user", "no-such-user-here"], "unix_socket_user"),
    ],
)
def test_bad_values_are_refused_at_start(flags: list[str], parameter: str, folder: Path) -> None:
    command = server_command("--socket", f"{folder}/mi.sock", *flags)
    refused = subprocess.run(command, capture_output=True, timeout=30)
    assert refused.returncode == 2, refused.stderr
    assert parameter.encode() in refused.stderr


# --- faults ----------------------------------------------------------------------------------


def test_full_client_queue_gets_its_replies_when_it_drains() -> None:
    with midgram_server("--children", "1", "--timeout", "10000") as running:
        slow_reader = running.client()
        count = 300  # far more than a UNIX datagram queue holds (max_dgram_qlen)
        for i in range(count):
            slow_reader.send(b'{"jsonrpc":"2.0","method":"pwd","id":%d}' % i)
        # Meanwhile the worker keeps serving everyone else.
        assert running.call("uptime")["result"]
        pending = running.call("get_statistics", [["mi_datagram:"]])["result"]
        assert pending["mi_datagram:dropped_replies"] == 0
        ids = []
        while len(ids) < count:
            reply = slow_reader.recv(timeout=10)
            assert reply is not None, f"only {len(ids)} of {count} replies arrived"
            ids.append(json.loads(reply)["id"])
        assert ids == list(range(count))  # every reply, in order
        slow_reader.close()


def test_vanished_and_unbound_clients_cost_nothing() -> None:
    with midgram_server("--children", "1") as running:
        for _ in range(5):
            gone = RawClient(running.target)
            gone.send(UPTIME)
            gone.close()
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        unbound.sendto(UPTIME, running.target)
        unbound.close()
        assert running.call("uptime")["result"]
        wait_until(
            lambda: (
                running.call("get_statistics", [["dropped_replies"]])["result"][
                    "mi_datagram:dropped_replies"
                ]
                >= 6
            ),
            what="the drops to be counted",
        )


def test_connected_client_gets_its_reply() -> None:
    with midgram_server() as running:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind("\0mgtest-connected-" + str(os.getpid()))
        client.connect(running.target)
        client.settimeout(5)
        client.send(UPTIME)
        assert json.loads(client.recv(65536))["result"]
        client.close()


def test_killed_worker_is_restarted_under_load() -> None:
    with midgram_server("--children", "2") as running:
        stop = threading.Event()
        answered: list[int] = []

        def load() -> None:
            # Requests in the killed worker's hands may be lost; the rest keep flowing.
            with running.client() as client:
                while not stop.is_set():
                    if client.exchange(UPTIME, timeout=0.5) is not None:
                        answered.append(1)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(answered) > 50, what="load to flow")
            before = running.worker_pids()
            os.kill(before[0], signal.SIGKILL)
            after = wait_until(
                lambda: (
                    (pids := running.worker_pids_if_answered())
                    and before[0] not in pids
                    and len(pids) == 2
                    and pids
                ),
                what="the worker to be restarted",
            )
            assert before[1] in after
            with running.client() as client:
                for i in range(100):  # every request after the restart is answered
                    assert client.call("uptime", req_id=i)["id"] == i
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        running.wait_for_log("was killed by SIGKILL")


def test_sigterm_answers_the_request_in_hand() -> None:
    with midgram_server("--children", "1", "--app", "apps:mi") as running:
        client = running.client()
        client.send(b'{"jsonrpc":"2.0","method":"slow","params":[0.5],"id":7}')
        running.wait_for_log("slow command started")
        running.proc.send_signal(signal.SIGTERM)
        reply = client.recv(timeout=10)
        assert reply is not None
        assert json.loads(reply) == {"jsonrpc": "2.0", "result": {"slept": 0.5}, "id": 7}
        assert running.proc.wait(15) == 0
        assert not os.path.exists(running.target)
        client.close()


def test_sigterm_under_load_leaves_no_read_request_unanswered() -> None:
    with midgram_server("--children", "2") as running:
        answered: list[int] = []
        probes: list[int] = []

        def client_loop() -> None:
            with running.client() as client:
                while True:
                    try:
                        client.send(UPTIME)
                    except OSError:
                        return  # the server and its socket are gone
                    if client.recv(timeout=2.0) is None:
                        return  # sent as the server stopped: never read
                    answered.append(1)

        def received() -> int:
            probes.append(1)
            stats = running.call("get_statistics", [["received"]])["result"]
            return int(stats["mi_datagram:received"])

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: received() > 300, what="load to flow")
        running.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        assert running.proc.wait(15) == 0
        running.wait_for_log("served ")
        served = re.search(
            r"served (\d+) datagrams: (\d+) replies sent, (\d+) dropped", running.log()
        )
        assert served is not None
        count, sent, dropped = map(int, served.groups())
        assert (count, sent, dropped) == (count, count, 0)  # every read request answered
        assert len(answered) + len(probes) == sent  # and every answer arrived
        assert not os.path.exists(running.target)


def test_kill_command_stops_the_server() -> None:
    with midgram_server("--children", "2") as running:
        assert running.call("kill")["result"] == "OK"
        assert running.proc.wait(15) == 0
        assert not os.path.exists(running.target)


def test_children_count_zero_serves_in_process() -> None:
    with midgram_server("--children", "0") as running:
        processes = running.call("ps")["result"]["Processes"]
        assert [p["PID"] for p in processes] == [running.proc.pid]
        assert running.call("kill")["result"] == "OK"
        assert running.proc.wait(15) == 0


def test_concurrent_clients_are_all_answered() -> None:
    with midgram_server("--children", "2") as running:
        failures: list[str] = []

        def hammer(n: int) -> None:
            with running.client() as client:
                for i in range(100):
                    reply = client.call("uptime", req_id=f"{n}-{i}")
                    if reply["id"] != f"{n}-{i}":
                        failures.append(str(reply))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures


def test_garbage_never_hurts_the_server() -> None:
    """Random bytes, broken JSON, wrong types, huge and empty datagrams: every one gets a
    reply, a plain-text error or nothing, and the workers stay up."""
    rng = random.Random(20261126)
    samples = [
        b"",
        b"\0",
        b"{" * 5000,
        b"[" * 100000,
        b'{"jsonrpc":"2.0","method":"which","params":[[[[[]]]]],"id":1}',
        b'{"jsonrpc":"2.0","method":"get_statistics","params":{"statistics":[{}]},"id":2}',
        b'{"jsonrpc":"2.0","method":"log_level","params":["1e400"],"id":3}',
        b'{"jsonrpc":"2.0","method":"log_level","params":[1e308, 1],"id":4}',
        b'{"jsonrpc":"2.0","method":"help","params":[null],"id":5}',
        *(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(200)),
    ]
    with midgram_server("--children", "2") as running:
        pids = running.worker_pids()
        with running.client() as client:
            for sample in samples:
                client.send(sample)
            # Drain what came back: every reply is JSON-RPC or one of the plain-text errors.
            while (reply := client.recv(timeout=1.0)) is not None:
                assert reply in (b"400 Parse_error", b"500 Internal error") or (
                    json.loads(reply)["jsonrpc"] == "2.0"
                )
            assert client.call("uptime")["result"]
        assert running.worker_pids() == pids
