"""Metrics on a fresh registry: what each call moves, read back through the registry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import streamem
from streamem.formats import REASONS
from streamem.metrics import (
    DEAD_LETTER_REASONS,
    KAFKA_ERROR_KINDS,
    LATENCY_BUCKETS,
    BatchReport,
    Metrics,
)

from .stand_in import StandInModel, fit, report


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def present(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    assert v is not None, (name, labels)
    return v


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    text = generate_latest(registry).decode()
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_batch_moves_counters(metrics: Metrics, registry: CollectorRegistry) -> None:
    model = StandInModel()
    fit(metrics, model, report(300, n_messages=3, n_anomalies=7))
    fit(metrics, model, report(200, n_messages=200, n_anomalies=1))
    assert value(registry, "streamem_points_total", outcome="ok") == 500
    assert value(registry, "streamem_points_total", outcome="invalid") == 0
    assert value(registry, "streamem_messages_total", outcome="ok") == 203
    assert value(registry, "streamem_anomalies_total") == 8


def test_batch_histograms(metrics: Metrics, registry: CollectorRegistry) -> None:
    model = StandInModel()
    fit(metrics, model, report(3, duration_s=0.004))
    fit(metrics, model, report(1500, duration_s=2.0))
    h = "streamem_batch_duration_seconds"
    assert value(registry, h + "_count") == 2
    assert value(registry, h + "_sum") == pytest.approx(2.004)
    assert value(registry, h + "_bucket", le="0.005") == 1
    assert value(registry, h + "_bucket", le="1.0") == 1
    assert value(registry, h + "_bucket", le="30.0") == 2
    s = "streamem_batch_size_points"
    assert value(registry, s + "_count") == 2
    assert value(registry, s + "_sum") == 1503
    assert value(registry, s + "_bucket", le="5.0") == 1
    assert value(registry, s + "_bucket", le="1000.0") == 1
    assert value(registry, s + "_bucket", le="2000.0") == 2
    assert value(registry, s + "_bucket", le="100000.0") == 2


def test_histogram_buckets_span_the_agreed_ranges() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    text = generate_latest(registry).decode()
    bounds: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
                bounds.setdefault(family.name, []).append(float(s.labels["le"]))
    spans = {name: (min(b), max(b)) for name, b in bounds.items()}
    assert spans == {
        "streamem_batch_duration_seconds": (0.001, 30.0),
        "streamem_end_to_end_latency_seconds": (0.001, 60.0),
        "streamem_batch_size_points": (1.0, 100_000.0),
    }


def test_latency_histogram_matches_prometheus_client(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """The bulk histogram buckets exactly as prometheus_client's own Histogram would."""
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.lognormal(-3, 2, 5000),
        np.asarray(LATENCY_BUCKETS),  # on the bounds: ``le`` is inclusive
        [0.0, 1e9],
    ])  # fmt: skip
    model = StandInModel()
    fit(metrics, model, report(values.size, latency_s=values))
    fit(metrics, model, report(3, latency_s=np.array([0.5, 0.5, 0.5])))
    reference_registry = CollectorRegistry()
    reference = Histogram("ref", "", buckets=LATENCY_BUCKETS, registry=reference_registry)
    for v in np.concatenate([values, [0.5, 0.5, 0.5]]):
        reference.observe(float(v))
    for le in [*map(str, map(float, LATENCY_BUCKETS)), "+Inf"]:
        ours = value(registry, "streamem_end_to_end_latency_seconds_bucket", le=le)
        assert ours == value(reference_registry, "ref_bucket", le=le), le
    assert value(registry, "streamem_end_to_end_latency_seconds_count") == values.size + 3
    assert value(registry, "streamem_end_to_end_latency_seconds_sum") == pytest.approx(
        value(reference_registry, "ref_sum")
    )


