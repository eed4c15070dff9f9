"""The exporter's naming rules and the probe's threshold ranges: pure functions."""

from __future__ import annotations

import math

import pytest

from midgram.monitoring.naming import GroupMode, Naming, sanitize
from midgram.monitoring.thresholds import Range, RangeError

OPENSIPS = Naming("opensips", GroupMode.LABEL)
KAMAILIO = Naming("kamailio", GroupMode.NAME)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("rcv_requests", "rcv_requests"),
        ("bad-msg-hdr", "bad_msg_hdr"),  # Kamailio issue 2644
        ("a.b:c d", "a_b_c_d"),
        ("1xx_replies", "_1xx_replies"),
        ("", "_"),
        ("é", "_"),
    ],
)
def test_sanitize_keeps_the_prometheus_grammar(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_opensips_names_follow_the_prometheus_module_with_a_group_label() -> None:
    series = OPENSIPS.series("core", "rcv_requests")
    assert series.name == "opensips_rcv_requests"
    assert dict(series.labels) == {"group": "core"}
    assert series.process is None


def test_kamailio_names_follow_xhttp_prom_with_the_group_in_the_name() -> None:
    series = KAMAILIO.series("core", "bad-msg-hdr")
    assert series.name == "kamailio_core_bad_msg_hdr"
    assert series.labels == ()


@pytest.mark.parametrize(
    ("group", "short", "name", "process", "source"),
    [
        ("load", "load-proc-3", "opensips_proc_load", 3, "load-proc-N"),
        ("load", "load1m-proc-12", "opensips_proc_load1m", 12, "load1m-proc-N"),
        ("pkmem", "0-real_used_size", "opensips_proc_real_used_size", 0, "N-real_used_size"),
        ("load", "load-all", "opensips_load_all", None, "load-all"),
        ("app", "5-minute-avg", "opensips_5_minute_avg", None, "5-minute-avg"),
    ],
)
def test_per_process_statistics_become_one_metric_with_an_id_label(
    group: str, short: str, name: str, process: int | None, source: str
) -> None:
    series = OPENSIPS.series(group, short)
    assert (series.name, series.process, series.source) == (name, process, source)
    if process is not None:
        assert dict(series.labels)["id"] == str(process)


def test_an_empty_prefix_still_gives_a_valid_name() -> None:
    assert Naming("", GroupMode.LABEL).series("core", "2xx").name == "_2xx"
    assert Naming("", GroupMode.LABEL).metric("up") == "up"


@pytest.mark.parametrize(
    ("spec", "alerting", "quiet"),
    [
        ("10", [-1, 10.5, 11], [0, 5, 10]),
        ("10:", [9.99, -5], [10, 1e9]),
        ("~:10", [10.01, 1e9], [-1e9, 10]),
        ("10:20", [9, 21], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9, 21]),
        ("-5:5", [-6, 6], [-5, 0, 5]),
        ("0.5", [0.51], [0, 0.25]),
        ("1e3", [1001], [999]),
    ],
)
def test_nagios_ranges(spec: str, alerting: list[float], quiet: list[float]) -> None:
    threshold = Range.parse(spec)
    assert all(threshold.alerts(v) for v in alerting)
    assert not any(threshold.alerts(v) for v in quiet)


@pytest.mark.parametrize("spec", ["", "@", ":", "abc", "10:5", "1:2:3", "~", "10ms", "@~"])
def test_a_bad_range_is_one_clear_error(spec: str) -> None:
    with pytest.raises(RangeError, match=r"range|above"):
        Range.parse(spec)


def test_ranges_say_when_they_alert() -> None:
    assert Range.parse("10").describe() == "outside 0..10"
    assert Range.parse("10:").describe() == "below 10"
    assert Range.parse("~:10").describe() == "above 10"
    assert Range.parse("@10:20").describe() == "inside 10..20"
    assert Range.parse("~:").end == math.inf
