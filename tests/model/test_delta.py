"""Statistic deltas: folding the workers' deltas is one model's update on the joined stream."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from streamem import OnlineGMM
from streamem.model.delta import StatsDelta, coalesce
from streamem.synthetic import Mixture

MIX = Mixture.random(4, 3, random_state=0)


def started(n: int = 3000, **kwargs) -> tuple[OnlineGMM, np.ndarray]:
    X, _ = MIX.sample(n + 1600, random_state=1)
    model = OnlineGMM(4, halflife=None, warmup=1000, random_state=0, **kwargs)
    model.partial_fit(X[:n])
    return model, X[n:]


def assert_same_model(a: OnlineGMM, b: OnlineGMM, tol: float) -> None:
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=tol)
    assert (a.n_seen_, a._n_steps) == (b.n_seen_, b._n_steps)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("assignment", ["soft", "hard"])
def test_folding_the_deltas_of_w_workers_is_one_update_on_the_joined_stream(
        covariance_type, assignment):
    model, X = started(covariance_type=covariance_type, assignment=assignment)
    one, leader = copy.deepcopy(model), copy.deepcopy(model)
    batches = np.array_split(X[:1500], 4)  # 4 workers, all answering with the same parameters
    deltas = [model.delta(b)[1] for b in batches]
    one.partial_fit(np.concatenate(batches))  # one E-step with the same parameters
    for d in deltas:
        leader.fold(StatsDelta.from_bytes(d.to_bytes()))
    assert_same_model(one, leader, 1e-10)
    assert leader.version_ == one.version_ + len(deltas) - 1


def test_the_workers_answers_are_the_models():
    model, X = started()
    result, delta = model.delta(X[:300])
    expected = copy.deepcopy(model).partial_fit(X[:300])
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.log_likelihood, expected.log_likelihood, rtol=1e-12)
    assert result.model_version == delta.version == model.version_
    assert delta.n_points == 300 and delta.nk.sum() == pytest.approx(delta.n_updating)


def test_coalescing_equals_folding_in_order():
    model, X = started(anomaly_rate=0.05)  # some points flagged, so flagged buffers move too
    deltas = [model.delta(b)[1] for b in np.array_split(X[:1200], 6)]
    assert sum(d.n_flagged for d in deltas) > 0
    one, each = copy.deepcopy(model), copy.deepcopy(model)
    one.fold(coalesce(deltas))
    for d in deltas:
        each.fold(d)
    assert_same_model(one, each, 1e-12)
    np.testing.assert_allclose(one._usage, each._usage, rtol=1e-12)
    assert one._flag_share == pytest.approx(each._flag_share, rel=1e-12)
    np.testing.assert_array_equal(one._flagged, each._flagged)
    np.testing.assert_array_equal(one._flagged_at, each._flagged_at)


def test_a_leader_warms_up_on_warm_up_deltas_as_one_model_would():
    X, _ = MIX.sample(3000, random_state=2)
    worker = OnlineGMM(4, warmup=1000, random_state=0)  # has never heard from a leader
    leader, one = OnlineGMM(4, warmup=1000, random_state=0), OnlineGMM(4, warmup=1000,
                                                                      random_state=0)
    for batch in np.array_split(X, 10):
        result, delta = worker.delta(batch)
        assert delta.warmup and result.warmup.all() == (len(batch) + worker._buffered() < 1000)
        leader.fold(StatsDelta.from_bytes(delta.to_bytes()))
        one.partial_fit(batch)
    assert_same_model(one, leader, 0.0)


def test_simulated_staleness_costs_under_a_hundredth_of_a_nat_per_point():
    """Each batch is answered by a copy of the leader up to 32 versions old (overlapping mixture).

    Held-out log-likelihood of the leader folding those deltas vs one instance learning the same
    batches, all along the stream.
    """
    mix = Mixture.random(6, 4, separation=2.0, random_state=3)
    X, _ = mix.sample(60_000, random_state=4)
    held_out, _ = mix.sample(5000, random_state=5)
    one, leader = OnlineGMM(6, random_state=0), OnlineGMM(6, random_state=0)
    rng = np.random.default_rng(6)
    history = [copy.deepcopy(leader)]
    stalest = 0
    for i, batch in enumerate(np.array_split(X, 600)):
        one.partial_fit(batch)
        age = int(rng.integers(0, min(33, len(history))))
        stalest = max(stalest, leader.version_ - history[-1 - age].version_)
        leader.fold(history[-1 - age].delta(batch)[1])
        history = (history + [copy.deepcopy(leader)])[-33:]
        if i % 50 == 49:
            assert abs(one.score(held_out) - leader.score(held_out)) < 0.01, i
    assert stalest == 32


def test_a_delta_of_another_model_or_damaged_bytes_is_refused():
    model, X = started()
    delta = model.delta(X[:100])[1]
    with pytest.raises(ValueError, match="another model"):
        OnlineGMM(5, halflife=None, random_state=0).fold(delta)
    data = delta.to_bytes()
    for damaged in (data[:len(data) // 2], b"not a delta", data.replace(b"<f8", b"<f4", 1)):
        with pytest.raises(ValueError):
            StatsDelta.from_bytes(damaged)
    bad = delta.__class__(**{**delta.__dict__, "means": np.full_like(delta.means, np.nan)})
    with pytest.raises(ValueError, match="not finite"):
        StatsDelta.from_bytes(bad.to_bytes())
    bad = delta.__class__(**{**delta.__dict__, "n_updating": delta.n_updating - 5})
    with pytest.raises(ValueError, match="Σ N_k"):
        StatsDelta.from_bytes(bad.to_bytes())


def test_a_leader_refits_after_a_drift_from_the_points_deltas_carry():
    """Workers carry their points once the stream changes; the leader's drift refit uses them."""
    mix = Mixture.random(6, 4, separation=8.0, random_state=0)
    mix = replace(mix, weights=np.full(6, 1.0 / 6))
    moved = mix.means.copy()
    moved[:3] += 100.0 * np.random.default_rng(100).choice([-1.0, 1.0], size=(3, 4))
    leader = OnlineGMM(6, random_state=0)
    X = np.concatenate([mix.sample(6000, random_state=1)[0],
                        replace(mix, means=moved).sample(8000, random_state=2)[0]])
    carried = []
    for i, batch in enumerate(np.array_split(X, 70)):
        replica = copy.deepcopy(leader)  # a worker with the newest parameters
        delta = replica.delta(batch)[1]
        carried.append(len(delta.points))
        if i == 29:
            before = leader.predict(mix.means[3:])
        leader.fold(delta)
    assert leader.resets_["drift"] == 1
    assert sum(carried[30:]) >= leader.warmup_ and sum(carried[10:30]) == 0
    np.testing.assert_array_equal(leader.predict(mix.means[3:]), before)
    np.testing.assert_allclose(np.sort(leader.means_, axis=0),
                               np.sort(np.vstack([moved[:3], mix.means[3:]]), axis=0), atol=0.5)


