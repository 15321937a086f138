"""The dashboard and the alert rules only use metrics that Metrics exports, and are well formed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamem.metrics import Metrics

from .prometheus_server import REPO
from .stand_in import populate

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "streamem.json"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
METRIC_NAME = re.compile(r"\bstreamem_[a-zA-Z0-9_]*[a-zA-Z0-9]")
SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Sample names of a populated registry, with histogram suffixes stripped."""
    metrics = Metrics(CollectorRegistry())
    populate(metrics)
    text = generate_latest(metrics.registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "histogram" and name.endswith(SUFFIXES):
                name = name.rsplit("_", 1)[0]
            names.add(name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    d = dashboard()
    queries = [t["expr"] for p in walk_panels(d["panels"]) for t in p.get("targets", [])]
    for variable in d["templating"]["list"]:
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return queries


def strip_suffix(name: str, exported: set[str]) -> str:
    if name not in exported and name.endswith(SUFFIXES):
        return name.rsplit("_", 1)[0]
    return name


def test_exported_names_are_the_contract(exported: set[str]) -> None:
    contract = {
        "streamem_points_total", "streamem_messages_total", "streamem_anomalies_total",
        "streamem_dead_letter_messages_total", "streamem_batch_duration_seconds",
        "streamem_end_to_end_latency_seconds", "streamem_batch_size_points",
        "streamem_log_likelihood_mean", "streamem_anomaly_threshold", "streamem_learning_rate",
        "streamem_model_version", "streamem_model_points_seen", "streamem_component_weight",
        "streamem_component_condition_number", "streamem_collapse_resets_total",
        "streamem_checkpoint_last_success_timestamp_seconds", "streamem_checkpoint_age_seconds",
        "streamem_checkpoint_failures_total", "streamem_consumer_lag_messages",
        "streamem_kafka_errors_total", "streamem_kafka_reconnects_total", "streamem_kafka_up",
        "streamem_kafka_group_rejoins_total", "streamem_dead_letter_values_dropped_total",
        "streamem_ready", "streamem_build_info",
        "streamem_leader", "streamem_model_version_in_use", "streamem_model_staleness_versions",
        "streamem_deltas_sent_total", "streamem_deltas_folded_total", "streamem_fold_lag_seconds",
        "streamem_model_published_timestamp_seconds", "streamem_shared_model_info",
        "streamem_model_flag_excess",
    }  # fmt: skip
    ours = {n for n in exported if n.startswith("streamem_") and not n.endswith("_created")}
    assert ours == contract


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_is_exported(source: str, exported: set[str]) -> None:
    if source == "dashboard":
        queries = dashboard_queries()
    else:
        queries = [rule["expr"] for rule in alert_rules()]
    names = {strip_suffix(n, exported) for q in queries for n in METRIC_NAME.findall(q)}
    assert len(names) >= 5, names
    assert names - exported == set()


def test_dashboard_shows_what_was_asked() -> None:
    """Throughput, latency percentiles, log-likelihood with threshold, weights, lag, DLQ..."""
    queries = "\n".join(dashboard_queries())
    for needle in [
        "rate(streamem_points_total",
        "histogram_quantile(0.99, sum by (le) (rate(streamem_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(streamem_batch_duration_seconds_bucket",
        'streamem_log_likelihood_mean{job=~"$job", instance=~"$instance", window="ewma"}',
        "streamem_anomaly_threshold",
        "rate(streamem_anomalies_total",
        "streamem_component_weight",
        "streamem_collapse_resets_total",
        "streamem_consumer_lag_messages",
        "sum by (reason) (rate(streamem_dead_letter_messages_total",
        "streamem_checkpoint_age_seconds",
        "streamem_kafka_up",
        "rate(streamem_kafka_errors_total",
    ]:
        assert needle in queries, needle


def test_every_panel_queries_exported_metrics(exported: set[str]) -> None:
    """Each panel (rows aside) has queries, and each names a metric streamem exports (or
    Prometheus' ``up``), none it does not."""
    for panel in walk_panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            names = {strip_suffix(n, exported) for n in METRIC_NAME.findall(target["expr"])}
            assert names or target["expr"].startswith("up{"), (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)


def test_dashboard_shows_the_shared_model() -> None:
    """Leader, version in use, staleness, deltas sent and folded, fold lag, publication age."""
    panels = [p for p in walk_panels(dashboard()["panels"]) if p["type"] != "row"]
    for needle in [
        "streamem_leader{",
        "streamem_model_version_in_use{",
        "streamem_model_staleness_versions{",
        "rate(streamem_deltas_sent_total{",
        "rate(streamem_deltas_folded_total{",
        "streamem_fold_lag_seconds{",
        "streamem_model_published_timestamp_seconds{",
    ]:
        showing = [p["title"] for p in panels
                   if any(needle in t["expr"] for t in p["targets"])]
        assert showing, needle


def test_dashboard_uses_the_datasource_variable() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in walk_panels(d["panels"]) if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in walk_panels(d["panels"])]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning() -> None:
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "streamem.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"


def test_every_alert_is_documented() -> None:
    rules = alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "Runbook:" in rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert fires == names
    assert quiet == names
