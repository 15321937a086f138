"""``streamem bench scale`` end to end on the test broker, tiny: two real ``streamem run``
processes with sharing off and on, and the leader's fold rates; shapes and positive figures only
(speed goals are for the bench's output, never asserted)."""

from __future__ import annotations

import math

import pytest

from streamem.bench import scale

N_POINTS = 100_000


def test_drain_rates_count_from_the_resumption_to_each_instances_last_answer() -> None:
    samples = [[(0.5, 0), (1.0, 100), (2.0, 300), (3.0, 300)],
               [(0.5, 50), (1.5, 50), (4.0, 200)]]
    assert scale._drain_rates(0.0, samples) == [150.0, 50.0]
    with pytest.raises(RuntimeError, match="instance 1 answered no point"):
        scale._drain_rates(0.0, [samples[0], [(1.0, 0), (2.0, 0)]])


@pytest.mark.kafka
def test_bench_scale_measures_both_modes_and_the_fold_rates(kafka_bootstrap: str) -> None:
    result = scale.run(kafka_bootstrap, n_points=N_POINTS, instances=2, partitions=4,
                       points_per_message=1000, batch_messages=10, repeats=1,
                       fold_size=(16, 32), n_deltas=12, points_per_delta=500)
    throughput = result["throughput"]
    assert list(throughput) == ["sharing off", "sharing on"]
    for mode, trial in throughput.items():
        assert len(trial["points"]) == len(trial["points_per_s"]) == len(trial["leaders"]) == 2
        assert sum(trial["points"]) >= N_POINTS and min(trial["points"]) > 0, mode
        assert min(trial["points_per_s"]) > 0, mode
        assert math.isclose(trial["mean_points_per_s"], sum(trial["points_per_s"]) / 2)
    assert not any(throughput["sharing off"]["leaders"])
    shared = throughput["sharing on"]
    assert shared["deltas_dropped"] == 0 and max(shared["versions"]) > 0, (
        "the instances did not answer with a shared model")
    assert math.isclose(result["cost_ratio"], throughput["sharing on"]["mean_points_per_s"]
                        / throughput["sharing off"]["mean_points_per_s"])
    fold = result["fold"]
    assert fold["model_deltas_per_s"] > 0 and fold["kafka_deltas_per_s"] > 0
    assert fold["publications"] >= 1 and fold["delta_bytes"] > 0
    text = scale.report(result)
    for needle in ("instance 0", "instance 1", "sharing off", "sharing on", "sharing on / off",
                   "K=16 d=32: 12 deltas of 500 points", "model only", "through the broker",
                   "shared model versions used: up to"):
        assert needle in text, needle
