"""Checks at the model's edge: bad points and bad hyperparameters raise ``ValueError``."""

from __future__ import annotations

import io

import numpy as np
import pytest

from streamem import OnlineGMM
from streamem.errors import NotFittedError


def snapshot(model: OnlineGMM) -> dict[str, np.ndarray]:
    """Every saved array and the JSON header of a model: its whole learning state."""
    with np.load(io.BytesIO(model.to_bytes()), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def assert_unchanged(before: dict[str, np.ndarray], model: OnlineGMM) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def points(n: int, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.fixture(params=["warm-up", "online"])
def model(request: pytest.FixtureRequest) -> OnlineGMM:
    """A model in the middle of its warm-up, or one past it."""
    gmm = OnlineGMM(2, warmup=50, random_state=0)
    gmm.partial_fit(points(30 if request.param == "warm-up" else 80))
    return gmm


BAD_BATCHES = {
    "wrong feature count": (points(5, d=4), "is expecting 3 features"),
    "1-D": (np.ones(3), "2-D"),
    "3-D": (np.ones((2, 3, 1)), "2-D"),
    "strings": ([["a", "b", "c"]], "numeric"),
    "None": (np.array([[1.0, None, 2.0]], dtype=object), r"NaN or Inf in 1 row\(s\): 0"),
    "dict": ([[1.0, {}, 2.0]], "numeric"),
    "ragged": ([[1.0, 2.0, 3.0], [1.0]], "numeric"),
}


@pytest.mark.parametrize("name", list(BAD_BATCHES))
def test_bad_batch_raises_and_nothing_is_learned(model: OnlineGMM, name: str) -> None:
    X, message = BAD_BATCHES[name]
    before, n_seen, version = snapshot(model), model.n_seen_, model.version_
    with pytest.raises(ValueError, match=message):
        model.partial_fit(X)
    assert model.n_seen_ == n_seen and model.version_ == version
    assert_unchanged(before, model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_named_and_nothing_is_learned(model: OnlineGMM, bad: float) -> None:
    X = points(12, seed=1)
    X[3, 1] = bad
    X[7, 0] = bad
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"2 row\(s\): 3, 7"):
        model.partial_fit(X)
    assert_unchanged(before, model)


def test_many_non_finite_rows_are_elided() -> None:
    X = points(30)
    X[::2, 0] = np.nan
    with pytest.raises(ValueError, match=r"15 row\(s\): 0, 2, 4, .*18 …"):
        OnlineGMM(2).partial_fit(X)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples"])
def test_prediction_checks_points_too(model: OnlineGMM, method: str) -> None:
    with pytest.raises(ValueError, match="is expecting 3 features"):
        getattr(model, method)(points(4, d=2))
    X = points(4)
    X[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        getattr(model, method)(X)


def test_prediction_before_any_point_is_a_not_fitted_error() -> None:
    with pytest.raises(NotFittedError, match="partial_fit"):
        OnlineGMM(2).predict(points(3))


def test_the_fit_diagnostics_read_calm_before_any_point() -> None:
    fresh = OnlineGMM(2)
    assert (fresh.flag_excess_, fresh.tail_inflation_, fresh.fit_poor_) == (0.0, 1.0, False)


def test_first_rejected_batch_does_not_fix_the_feature_count() -> None:
    fresh = OnlineGMM(2, warmup=20)
    with pytest.raises(ValueError):
        fresh.partial_fit(np.full((2, 4), np.nan))
    assert not hasattr(fresh, "n_features_in_")
    fresh.partial_fit(points(5))
    assert fresh.n_features_in_ == 3


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, np.nan])
def test_bad_learning_rate_is_rejected_and_nothing_is_learned(model: OnlineGMM,
                                                              rate: float) -> None:
    before = snapshot(model)
    with pytest.raises(ValueError, match="learning_rate"):
        model.partial_fit(points(5), learning_rate=rate)
    assert_unchanged(before, model)


def test_bad_learning_rate_on_a_fresh_model_learns_nothing() -> None:
    """A batch rejected for its learning rate must not fix the model's feature count."""
    fresh = OnlineGMM(2, warmup=20)
    with pytest.raises(ValueError, match="learning_rate"):
        fresh.partial_fit(points(5, d=2), learning_rate=2.0)
    assert not hasattr(fresh, "n_features_in_")
    fresh.partial_fit(points(5, d=3))
    assert fresh.n_features_in_ == 3


BAD_HYPERPARAMETERS = [
    ("n_components", 0), ("n_components", 2.5), ("n_components", True), ("n_components", "3"),
    ("covariance_type", "tied"), ("init", "k-means"), ("assignment", "fuzzy"),
    ("reg_covar", 0.0), ("reg_covar", -1e-6), ("reg_covar", np.nan), ("reg_covar", np.inf),
    ("reg_covar", "small"),
    ("learning_decay", 0.5), ("learning_decay", 1.01), ("learning_decay", 0.0),
    ("learning_offset", -1.0), ("learning_offset", np.nan),
    ("halflife", 0.0), ("halflife", -10.0), ("halflife", np.nan),
    ("warmup", 0), ("warmup", 1.5), ("warmup", True),
    ("anomaly_rate", 0.0), ("anomaly_rate", 1.0), ("anomaly_rate", np.nan),
    ("random_state", -1), ("random_state", "seed"),
]


@pytest.mark.parametrize(("name", "value"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameter_names_the_parameter(name: str, value: object) -> None:
    """Checked when learning starts (scikit-learn's ``__init__`` only stores parameters)."""
    gmm = OnlineGMM(**{name: value})
    with pytest.raises(ValueError, match=name):
        gmm.partial_fit(points(3))


@pytest.mark.parametrize(("name", "value"), [
    ("n_components", np.int64(3)), ("halflife", None), ("halflife", np.inf), ("warmup", None),
    ("learning_decay", 1.0), ("learning_offset", 0.0), ("random_state", 0),
])
def test_good_edge_hyperparameters_are_accepted(name: str, value: object) -> None:
    gmm = OnlineGMM(**{name: value})
    assert gmm.get_params()[name] is value or gmm.get_params()[name] == value
