"""A stand-in for ``OnlineGMM`` carrying only the attributes :class:`Metrics` reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamem.metrics import BatchReport, Metrics


@dataclass
class StandInModel:
    """The fitted state ``Metrics.observe_batch`` reads after a batch (no fitting)."""

    n_components: int = 3
    initialized_: bool = True
    version_: int = 1
    n_seen_: int = 0
    anomaly_threshold_: float = -7.5
    flag_excess_: float = 1.0
    learning_rate_: float | None = 0.05
    resets_: dict[str, int] = field(default_factory=dict)
    weights_: Any = None  # (K,), default uniform
    condition_numbers_: Any = None  # (K,), default 10, 20, ...

    def __post_init__(self) -> None:
        k = self.n_components
        if self.weights_ is None:
            self.weights_ = np.full(k, 1.0 / k)
        if self.condition_numbers_ is None:
            self.condition_numbers_ = np.arange(1.0, k + 1.0) * 10.0


def report(
    n_points: int,
    *,
    log_likelihood: float | np.ndarray = -3.0,
    latency_s: float | np.ndarray = 0.02,
    n_messages: int | None = None,
    n_anomalies: int = 0,
    duration_s: float = 0.05,
) -> BatchReport:
    """A BatchReport of ``n_points`` points (scalars are broadcast to every point)."""
    return BatchReport(
        n_messages=n_points if n_messages is None else n_messages,
        n_points=n_points,
        n_anomalies=n_anomalies,
        duration_s=duration_s,
        latencies_s=np.broadcast_to(np.asarray(latency_s, dtype=float), (n_points,)).copy(),
        log_likelihood=np.broadcast_to(np.asarray(log_likelihood, dtype=float), (n_points,)).copy(),
    )


def fit(metrics: Metrics, model: StandInModel, batch: BatchReport) -> None:
    """What the runtime does per batch: the model sees the points, then metrics read it."""
    model.n_seen_ += batch.n_points
    model.version_ += 1
    metrics.observe_batch(batch, model)  # type: ignore[arg-type]


def populate(metrics: Metrics) -> None:
    """Touch every metric and label the daemon can produce (for lint and name checks)."""
    model = StandInModel(resets_={"singular": 1, "weight": 0})
    fit(metrics, model, report(500, n_anomalies=5, log_likelihood=-4.0, latency_s=0.3))
    metrics.dead_letter("bad_json")
    metrics.kafka_error("poll")
    metrics.reconnect()
    metrics.set_kafka_up(True)
    metrics.checkpoint_saved(True)
    metrics.checkpoint_saved(False)
    metrics.set_consumer_lag({("streamem.points", 0): 12, ("streamem.points", 1): 0})
    metrics.set_ready(True)
    metrics.shares_model_of("streamem")
