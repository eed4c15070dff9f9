"""The monitoring examples in docs/ work: the Grafana dashboard and the alert rules ask for
metrics the exporter emits (scraping a midgram server that serves a real OpenSIPS 3.6's
statistics), and promtool accepts the rules and the scrape config."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml
from exporters import PROMTOOL, PROMTOOL_MISSING, running_exporter, samples
from servers import ROOT, midgram_server

DOCS = ROOT / "docs"
DASHBOARD = DOCS / "grafana" / "midgram.json"
ALERTS = DOCS / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = DOCS / "prometheus" / "prometheus.yml"
# A metric name, and the label matchers that follow it, in a PromQL expression.
_SELECTOR_RE = re.compile(r"\b(opensips_[a-zA-Z0-9_]+)(?:\{([^}]*)\})?")
_GROUP_RE = re.compile(r'group="([^"]+)"')

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=PROMTOOL_MISSING)


@pytest.fixture(scope="module")
def emitted() -> set[tuple[str, str | None]]:
    """(sample name, group) of every sample the exporter emits for an OpenSIPS-like server."""
    with midgram_server("--children", "2", "--app", "apps:opensips_like") as server:
        exporter_of = running_exporter("-t", server.target)
        with exporter_of as exporter:
            found = samples(exporter.get("/metrics")[1])
    return {(name, dict(labels).get("group")) for (name, labels) in found}


def _selectors(expressions: list[str]) -> set[tuple[str, str | None]]:
    found = set()
    for expression in expressions:
        for name, matchers in _SELECTOR_RE.findall(expression):
            group = _GROUP_RE.search(matchers or "")
            found.add((name, group.group(1) if group else None))
    return found


def _missing(
    wanted: set[tuple[str, str | None]], emitted: set[tuple[str, str | None]]
) -> set[tuple[str, str | None]]:
    names = {name for name, _group in emitted}
    return {
        (name, group)
        for name, group in wanted
        if (group is None and name not in names)
        or (group is not None and (name, group) not in emitted)
    }


def _dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            expressions.append(query["query"])
    return expressions


def test_the_grafana_dashboard_asks_for_metrics_the_exporter_emits(
    emitted: set[tuple[str, str | None]],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = _selectors(_dashboard_expressions(dashboard))
    assert len(wanted) >= 20  # the main statistics, not a token panel
    assert _missing(wanted, emitted) == set()
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_alert_rules_ask_for_metrics_the_exporter_emits(
    emitted: set[tuple[str, str | None]],
) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    wanted = _selectors(expressions)
    assert {"opensips_up", "opensips_scrape_failed_groups"} <= {name for name, _ in wanted}
    assert _missing(wanted, emitted) == set()


@needs_promtool
@pytest.mark.parametrize(
    "command", [["check", "rules", str(ALERTS)], ["check", "config", str(SCRAPE_CONFIG)]]
)
def test_promtool_accepts_the_examples(command: list[str]) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
