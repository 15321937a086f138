"""Split, merge and re-seed moves take a one-pass fit out of a poor start, and only then."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from streamem import OnlineGMM
from streamem.model import moves

MEANS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return MEANS[rng.integers(3, size=n)] + rng.normal(size=(n, 2))


def true_score(X: np.ndarray) -> float:
    density = sum(multivariate_normal(mu, np.eye(2)).pdf(X) for mu in MEANS) / 3
    return float(np.log(density).mean())


def poor_start() -> OnlineGMM:
    """Two components share the first cluster; one stretches across the other two."""
    means = np.array([[-0.7, 0.0], [0.7, 0.0], [5.0, 5.0]])
    covs = np.stack([np.diag([0.5, 1.0]), np.diag([0.5, 1.0]),
                     np.array([[26.0, -24.0], [-24.0, 26.0]])])
    return OnlineGMM.from_params([1 / 6, 1 / 6, 2 / 3], means, covs, random_state=0)


def stream(model: OnlineGMM, X: np.ndarray, batch: int = 500) -> None:
    for i in range(0, len(X), batch):
        model.partial_fit(X[i : i + batch])


def test_a_poor_start_is_left_by_merging_and_splitting() -> None:
    model = poor_start()
    stream(model, sample(30_000, 0))
    held_out = sample(20_000, 1)
    assert model.score(held_out) >= true_score(held_out) - 0.01
    assert model.resets_["merge"] >= 1
    assert model.resets_["split"] + model.resets_["reseed"] >= 1
    reasons = {reason for _, _, reason in model.collapse_history_}
    assert "merge" in reasons


def test_without_moves_the_poor_start_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference for the test above: stepwise EM alone does not leave this start."""
    monkeypatch.setattr(moves, "best_move", lambda *args, **kwargs: None)
    model = poor_start()
    stream(model, sample(30_000, 0))
    held_out = sample(20_000, 1)
    assert model.score(held_out) < true_score(held_out) - 0.5
    assert model.resets_["merge"] == model.resets_["split"] == 0


def test_a_good_fit_is_not_moved() -> None:
    covs = np.stack([np.eye(2)] * 3)
    model = OnlineGMM.from_params(np.full(3, 1 / 3), MEANS, covs, random_state=0)
    stream(model, sample(60_000, 2))
    assert model.resets_["merge"] == model.resets_["split"] == model.resets_["reseed"] == 0


def test_a_checkpoint_continues_the_same_moves() -> None:
    """The ring of recent inliers and the move back-off are saved: a restored model continues
    exactly as the original does."""
    X = sample(30_000, 3)
    model = poor_start()
    stream(model, X[:17_000])
    assert model._recent_n > 0  # a try is near: the ring is being filled
    restored = OnlineGMM.from_bytes(model.to_bytes())
    stream(model, X[17_000:])
    stream(restored, X[17_000:])
    assert model.resets_["merge"] >= 1
    assert model.resets_ == restored.resets_
    np.testing.assert_array_equal(model.means_, restored.means_)
    assert model.anomaly_threshold_ == restored.anomaly_threshold_
