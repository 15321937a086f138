"""A REAL Prometheus scrapes a served Metrics registry fed with synthetic batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from streamem.metrics import Metrics, MetricsServer

from .prometheus_server import REPO, PrometheusServer
from .stand_in import StandInModel, fit, report

POINTS_OK = 'streamem_points_total{job="streamem", outcome="ok"}'
RATE = 400.0  # points per second fed
LL = -3.25
WINDOW = "6s"


class Feeder:
    """Feeds ``RATE`` points/s, driven by the clock (a late tick catches up), in 50 ms batches."""

    def __init__(self, metrics: Metrics, model: StandInModel) -> None:
        self.metrics, self.model = metrics, model
        self.fed = 0
        self.history: list[tuple[float, int]] = []  # (time after the batch, cumulative points)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.time()
        self.history.append((start, 0))
        while not self._stop.wait(0.05):
            n = int(RATE * (time.time() - start)) - self.fed
            if n > 0:
                fit(self.metrics, self.model, report(n, log_likelihood=LL, latency_s=0.01))
                self.fed += n
                self.history.append((time.time(), self.fed))

    def fed_at(self, t: float) -> int:
        """Points fed by time ``t`` (the counter's value then)."""
        return max((fed for when, fed in self.history if when <= t), default=0)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def prometheus(prometheus_binary: str, served: MetricsServer) -> Iterator[PrometheusServer]:
    alerts = REPO / "deploy" / "prometheus" / "alerts.yml"
    with PrometheusServer(
        f"127.0.0.1:{served.port}", rule_files=[alerts], binary=prometheus_binary
    ) as prom:
        yield prom


def test_prometheus_sees_what_was_fed(metrics: Metrics, prometheus: PrometheusServer) -> None:
    model = StandInModel()
    with Feeder(metrics, model) as feeder:
        # Six scrapes in the window, all taken while the feeder ran.
        prometheus.wait_for(
            f"count_over_time({POINTS_OK}[{WINDOW}]) >= 6"
            f" and min_over_time({POINTS_OK}[{WINDOW}]) > 0"
        )
        at = time.time()
        rate = prometheus.query_value(f"rate({POINTS_OK}[{WINDOW}])", at)
        samples = prometheus.query_samples(POINTS_OK, WINDOW, at)

    # Every scraped value is one the counter held at (or just after) its scrape time.
    held = {fed for _, fed in feeder.history}
    assert {v for _, v in samples} <= held
    for t, v in samples:
        assert feeder.fed_at(t - 1.0) <= v <= feeder.fed_at(t + 1.0)
    # The rate Prometheus computes is the rate the points were fed at over those samples.
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    fed_rate = (feeder.fed_at(t1) - feeder.fed_at(t0)) / (t1 - t0)
    assert v1 > v0
    assert rate == pytest.approx(fed_rate, rel=0.2)
    assert rate == pytest.approx(RATE, rel=0.3)

    # The log-likelihood gauges: constant LL, then one half-life of points at -1.5.
    assert prometheus.query_value('streamem_log_likelihood_mean{window="ewma"}') == LL
    fit(metrics, model, report(100, log_likelihood=-1.5))
    expected = {"ewma": (LL - 1.5) / 2, "last_batch": -1.5}
    result = prometheus.wait_for(
        "streamem_log_likelihood_mean",
        lambda r: {s["metric"]["window"]: float(s["value"][1]) for s in r} == expected,
    )
    assert len(result) == 2
    total = feeder.fed + 100
    assert prometheus.wait_for(POINTS_OK, lambda r: float(r[0]["value"][1]) == total)
    assert prometheus.query_value('up{job="streamem"}') == 1


def test_prometheus_loads_and_evaluates_the_alert_rules(prometheus: PrometheusServer) -> None:
    def evaluated(_: object) -> bool:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return len(rules) >= 7 and all(r["health"] == "ok" for r in rules)

    prometheus.wait_for("up", evaluated)
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert {r["type"] for r in rules} == {"alerting"}
    assert all(r["lastError"] == "" for r in rules if "lastError" in r)
