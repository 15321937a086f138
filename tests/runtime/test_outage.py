"""A broker outage is visible and bounded: ``streamem_kafka_up`` reads 0 within seconds of losing
the broker, the Kafka-down alert's expression fires in a real Prometheus, and after the broker
returns ``kafka_up`` is 1 again and no input is lost. Needs a broker it may stop: the session's
private one, or its own when the session uses an external broker."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_helpers import Reader, daemon_settings, make_topics_on, points_of, start_daemon
from kafka_helpers import KafkaBroker, free_port, produce
from observability.prometheus_server import PrometheusServer

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
DOWN_WITHIN_S = 10.0
"""kafka_up must read 0 this soon after the broker stops (checks run every second)."""
UP_WITHIN_S = 30.0
"""... and 1 again this soon after it is back (reconnect back-off is at most retry_max_s = 2)."""


@pytest.fixture
def stoppable_broker(kafka_broker: KafkaBroker) -> Iterator[KafkaBroker]:
    """A broker this test may stop and start."""
    if not kafka_broker.external:
        yield kafka_broker
        return
    data_dir = Path(tempfile.mkdtemp(prefix="streamem-kafka-outage-"))
    broker = KafkaBroker.private(data_dir)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def alert_expr(name: str) -> str:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return next(r["expr"] for r in rules if r.get("alert") == name)


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample of the daemon's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def wait_for_value(url: str, name: str, want: float, timeout_s: float) -> float:
    """Seconds until the daemon's ``name`` reads ``want``; fails after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if scrape(url).get(name) == want:
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"{name} did not read {want} within {timeout_s}s: {scrape(url).get(name)}")


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def messages(start: int, n: int) -> list[bytes]:
    return [json.dumps({"id": start + i, "x": [float(i % 7), float(i % 3), 1.0]}).encode()
            for i in range(n)]


@pytest.mark.kafka
def test_kafka_up_drops_during_an_outage_the_alert_fires_and_nothing_is_lost(
        stoppable_broker: KafkaBroker, tmp_path: Path) -> None:
    bootstrap = stoppable_broker.bootstrap
    topics = make_topics_on(bootstrap, "outage")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = daemon_settings(bootstrap, tmp_path, topics, metrics__enabled="true",
                               metrics__port=port, kafka__request_timeout_ms=5000,
                               kafka__delivery_timeout_s=10)
    daemon = start_daemon(tmp_path, "outage", settings)
    reader = None
    stopped = False
    expr = alert_expr("StreamemKafkaDown")
    try:
        with PrometheusServer(f"127.0.0.1:{port}", rule_files=[ALERTS]) as prom:
            produce(bootstrap, topics["input"], messages(0, 300))
            reader = Reader(bootstrap, topics["output"])
            assert len(reader.read_until(lambda rs: len(rs) >= 300)) >= 300, daemon.log_tail()
            assert scrape(url)['streamem_kafka_up'] == 1.0
            assert not prom.query(expr)
            errors_before = scrape(url)['streamem_kafka_errors_total{kind="connect"}']

            stoppable_broker.stop()
            stopped = True
            down_after_s = wait_for_value(url, "streamem_kafka_up", 0.0, DOWN_WITHIN_S)
            during = scrape(url)
            assert during['streamem_kafka_errors_total{kind="connect"}'] > errors_before
            # The alert's own expression, evaluated by Prometheus on what it scraped.
            firing = prom.wait_for(expr, bool, timeout_s=15)
            assert firing[0]["metric"]["__name__"] == "streamem_kafka_up"
            assert wait_until(lambda: any(a["labels"]["alertname"] == "StreamemKafkaDown"
                                          for a in prom.alerts()), 15), "the rule is pending"
            assert prom.query_value('up{job="streamem"}') == 1.0, "the daemon itself is up"
            with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                assert r.status == 200, "waiting on Kafka is no reason to restart"

            stoppable_broker.start()
            stopped = False
            up_after_s = wait_for_value(url, "streamem_kafka_up", 1.0, UP_WITHIN_S)
            assert scrape(url)["streamem_kafka_reconnects_total"] >= 1
            prom.wait_for(expr, lambda r: not r, timeout_s=15)

        produce(bootstrap, topics["input"], messages(1000, 300))
        records = reader.read_until(lambda rs: len({p["id"] for p in points_of(rs)}) >= 600)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        if stopped:  # the session's other tests need it
            stoppable_broker.start()
        if reader is not None:
            reader.close()
    ids = {p["id"] for p in points_of(records)}
    assert ids == set(range(300)) | set(range(1000, 1300)), "every input is answered"
    print(f"kafka_up 0 after {down_after_s:.1f}s, 1 after {up_after_s:.1f}s")
