"""Prometheus' own checks: a real scrape linted by promtool; the rules checked and unit-tested."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import yaml

from streamem.metrics import Metrics, MetricsServer

from .prometheus_server import REPO
from .stand_in import populate
from .test_names import dashboard_queries

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"


def run(promtool: str, *args: str | Path, stdin: bytes | None = None) -> str:
    proc = subprocess.run(
        [promtool, *map(str, args)], input=stdin, capture_output=True, timeout=120
    )
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_scrape_passes_promtool_check_metrics(
    promtool: str, metrics: Metrics, served: MetricsServer
) -> None:
    populate(metrics)
    with urllib.request.urlopen(served.url + "/metrics", timeout=10) as r:
        scrape = r.read()
    assert b"streamem_points_total" in scrape
    output = run(promtool, "check", "metrics", stdin=scrape)
    assert output.strip() == "", output


def test_promtool_check_metrics_catches_a_bad_name(promtool: str) -> None:
    """The lint test above can fail: promtool flags a counter without ``_total``."""
    bad = b"# HELP streamem_bad A counter.\n# TYPE streamem_bad counter\nstreamem_bad 1\n"
    proc = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True)
    assert proc.returncode != 0
    assert b'should have "_total" suffix' in proc.stdout + proc.stderr


def test_alert_rules_are_valid(promtool: str) -> None:
    output = run(promtool, "check", "rules", PROMETHEUS_DIR / "alerts.yml")
    assert "SUCCESS" in output


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    output = run(promtool, "test", "rules", PROMETHEUS_DIR / "alerts_test.yml")
    assert "SUCCESS" in output


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL: each, with Grafana's variables filled in, is a
    recording rule that ``promtool check rules`` parses."""
    grafana = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
    rules = []
    for i, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_")):
        for variable, value in grafana.items():
            query = query.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    assert len(rules) >= 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in run(promtool, "check", "rules", path)


def test_scrape_config_is_valid(promtool: str) -> None:
    output = run(promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert "SUCCESS" in output