def test_coalesced_points_are_the_last_ones():
    model, X = started()
    a, b = (model.delta(X[i:i + 100])[1] for i in (0, 100))
    full = [replace(d, points=X[i:i + 100]) for d, i in ((a, 0), (b, 100))]
    np.testing.assert_array_equal(coalesce(full).points, X[:200])
    np.testing.assert_array_equal(coalesce([a, full[1]]).points, X[100:200])
    assert len(coalesce([full[0], b]).points) == 0


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_one_point_and_empty_deltas_fold_like_partial_fit(covariance_type):
    model, X = started(covariance_type=covariance_type)
    one = copy.deepcopy(model)
    empty = model.delta(X[:0])[1]
    assert (empty.n_points, empty.recent_keep) == (0, 1.0)
    model.fold(StatsDelta.from_bytes(empty.to_bytes()))
    for x in X[:300]:
        model.fold(StatsDelta.from_bytes(model.delta(x[None])[1].to_bytes()))
        one.partial_fit(x[None])
    assert_same_model(one, model, 1e-10)


def test_folded_deltas_carry_the_window_share_and_the_inliers_for_the_moves():
    """While a try of the moves is near, the leader keeps the same ring of recent inliers from
    deltas as from the joined stream, and the calibration window's share follows the same
    average (up to composing it per delta rather than per batch)."""
    model, X = started(anomaly_rate=0.05)
    model._move_wait = 1  # the next check tries the moves: recent inliers are collected
    one, leader = copy.deepcopy(model), copy.deepcopy(model)
    batches = np.array_split(X[:1500], 4)
    deltas = [model.delta(b)[1] for b in batches]
    assert all(len(d.inliers) for d in deltas) and sum(d.window_add for d in deltas) > 0
    one.partial_fit(np.concatenate(batches))
    for d in deltas:
        leader.fold(StatsDelta.from_bytes(d.to_bytes()))
    assert leader._recent_n == one._recent_n == 1500 - sum(d.n_flagged for d in deltas)
    np.testing.assert_array_equal(leader._recent, one._recent)
    assert leader._window_mass == pytest.approx(one._window_mass, rel=1e-12)
    assert leader._window_share == pytest.approx(one._window_share, rel=1e-3)
    assert coalesce(deltas).window_add == pytest.approx(
        StatsDelta.from_bytes(coalesce(deltas).to_bytes()).window_add)
    np.testing.assert_array_equal(coalesce(deltas).inliers, one._recent[:one._recent_n])
