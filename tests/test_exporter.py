"""``midgram exporter`` against real servers: midgram (several workers), a dead target,
Kamailio, more statistics than a datagram holds; checked by promtool and a real Prometheus."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from apps import BULK_GROUPS, BULK_PER_GROUP, WIDE_STATS, WIDE_VALUE
from apps import mi as tests_app
from exporters import (
    PROMETHEUS,
    PROMETHEUS_MISSING,
    PROMTOOL,
    PROMTOOL_MISSING,
    exporter_command,
    running_exporter,
    samples,
    types,
    value,
)
from kamailio import KAMAILIO, KAMAILIO_MISSING, kamailio_server
from servers import ROOT, ServerProcess, midgram_server, short_tmpdir, wait_until

needs_kamailio = pytest.mark.skipif(KAMAILIO is None, reason=KAMAILIO_MISSING)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=PROMTOOL_MISSING)


@pytest.fixture(scope="module")
def dead() -> str:
    """A socket path nobody listens on."""
    return f"{short_tmpdir()}/nobody.sock"


def _big(midgram: ServerProcess) -> None:
    """One real call of a command that counts in tests:calls."""
    assert midgram.call("big", {"size": 1})["result"] == "x"


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def test_metrics_reports_every_target_and_a_dead_one_as_down(
    midgram: ServerProcess, dead: str
) -> None:
    with running_exporter("-t", midgram.target, "-t", dead) as exporter:
        status, text = exporter.get("/metrics")
    assert status == 200
    found = samples(text)
    assert value(found, "opensips_up", target=midgram.target) == 1
    assert value(found, "opensips_up", target=dead) == 0
    # The live one is reported in full, the dead one only by its up and duration.
    assert value(found, "opensips_processes_listed", target=midgram.target) == 3  # 2 + supervisor
    assert value(found, "opensips_uptime_seconds", target=midgram.target) >= 0
    groups = {dict(labels).get("group") for (_name, labels) in found}
    assert {"core", "mi_datagram", "tests"} <= groups
    assert all(dict(labels)["target"] in (midgram.target, dead) for (_name, labels) in found)
    assert not any(
        dict(labels)["target"] == dead for (name, labels) in found if "group" in dict(labels)
    )
    assert ("opensips_scrape_duration_seconds", frozenset({("target", dead)})) in found


def test_statistic_types_come_from_list_statistics(midgram: ServerProcess) -> None:
    with running_exporter("-t", midgram.target) as exporter:
        _status, text = exporter.get("/metrics")
    declared = types(text)
    assert declared["opensips_received"] == "counter"  # mi_datagram:received, incremental
    assert declared["opensips_timestamp"] == "gauge"  # core:timestamp, a function
    assert "# TYPE opensips_received_total counter" in text
    assert "# HELP opensips_received_total MI statistic mi_datagram:received" in text
    listed = midgram.call("list_statistics")["result"]
    assert listed["mi_datagram:received"] == "incremental"
    assert listed["core:timestamp"] == "non-incremental"


def test_counters_move_with_real_calls_between_two_scrapes(midgram: ServerProcess) -> None:
    with running_exporter("-t", midgram.target) as exporter:
        before = samples(exporter.get("/metrics")[1])
        for _ in range(3):
            _big(midgram)
        after = samples(exporter.get("/metrics")[1])
    labels = {"group": "tests", "target": midgram.target}
    assert value(after, "opensips_calls_total", **labels) == (
        value(before, "opensips_calls_total", **labels) + 3
    )
    received = {"group": "mi_datagram", "target": midgram.target}
    assert value(after, "opensips_received_total", **received) > value(
        before, "opensips_received_total", **received
    )


@needs_promtool
def test_promtool_accepts_the_exposition(midgram: ServerProcess, dead: str) -> None:
    _big(midgram)
    with running_exporter("-t", midgram.target, "-t", dead) as exporter:
        text = exporter.get("/metrics")[1]
        openmetrics = exporter.get(
            "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )[1]
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert openmetrics.rstrip().endswith("# EOF")


@needs_promtool
def test_promtool_finds_the_exposition_of_once_fine(midgram: ServerProcess) -> None:
    once = subprocess.run(
        exporter_command("-t", midgram.target, "--once"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert once.returncode == 0, once.stderr
    checked = promtool_check(once.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_once_fails_when_a_target_is_down(midgram: ServerProcess, dead: str) -> None:
    once = subprocess.run(
        exporter_command("-t", midgram.target, "-t", dead, "--once"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert once.returncode == 1
    assert f"{dead}: cannot reach {dead}" in once.stderr
    assert f'opensips_up{{target="{dead}"}} 0.0' in once.stdout


def test_probe_scrapes_one_configured_target_only(midgram: ServerProcess, dead: str) -> None:
    with running_exporter("-t", midgram.target, "-t", dead) as exporter:
        status, text = exporter.get(f"/probe?target={midgram.target}")
        assert status == 200
        assert {dict(labels)["target"] for (_name, labels) in samples(text)} == {midgram.target}
        other = f"{short_tmpdir()}/other.sock"
        status, text = exporter.get(f"/probe?target={other}")
        assert status == 403
        assert "--probe-any" in text
        assert exporter.get("/probe")[0] == 400
        assert exporter.get("/probe?target=udp:host")[0] == 400
        assert exporter.get("/nothing")[0] == 404
        assert exporter.get("/-/healthy") == (200, "OK\n")


def test_probe_any_reaches_a_target_not_configured(midgram: ServerProcess) -> None:
    with running_exporter("--probe-any", "-t", "/nonexistent/mi.sock") as exporter:
        status, text = exporter.get(f"/probe?target={midgram.target}")
    assert status == 200
    assert value(samples(text), "opensips_up", target=midgram.target) == 1


def test_collect_reads_only_the_groups_asked(midgram: ServerProcess) -> None:
    with running_exporter("-t", midgram.target) as exporter:
        text = exporter.get("/metrics?collect[]=tests:&collect[]=core")[1]
    groups = {dict(labels).get("group") for (_name, labels) in samples(text)} - {None}
    assert groups == {"tests", "core"}


def test_group_in_the_name_and_another_prefix(midgram: ServerProcess) -> None:
    with running_exporter("-t", midgram.target, "--prefix", "app", "--group-mode", "name") as e:
        found = samples(e.get("/metrics")[1])
    assert value(found, "app_tests_calls_total", target=midgram.target) >= 0
    assert value(found, "app_up", target=midgram.target) == 1


def test_a_usage_error_names_the_option() -> None:
    bad = subprocess.run(
        exporter_command("--listen", "127.0.0.1:http", "--once"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2
    assert "--listen" in bad.stderr
    assert "not a number" in bad.stderr


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            exporter_command("-t", "/x.sock", "--listen", f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            check=False,
        )
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines() == [
        f"midgram: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


# --- more statistics than one datagram holds --------------------------------------------------


def test_a_server_whose_statistics_overflow_a_datagram_is_exported_in_full() -> None:
    with midgram_server("-c", "4", "--app", "apps:bulk", "--buf-size", "4096") as bulk:
        # The premise: neither everything nor the wide group's values fit in one reply.
        for method, params in (
            ("get_statistics", [["all"]]),
            ("list_statistics", None),
            ("get_statistics", [["wide:"]]),
        ):
            with bulk.client() as raw:
                request = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
                reply = raw.exchange(orjson.dumps({k: v for k, v in request.items() if v}))
            assert reply == b"500 Internal error", (method, params)
        assert "wide:c000" in bulk.call("list_statistics", [["wide:"]])["result"]
        with running_exporter("-t", bulk.target) as exporter:
            found = samples(exporter.get("/metrics")[1])
    target = bulk.target
    assert value(found, "opensips_scrape_failed_groups", target=target) == 0
    for number in range(BULK_GROUPS):
        for index in range(BULK_PER_GROUP):
            labels = {"group": f"bulk{number:03d}", "target": target}
            assert value(found, f"opensips_c{index}_total", **labels) == number * 10 + index
    for index in range(WIDE_STATS):
        labels = {"group": "wide", "target": target}
        assert value(found, f"opensips_c{index:03d}_total", **labels) == WIDE_VALUE


# --- Kamailio ---------------------------------------------------------------------------------


@needs_kamailio
def test_kamailio_statistics_are_exported_and_move_with_sip_traffic() -> None:
    with kamailio_server(modules=("kex", "counters", "sl")) as kamailio:
        target, sip_port = kamailio.target, kamailio.sip_port
        exporter_of = running_exporter("--dialect", "kamailio", "-t", target)
        with exporter_of as exporter:
            before = samples(exporter.get("/metrics")[1])
            _send_sip_options(sip_port, count=2)
            text = exporter.get("/metrics")[1]
    after = samples(text)
    assert value(after, "kamailio_up", target=target) == 1
    assert value(after, "kamailio_uptime_seconds", target=target) >= 0
    assert value(after, "kamailio_processes_listed", target=target) >= 1
    assert value(after, "kamailio_shmem_total_size", target=target) > 0
    assert value(after, "kamailio_core_rcv_requests", target=target) == (
        value(before, "kamailio_core_rcv_requests", target=target) + 2
    )
    assert types(text)["kamailio_core_rcv_requests"] == "unknown"  # Kamailio does not say
    if PROMTOOL is not None:
        checked = promtool_check(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_kamailio
def test_a_kamailio_without_statistics_commands_is_up_with_no_statistics() -> None:
    with kamailio_server() as kamailio:  # jsonrpcs alone: no kex, no counters
        target = kamailio.target
        exporter_of = running_exporter("--dialect", "kamailio", "-t", target)
        with exporter_of as exporter:
            found = samples(exporter.get("/metrics")[1])
    assert value(found, "kamailio_up", target=target) == 1
    assert value(found, "kamailio_scrape_failed_groups", target=target) == 1
    assert value(found, "kamailio_processes_listed", target=target) >= 1


def _send_sip_options(port: int, count: int) -> None:
    """SIP OPTIONS requests to Kamailio, each answered (the config's sl_send_reply is not
    there: its request_route just exits, so they are counted and dropped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        here = sock.getsockname()[1]
        for number in range(count):
            message = (
                f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{here};branch=z9hG4bK-mg{number}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@127.0.0.1>;tag={number}\r\n"
                f"To: <sip:ping@127.0.0.1:{port}>\r\n"
                f"Call-ID: mg-{number}@127.0.0.1\r\n"
                f"CSeq: {number + 1} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            sock.sendto(message.encode(), ("127.0.0.1", port))


# --- a real Prometheus ------------------------------------------------------------------------

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=PROMETHEUS_MISSING)


#: Prometheus's line saying where it listens, with the port it took for port 0.
_PROMETHEUS_LISTENING = re.compile(r'msg="Listening on" address=(\S+)')


def _prometheus_address(log: Path) -> str | None:
    """Where Prometheus said it listens, once it has."""
    said = _PROMETHEUS_LISTENING.search(log.read_text(errors="replace"))
    return said[1] if said else None


def _prometheus_config(exporter_address: str, target: str) -> str:
    """A fleet through /probe: the target becomes the exporter's ?target= parameter."""
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: midgram
    metrics_path: /probe
    static_configs:
      - targets: ["{target}"]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: "{exporter_address}"
"""


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - ours
            return json.loads(reply.read())
    except OSError:
        return None


@needs_prometheus
def test_a_real_prometheus_scrapes_the_exporter_and_answers_a_query(
    midgram: ServerProcess, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    _big(midgram)
    with running_exporter("-t", midgram.target) as exporter:
        address = exporter.url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(_prometheus_config(address, midgram.target))
        said = tmp_path / "prometheus.log"
        log = said.open("wb")
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                "--web.listen-address=127.0.0.1:0",  # it logs the port it took
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            where = wait_until(
                lambda: _prometheus_address(said) or prometheus.poll() is not None,
                30,
                "prometheus saying where it listens",
            )
            assert prometheus.poll() is None, said.read_text()
            api = f"http://{where}"
            wait_until(
                lambda: _ready(api) or prometheus.poll() is not None, 30, "prometheus /-/ready"
            )
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            query = urllib.parse.quote('opensips_calls_total{group="tests"}')
            result = wait_until(
                lambda: _query(f"{api}/api/v1/query?query={query}"), 30, "the query's answer"
            )
        finally:
            prometheus.terminate()
            prometheus.wait(20)
            log.close()
    (series,) = result
    assert series["metric"]["instance"] == midgram.target
    assert series["metric"]["target"] == midgram.target
    assert series["metric"]["job"] == "midgram"
    assert float(series["value"][1]) >= 1


def _ready(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/-/ready", timeout=2) as reply:  # noqa: S310
            return bool(reply.status == 200)
    except OSError:
        return False


def _query(url: str) -> list[Any] | None:
    answer = _get_json(url)
    if not answer or answer.get("status") != "success":
        return None
    return answer["data"]["result"] or None


# --- collectors -------------------------------------------------------------------------------


def test_a_collector_adds_its_readings_and_collect_selects_it(midgram: ServerProcess) -> None:
    flags = ("-t", midgram.target, "--collector", "collectors:Commands")
    with running_exporter(*flags, "--collector", "collectors:Broken") as exporter:
        everything = samples(exporter.get("/metrics")[1])
        only = samples(exporter.get("/metrics?collect[]=commands")[1])
    core = value(everything, "opensips_commands", module="core", target=midgram.target)
    ours = len(tests_app)  # the tests app's commands, module "tests"
    assert core == len(midgram.call("which")["result"]) - ours  # all but the tests app's
    assert value(everything, "opensips_commands", module="tests", target=midgram.target) == ours
    assert value(everything, "opensips_up", target=midgram.target) == 1
    assert not any(dict(labels).get("group") for (_name, labels) in only)
    assert value(only, "opensips_commands", module="tests", target=midgram.target) == ours


def test_a_collector_that_is_not_one_is_a_usage_error() -> None:
    bad = subprocess.run(
        exporter_command("--collector", "collectors:MI", "--once"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert bad.returncode == 2
    assert "is not a collector" in bad.stderr
