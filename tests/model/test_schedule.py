"""The per-point step-size schedule: batching B points equals B single steps."""

from __future__ import annotations

import numpy as np
import pytest

from streamem.model.covariance import KINDS
from streamem.model.schedule import batch_schedule, batch_weights, floor_for_halflife, step_sizes
from streamem.model.statistics import batch_statistics

SCHEDULES = [
    dict(learning_decay=1.0, learning_offset=10.0, floor=0.0),
    dict(learning_decay=0.6, learning_offset=0.0, floor=0.0),
    dict(learning_decay=0.8, learning_offset=2.0, floor=floor_for_halflife(50.0)),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("start", [0, 7, 10_000])
def test_decay_plus_weights_is_one(schedule: dict, start: int) -> None:
    gamma = step_sizes(start, 64, **schedule)
    decay, w = batch_weights(gamma)
    assert w.shape == (64,)
    assert np.all(w >= 0) and 0.0 <= decay <= 1.0
    assert decay + w.sum() == pytest.approx(1.0, abs=1e-12)


def test_first_step_of_one_forgets_everything_before() -> None:
    """γ_1 = 1 when τ0 = 0: nothing older than the batch survives."""
    decay, w = batch_weights(step_sizes(0, 5, learning_decay=0.7, learning_offset=0.0, floor=0.0))
    assert decay == 0.0
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("start", [0, 123])
def test_batch_equals_single_steps(schedule: dict, start: int) -> None:
    """s ← Π(1 − γ)·s + Σ w·x equals s ← (1 − γ)·s + γ·x applied point by point."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    s0 = rng.normal(size=3)
    gamma = step_sizes(start, len(x), **schedule)
    sequential = s0.copy()
    for g, xi in zip(gamma, x, strict=True):
        sequential = (1.0 - g) * sequential + g * xi
    decay, w = batch_weights(gamma)
    np.testing.assert_allclose(decay * s0 + w @ x, sequential, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_step_sizes_do_not_depend_on_chunking(schedule: dict) -> None:
    whole = step_sizes(5, 30, **schedule)
    parts = np.concatenate(
        [step_sizes(5, 4, **schedule), step_sizes(9, 17, **schedule), step_sizes(26, 9, **schedule)]
    )
    np.testing.assert_array_equal(whole, parts)


def test_step_sizes_follow_the_formula_and_floor() -> None:
    gamma = step_sizes(3, 4, learning_decay=0.7, learning_offset=2.0, floor=0.0)
    np.testing.assert_allclose(gamma, (np.arange(4, 8) + 2.0) ** -0.7, rtol=1e-14)
    floor = floor_for_halflife(10.0)
    late = step_sizes(10**6, 3, learning_decay=1.0, learning_offset=0.0, floor=floor)
    np.testing.assert_array_equal(late, np.full(3, floor))
    assert np.all(step_sizes(0, 10, learning_decay=1.0, learning_offset=0.0, floor=0.0) <= 1.0)


@pytest.mark.parametrize("halflife", [1.0, 10.0, 1000.0, 1e6])
def test_floor_halves_old_statistics_every_halflife(halflife: float) -> None:
    gamma = floor_for_halflife(halflife)
    assert 0.0 < gamma < 1.0
    assert (1.0 - gamma) ** halflife == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("halflife", [None, float("inf")])
def test_no_halflife_means_no_floor(halflife: float | None) -> None:
    assert floor_for_halflife(halflife) == 0.0


@pytest.mark.parametrize("kind", ["full", "diag", "spherical"])
def test_one_batch_blend_equals_single_point_blends(kind: str) -> None:
    """With the responsibilities held fixed, one weighted batch blend equals per-point blends."""
    spec = KINDS[kind]
    rng = np.random.default_rng(1)
    n, K, d = 25, 3, 3
    X = rng.normal(0.0, 2.0, size=(n, d))
    R = rng.dirichlet(np.ones(K), size=n)
    start = batch_statistics(spec, X[:10], R[:10] / 10, np.zeros(d))
    gamma = step_sizes(10, n, learning_decay=0.75, learning_offset=3.0, floor=0.0)

    one_by_one = start.copy()
    for i in range(n):
        point = batch_statistics(spec, X[i : i + 1], R[i : i + 1] * gamma[i], np.zeros(d))
        one_by_one.blend(point, 1.0 - gamma[i], spec)

    batched = start.copy()
    decay, w = batch_weights(gamma)
    batched.blend(batch_statistics(spec, X, R * w[:, None], np.zeros(d)), decay, spec)

    np.testing.assert_allclose(batched.nk, one_by_one.nk, rtol=1e-12)
    np.testing.assert_allclose(batched.means, one_by_one.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched.scatter, one_by_one.scatter, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("start", [0, 500, 10_000, 10_050, 10**6])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_batch_schedule_is_batch_weights_of_the_step_sizes(start: int, n: int) -> None:
    knobs = dict(learning_decay=1.0, learning_offset=10.0, floor=floor_for_halflife(1000.0))
    gamma = step_sizes(start, n, **knobs)
    decay, w = batch_weights(gamma)
    got_decay, got_w, last = batch_schedule(start, n, **knobs)
    assert got_decay == decay and last == gamma[-1]
    np.testing.assert_array_equal(got_w, w)
