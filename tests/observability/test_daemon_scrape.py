"""A real Prometheus server scrapes the daemon while it consumes from the real broker; what
Prometheus reports matches what the daemon produced."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import free_port, produce

from observability.prometheus_server import PrometheusServer
from streamem.synthetic import Mixture

WAVES, PER_WAVE, PAUSE_S = 12, 2000, 0.5


@pytest.mark.kafka
def test_prometheus_sees_what_the_daemon_did(kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = Mixture.random(8, 8, random_state=11).sample(WAVES * PER_WAVE, random_state=3)
    topics = make_topics(topic_factory)
    port = free_port()
    # Unshared: each batch makes a model version, which tells the last batch's answers.
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, metrics__enabled="true",
                               metrics__port=port, sharing__enabled="false")
    daemon = start_daemon(tmp_path, "scraped", settings)
    reader = Reader(kafka_bootstrap, topics["output"])
    bad = [b"{not json", b"[1, 2]"]
    try:
        with PrometheusServer(f"127.0.0.1:{port}") as prom:
            started = time.time()
            for wave in range(WAVES):
                rows = X[wave * PER_WAVE:(wave + 1) * PER_WAVE]
                values = [json.dumps({"id": wave * PER_WAVE + i, "x": x.tolist()}).encode()
                          for i, x in enumerate(rows)]
                produce(kafka_bootstrap, topics["input"], values + bad[wave % 2:wave % 2 + 1])
                time.sleep(PAUSE_S)
            produced_s = time.time() - started
            records = reader.read_until(lambda rs: len(rs) >= len(X))
            assert len(records) == len(X), daemon.log_tail()
            # Wait until Prometheus has scraped the final state, then compare.
            prom.wait_for('streamem_points_total{outcome="ok"}',
                          lambda r: r and float(r[0]["value"][1]) == len(X), timeout_s=30)
            time.sleep(2.5)  # at least two more scrapes of the idle daemon
            ok = prom.query_value('streamem_points_total{outcome="ok"}')
            dead = prom.query_value('sum(streamem_dead_letter_messages_total)')
            anomalies = prom.query_value("streamem_anomalies_total")
            last_batch = prom.query_value('streamem_log_likelihood_mean{window="last_batch"}')
            peak_rate = prom.query_value(
                'max_over_time(rate(streamem_points_total{outcome="ok"}[5s])[2m:1s])')
            up = prom.query_value('up{job="streamem"}')
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        reader.close()

    points = points_of(records)
    assert up == 1.0
    assert ok == len(points) == len(X)
    assert dead == WAVES  # one bad message per wave
    assert anomalies == sum(p["anomaly"] for p in points)
    # The last batch's records are those answered by the newest model version.
    newest = max(p["model_version"] for p in points)
    last = [p["log_likelihood"] for p in points if p["model_version"] == newest]
    assert last_batch == pytest.approx(np.mean(last), abs=1e-4)
    # Points arrived at about len(X) / produced_s per second; Prometheus saw that pace.
    offered = len(X) / produced_s
    assert offered / 4 <= peak_rate <= offered * 4
