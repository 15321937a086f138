"""A refused ``partial_fit`` leaves the model exactly as it was; nothing invalid is committed."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from model_helpers import assert_positive_definite

from streamem import OnlineGMM
from streamem.model import gmm as gmm_module
from streamem.model import kernel, point
from streamem.model.results import ModelRejected
from streamem.model.validation import max_abs_value

from .test_validation import assert_unchanged, points, snapshot


def model_at(stage: str, covariance_type: str = "full") -> OnlineGMM:
    """A model in its warm-up, just before the warm-up fit, or past it."""
    gmm = OnlineGMM(2, covariance_type=covariance_type, warmup=50, random_state=0)
    gmm.partial_fit(points({"warm-up": 30, "warm-up end": 49, "online": 400}[stage]))
    return gmm


def assert_valid(model: OnlineGMM) -> None:
    for value in (model.weights_, model.means_, model.covariances_, model.precisions_cholesky_):
        assert np.isfinite(value).all()
    assert_positive_definite(model._kind.to_full(model.covariances_, 3))


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("stage", ["warm-up", "warm-up end", "online"])
def test_the_largest_accepted_values_leave_a_valid_model(stage, covariance_type):
    """Up to the input bound, a far point is learned or refused, never committed invalid."""
    for v in (1e100, 1e140, 0.99 * max_abs_value(3)):
        model = model_at(stage, covariance_type)
        before = snapshot(model)
        X = points(10, seed=3)
        X[4] = [v, -v, v]
        try:
            res = model.partial_fit(X)
        except ModelRejected:
            assert_unchanged(before, model)
        else:
            assert np.isfinite(res.responsibilities).all()
            assert not np.isnan(res.log_likelihood).any()
        for seed in range(6):
            model.partial_fit(points(10, seed=10 + seed))
        assert_valid(model)


@pytest.mark.parametrize("stage", ["warm-up", "warm-up end", "online"])
@pytest.mark.parametrize("failure", [np.linalg.LinAlgError("not positive definite"),
                                     FloatingPointError("overflow"), AssertionError()])
def test_any_exception_inside_the_update_rolls_back(stage, failure):
    model = model_at(stage)
    before = snapshot(model)
    state = dict(model.__dict__)
    real = gmm_module.e_step

    def fails_after_learning(*args, **kwargs):
        real(*args, **kwargs)
        model.n_seen_ += 1  # as if half the update had happened
        raise failure

    with mock.patch.object(gmm_module, "e_step", side_effect=fails_after_learning), \
            pytest.raises(ModelRejected) as err:
        model.partial_fit(points(5, seed=4))
    assert isinstance(err.value, ValueError) and err.value.__cause__ is failure
    assert_unchanged(before, model)
    assert model.__dict__.keys() == state.keys()
    model.partial_fit(points(5, seed=4))
    assert_valid(model)


def test_nan_statistics_are_never_committed():
    model = model_at("online")
    before = snapshot(model)
    real = gmm_module.batch_statistics

    def poisoned(*args, **kwargs):
        stats = real(*args, **kwargs)
        stats.scatter = stats.scatter * np.nan
        return stats

    with mock.patch.object(gmm_module, "batch_statistics", side_effect=poisoned), \
            pytest.raises(ModelRejected, match="scatter would not be finite"):
        model.partial_fit(points(5, seed=5))
    assert_unchanged(before, model)


def test_a_non_finite_statistic_of_one_point_is_never_committed(monkeypatch):
    """One point takes its own path (``point``): a NaN in a component its update leaves
    unfactorised is caught all the same. (The compiled kernel's own check: test_kernel.)"""
    monkeypatch.setattr(kernel, "ENABLED", False)
    model = OnlineGMM(3, warmup=50, random_state=0)
    model.partial_fit(np.vstack([points(150, seed=8), points(150, seed=9) + 20.0]))
    x = points(1, seed=10)
    far = int(model.predict_proba(x)[0].argmin())
    before = snapshot(model)
    real = point.blend

    def poisoned(*args):
        stats, rows, drift = real(*args)
        stats.scatter[far, 0, 0] = np.nan
        return stats, rows, drift

    with mock.patch.object(point, "blend", side_effect=poisoned), \
            pytest.raises(ModelRejected, match="scatter would not be finite"):
        model.partial_fit(x)
    assert_unchanged(before, model)
    model.partial_fit(x)
    assert_valid(model)


def test_a_fresh_model_refused_on_its_first_batch_forgets_its_width():
    model = OnlineGMM(2, warmup=20)
    with mock.patch.object(gmm_module, "e_step", side_effect=FloatingPointError), \
            pytest.raises(ModelRejected):
        model.partial_fit(points(4))
    assert not hasattr(model, "n_features_in_") and model.n_seen_ == 0 and not model._buffer
    model.partial_fit(points(3, d=5))
    assert model.n_features_in_ == 5


@pytest.mark.parametrize("d", [1, 3, 1000])
def test_values_whose_squares_would_overflow_are_refused_before_anything(d):
    model = OnlineGMM(2, warmup=20)
    X = np.zeros((3, d))
    X[1, 0] = 1.01 * max_abs_value(d)
    with pytest.raises(ValueError, match=r"beyond .* in 1 row\(s\): 1") as err:
        model.partial_fit(X)
    assert not isinstance(err.value, ModelRejected)
    assert float(d) * max_abs_value(d) ** 2 * 1e19 < np.finfo(np.float64).max
    X[1, 0] = max_abs_value(d)
    model.partial_fit(X)
    with pytest.raises(ValueError, match="beyond"):
        OnlineGMM(2).partial_fit(np.full((2, d), -2 * max_abs_value(d)))


def test_a_warm_up_poison_pill_is_refused_and_the_stream_goes_on():
    """The issue's poison pill: 1e200 among the first points used to stop every later batch."""
    model = OnlineGMM(4, warmup=200, random_state=0)
    rng = np.random.default_rng(0)
    refused = 0
    for i in range(60):
        X = rng.normal(size=(10, 4))
        if i == 3:
            X[2] = [1e200, 0, 0, 0]
        try:
            model.partial_fit(X)
        except ValueError:
            refused += 1
            model.partial_fit(X[np.abs(X).max(axis=1) < 1e100])
    assert refused == 1
    assert model.initialized_ and model.n_seen_ == 599
    assert np.isfinite(model.covariances_).all() and np.isfinite(model.means_).all()
    assert_positive_definite(model.covariances_)


@pytest.mark.parametrize("n_points", [1, 7, 5000])
def test_a_refused_step_leaves_the_ring_of_recent_inliers_as_it_was(n_points):
    """The ring is not copied for a step: the rows a refused step wrote are written back
    (5000 points wrap the ring of 4096 rows). One point fails in ``_learn_point`` first (in
    the numpy path's M-step, or in the compiled kernel)."""

    def failing(*args):
        raise FloatingPointError

    model = model_at("online")
    model._move_wait = 1  # a try of the moves is near: the model keeps its recent inliers
    assert model._collecting()
    model._remember(points(4000, seed=6))  # the ring nearly full: the next rows wrap around
    before = snapshot(model)
    with mock.patch.object(OnlineGMM, "_refresh", side_effect=FloatingPointError), \
            mock.patch.object(gmm_module, "refresh_params", side_effect=FloatingPointError), \
            mock.patch.object(kernel, "compiled", return_value=failing), \
            pytest.raises(ModelRejected):
        model.partial_fit(points(n_points, seed=7) * 0.1)
    assert_unchanged(before, model)
    model.partial_fit(points(n_points, seed=7) * 0.1)
    assert model._recent_n == 4000 + min(n_points, model._recent_capacity())