def test_latency_drops_nan_and_clamps_negative(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    fit(metrics, StandInModel(), report(3, latency_s=np.array([np.nan, -0.5, 0.02])))
    assert value(registry, "streamem_end_to_end_latency_seconds_count") == 2
    assert value(registry, "streamem_end_to_end_latency_seconds_bucket", le="0.001") == 1
    assert value(registry, "streamem_end_to_end_latency_seconds_sum") == pytest.approx(0.02)


def test_log_likelihood_last_batch_and_ewma(metrics: Metrics, registry: CollectorRegistry) -> None:
    """Half-life 100 points: a 100-point batch moves the EWMA half way to its mean."""
    model = StandInModel()
    fit(metrics, model, report(40, log_likelihood=np.linspace(-4.0, -2.0, 40)))
    assert value(registry, "streamem_log_likelihood_mean", window="last_batch") == pytest.approx(-3)
    assert value(registry, "streamem_log_likelihood_mean", window="ewma") == pytest.approx(-3)
    fit(metrics, model, report(100, log_likelihood=-1.0))
    assert value(registry, "streamem_log_likelihood_mean", window="last_batch") == -1.0
    assert value(registry, "streamem_log_likelihood_mean", window="ewma") == pytest.approx(-2.0)
    fit(metrics, model, report(200, log_likelihood=-6.0))  # two half-lives: 3/4 of the way
    assert value(registry, "streamem_log_likelihood_mean", window="ewma") == pytest.approx(-5.0)


def test_ewma_weights_points_not_batches(registry: CollectorRegistry) -> None:
    """Ten batches of 10 points move the EWMA exactly as one batch of 100 equal points."""
    one, many = Metrics(registry, ewma_halflife_points=50), Metrics(ewma_halflife_points=50)
    for m in (one, many):
        fit(m, StandInModel(), report(5, log_likelihood=0.0))
    fit(one, StandInModel(), report(100, log_likelihood=-8.0))
    for _ in range(10):
        fit(many, StandInModel(), report(10, log_likelihood=-8.0))
    expected = -8.0 * (1 - 0.5**2)
    assert value(one.registry, "streamem_log_likelihood_mean", window="ewma") == pytest.approx(
        expected
    )
    assert value(many.registry, "streamem_log_likelihood_mean", window="ewma") == pytest.approx(
        expected
    )


def test_log_likelihood_ignores_non_finite(metrics: Metrics, registry: CollectorRegistry) -> None:
    fit(metrics, StandInModel(), report(3, log_likelihood=np.array([-np.inf, -2.0, np.nan])))
    assert value(registry, "streamem_log_likelihood_mean", window="last_batch") == -2.0
    fit(metrics, StandInModel(), report(1, log_likelihood=np.array([np.nan])))
    assert value(registry, "streamem_log_likelihood_mean", window="ewma") == -2.0


def test_empty_batch(metrics: Metrics, registry: CollectorRegistry) -> None:
    fit(metrics, StandInModel(), report(0, n_messages=0))
    assert value(registry, "streamem_batch_duration_seconds_count") == 1
    assert value(registry, "streamem_batch_size_points_count") == 0
    assert value(registry, "streamem_log_likelihood_mean", window="ewma") is None


def test_model_gauges(metrics: Metrics, registry: CollectorRegistry) -> None:
    model = StandInModel(
        n_components=2,
        weights_=np.array([0.25, 0.75]),
        condition_numbers_=np.array([3.0, 4.5e6]),
        anomaly_threshold_=-9.25,
        flag_excess_=6.5,
        learning_rate_=0.125,
        version_=41,
        n_seen_=1000,
    )
    fit(metrics, model, report(10))
    assert value(registry, "streamem_model_version") == 42
    assert value(registry, "streamem_model_points_seen") == 1010
    assert value(registry, "streamem_anomaly_threshold") == -9.25
    assert value(registry, "streamem_model_flag_excess") == 6.5
    assert value(registry, "streamem_learning_rate") == 0.125
    assert value(registry, "streamem_component_weight", component="1") == 0.75
    assert value(registry, "streamem_component_condition_number", component="1") == 4.5e6
    assert label_values(registry, "streamem_component_weight", "component") == {"0", "1"}


def test_threshold_is_minus_inf_while_warming_up(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    fit(metrics, StandInModel(anomaly_threshold_=-math.inf, learning_rate_=None), report(5))
    assert value(registry, "streamem_anomaly_threshold") == -math.inf
    assert "streamem_anomaly_threshold -Inf" in generate_latest(registry).decode()


def test_components_skipped_until_initialized(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    model = StandInModel(initialized_=False, weights_=np.array([]), condition_numbers_=np.array([]))
    fit(metrics, model, report(5))
    assert label_values(registry, "streamem_component_weight", "component") == set()
    model.initialized_ = True
    model.weights_, model.condition_numbers_ = np.array([0.5, 0.5]), np.array([1.0, 2.0])
    fit(metrics, model, report(5))
    assert label_values(registry, "streamem_component_weight", "component") == {"0", "1"}


def test_fewer_components_drop_stale_labels(metrics: Metrics, registry: CollectorRegistry) -> None:
    fit(metrics, StandInModel(n_components=4), report(5))
    fit(metrics, StandInModel(n_components=2), report(5))
    for name in ("streamem_component_weight", "streamem_component_condition_number"):
        assert label_values(registry, name, "component") == {"0", "1"}


class TestCollapseResets:
    name = "streamem_collapse_resets_total"

    def test_fresh_model_counts_every_reset(self, metrics: Metrics, registry: CollectorRegistry):
        model = StandInModel(resets_={"singular": 2})  # during its first batch
        fit(metrics, model, report(100))
        assert value(registry, self.name, reason="singular") == 2

    def test_counts_deltas_once(self, metrics: Metrics, registry: CollectorRegistry) -> None:
        model = StandInModel()
        fit(metrics, model, report(100))
        assert value(registry, self.name, reason="singular") is None
        model.resets_ = {"singular": 1}
        fit(metrics, model, report(100))
        fit(metrics, model, report(100))  # no new reset: no double count
        assert value(registry, self.name, reason="singular") == 1
        model.resets_ = {"singular": 4, "weight": 2}
        fit(metrics, model, report(100))
        assert value(registry, self.name, reason="singular") == 4
        assert value(registry, self.name, reason="weight") == 2

    def test_restored_model_counts_start_as_baseline(
        self, metrics: Metrics, registry: CollectorRegistry
    ) -> None:
        """Resets before a checkpoint were exported by the process that made them."""
        restored = StandInModel(n_seen_=50_000, resets_={"singular": 9})
        fit(metrics, restored, report(100))
        assert value(registry, self.name, reason="singular") == 0
        restored.resets_ = {"singular": 11}
        fit(metrics, restored, report(100))
        assert value(registry, self.name, reason="singular") == 2

    def test_replaced_model_never_decrements_nor_double_counts(
        self, metrics: Metrics, registry: CollectorRegistry
    ) -> None:
        current = StandInModel(resets_={"singular": 3})
        fit(metrics, current, report(100))
        assert value(registry, self.name, reason="singular") == 3
        older = StandInModel(n_seen_=20_000, resets_={"singular": 1})  # an older checkpoint
        fit(metrics, older, report(100))
        assert value(registry, self.name, reason="singular") == 3
        older.resets_ = {"singular": 2}
        fit(metrics, older, report(100))
        assert value(registry, self.name, reason="singular") == 4
        newer = StandInModel(n_seen_=90_000, resets_={"singular": 30})
        fit(metrics, newer, report(100))
        assert value(registry, self.name, reason="singular") == 4


def test_dead_letter(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.dead_letter("wrong_dimension")
    metrics.dead_letter("wrong_dimension")
    metrics.dead_letter("no such reason")
    assert value(registry, "streamem_dead_letter_messages_total", reason="wrong_dimension") == 2
    assert value(registry, "streamem_dead_letter_messages_total", reason="other") == 1
    assert value(registry, "streamem_messages_total", outcome="dead_letter") == 3
    assert value(registry, "streamem_points_total", outcome="invalid") == 3
    assert label_values(registry, "streamem_dead_letter_messages_total", "reason") == set(
        DEAD_LETTER_REASONS
    )


def test_dead_letter_reasons_cover_the_codec() -> None:
    assert set(REASONS) <= set(DEAD_LETTER_REASONS)


def test_kafka_errors_reconnects_and_up(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert value(registry, "streamem_kafka_up") == 0
    metrics.set_kafka_up(True)
    assert value(registry, "streamem_kafka_up") == 1
    metrics.kafka_error("commit")
    metrics.kafka_error("x" * 100)
    metrics.reconnect()
    metrics.set_kafka_up(False)
    assert value(registry, "streamem_kafka_up") == 0
    assert value(registry, "streamem_kafka_errors_total", kind="commit") == 1
    assert value(registry, "streamem_kafka_errors_total", kind="other") == 1
    assert value(registry, "streamem_kafka_reconnects_total") == 1
    assert label_values(registry, "streamem_kafka_errors_total", "kind") == set(KAFKA_ERROR_KINDS)


def test_checkpoints(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert math.isnan(present(registry, "streamem_checkpoint_age_seconds"))
    assert value(registry, "streamem_checkpoint_last_success_timestamp_seconds") == 0
    before = time.time()
    metrics.checkpoint_saved(True)
    after = time.time()
    last = present(registry, "streamem_checkpoint_last_success_timestamp_seconds")
    assert before <= last <= after
    age = present(registry, "streamem_checkpoint_age_seconds")
    assert 0 <= age <= time.time() - before
    metrics.checkpoint_saved(False)
    assert value(registry, "streamem_checkpoint_failures_total") == 1
    assert value(registry, "streamem_checkpoint_last_success_timestamp_seconds") == last


def test_checkpoint_age_is_computed_at_scrape_time(
    metrics: Metrics, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    metrics.checkpoint_saved(True)
    now += 42.5
    assert value(registry, "streamem_checkpoint_age_seconds") == 42.5


def test_consumer_lag_follows_the_assignment(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.set_consumer_lag({("in", 0): 10, ("in", 1): 20})
    assert value(registry, "streamem_consumer_lag_messages", topic="in", partition="1") == 20
    metrics.set_consumer_lag({("in", 1): 5, ("in", 2): 0})
    assert label_values(registry, "streamem_consumer_lag_messages", "partition") == {"1", "2"}
    assert value(registry, "streamem_consumer_lag_messages", topic="in", partition="1") == 5
    metrics.set_consumer_lag({})
    assert label_values(registry, "streamem_consumer_lag_messages", "partition") == set()


def test_ready_gauge(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert value(registry, "streamem_ready") == 0
    metrics.set_ready(True)
    assert value(registry, "streamem_ready") == 1
    metrics.set_ready(False)
    assert value(registry, "streamem_ready") == 0


def test_build_info(registry: CollectorRegistry, metrics: Metrics) -> None:
    assert value(registry, "streamem_build_info", version=streamem.__version__) == 1


def test_registries_are_independent() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.reconnect()
    assert value(a.registry, "streamem_kafka_reconnects_total") == 1
    assert value(b.registry, "streamem_kafka_reconnects_total") == 0


def test_default_registry_is_fresh_and_has_process_metrics() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    assert value(a.registry, "process_cpu_seconds_total") is not None
    assert value(a.registry, "streamem_kafka_up") == 0


def test_bad_halflife() -> None:
    with pytest.raises(ValueError, match="ewma_halflife_points"):
        Metrics(CollectorRegistry(), ewma_halflife_points=0)


def test_batch_report_is_frozen() -> None:
    r = report(1)
    with pytest.raises(AttributeError):
        r.n_points = 2  # type: ignore[misc]
    assert isinstance(r, BatchReport)


def test_reads_a_real_online_gmm(metrics: Metrics, registry: CollectorRegistry) -> None:
    """The attributes read here are the ones the lead's OnlineGMM really has."""
    from streamem import OnlineGMM

    rng = np.random.default_rng(0)
    gmm = OnlineGMM(n_components=3, random_state=0)
    for _ in range(8):
        X = rng.normal(size=(250, 2)) + 6.0 * rng.integers(0, 3, size=(250, 1))
        res = gmm.partial_fit(X)
        batch = BatchReport(
            250, 250, int(res.anomaly.sum()), 0.01, np.zeros(250), res.log_likelihood
        )
        metrics.observe_batch(batch, gmm)
    assert gmm.initialized_
    assert present(registry, "streamem_model_points_seen") == gmm.n_seen_ == 2000
    assert present(registry, "streamem_model_version") == gmm.version_
    assert present(registry, "streamem_anomaly_threshold") == gmm.anomaly_threshold_
    weights = [present(registry, "streamem_component_weight", component=str(k)) for k in range(3)]
    assert weights == pytest.approx(list(gmm.weights_))
    assert set(label_values(registry, "streamem_collapse_resets_total", "reason")) == set(
        gmm.resets_
    )
    assert present(registry, "streamem_log_likelihood_mean", window="last_batch") == pytest.approx(
        float(np.mean(res.log_likelihood))
    )
