"""The model's quality bars, against scikit-learn's batch ``GaussianMixture``.

Each test streams 10^4–10^5 points; they are marked ``slow`` but are part of the suite.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from streamem import OnlineGMM
from streamem.synthetic import OUTLIER, Mixture, Stream

pytestmark = pytest.mark.slow


def stream(model: OnlineGMM, X: np.ndarray, batch: int) -> list:
    return [model.partial_fit(X[i : i + batch]) for i in range(0, len(X), batch)]


GRID = [(4, 2), (8, 8), (16, 8), (8, 32), (16, 32)]


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize(("n_components", "n_features"), GRID, ids=[f"K{k}-d{d}" for k, d in GRID])
def test_one_pass_matches_batch_em(n_components: int, n_features: int, seed: int) -> None:
    """One pass over 100 000 points, full covariances: held-out within 0.02 nats/point of batch
    EM at every (K, d) of the grid (the larger models need the half-life's floor of
    ``POINTS_PER_PARAMETER`` points per parameter: with 10 000 points (16, 32) was 0.12 short)."""
    mix = Mixture.random(n_components, n_features, random_state=seed)
    X, _ = mix.sample(100_000, random_state=seed + 10)
    held_out, _ = mix.sample(20_000, random_state=seed + 20)
    online = OnlineGMM(n_components, random_state=seed)
    stream(online, X, 1000)
    batch = GaussianMixture(n_components, random_state=seed).fit(X)
    assert online.score(held_out) >= batch.score(held_out) - 0.02


def test_batch_size_does_not_change_the_model() -> None:
    """Batches of 1 vs 2000 over the same 30 000 points: held-out within 0.02 nats/point."""
    mix = Mixture.random(8, 8, random_state=3)
    X, _ = mix.sample(30_000, random_state=1)
    held_out, _ = mix.sample(20_000, random_state=2)
    scores = []
    for batch in (1, 2000):
        model = OnlineGMM(8, random_state=0)
        stream(model, X, batch)
        scores.append(model.score(held_out))
    assert abs(scores[0] - scores[1]) <= 0.02


def test_anomalies_match_an_oracle() -> None:
    """1 % uniform outliers: precision and recall within 0.05 of a detector that knows the truth."""
    mix = Mixture.random(8, 8, random_state=4)
    X, labels = Stream(mix, outlier_share=0.01).take(100_000, random_state=5)
    model = OnlineGMM(8, random_state=0)
    flagged = np.concatenate([r.anomaly for r in stream(model, X, 1000)])
    late = slice(20_000, None)  # past warm-up and the first settling
    flagged, outlier = flagged[late], labels[late] == OUTLIER
    reference, _ = mix.sample(400_000, random_state=9)
    threshold = np.quantile(mix.score_samples(reference), model.anomaly_rate)
    oracle = mix.score_samples(X[late]) < threshold

    def precision_recall(flags: np.ndarray) -> tuple[float, float]:
        hits = (flags & outlier).sum()
        return hits / max(flags.sum(), 1), hits / outlier.sum()

    precision, recall = precision_recall(flagged)
    oracle_precision, oracle_recall = precision_recall(oracle)
    assert abs(precision - oracle_precision) <= 0.05
    assert abs(recall - oracle_recall) <= 0.05
    inlier_rate = flagged[~outlier].mean()
    assert model.anomaly_rate / 2 <= inlier_rate <= 2 * model.anomaly_rate


@pytest.mark.parametrize("seed", [0, 2])
def test_recovers_from_an_abrupt_change(seed: int) -> None:
    """After a switch to a new mixture: within 0.1 nats/point of batch EM within 20 000 points."""
    before = Mixture.random(8, 8, random_state=seed)
    after = Mixture.random(8, 8, random_state=seed + 100)
    X, _ = Stream(before, after=after, drift_at=50_000).take(70_000, random_state=seed)
    held_out, _ = after.sample(20_000, random_state=7)
    model = OnlineGMM(8, random_state=0)
    stream(model, X, 1000)
    batch = GaussianMixture(8, random_state=0).fit(X[50_000:])
    assert model.score(held_out) >= batch.score(held_out) - 0.1
    assert model.resets_["drift"] + model.resets_["stranded"] >= 1


@pytest.mark.parametrize(
    ("loader", "n_components", "covariance_type"),
    [(load_iris, 3, "full"), (load_wine, 3, "diag"), (load_breast_cancer, 3, "full"),
     (load_breast_cancer, 2, "diag")],
    ids=["iris-full", "wine-diag", "cancer-full", "cancer-diag"],
)
def test_real_data_several_passes(loader, n_components: int, covariance_type: str) -> None:
    """Standardised real data, 10 passes: no worse than a typical single-start batch fit + 0.1."""
    X_train, X_test = train_test_split(loader().data, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    typical = np.median([
        GaussianMixture(n_components, covariance_type=covariance_type, random_state=s)
        .fit(X_train).score(X_test)
        for s in range(7)
    ])
    model = OnlineGMM(n_components, covariance_type=covariance_type, random_state=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        model.partial_fit(X_train[rng.permutation(len(X_train))])
    assert model.score(X_test) >= typical - 0.1


def _repeated_point(X: np.ndarray) -> np.ndarray:
    return np.concatenate([X[:3000], np.repeat(X[3000:3001], 8000, axis=0), X[3000:]])


def _constant_feature(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    X[:, 2] = 7.0
    return X


def _far_point(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    X[5000] = 1e6
    return X


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize(
    ("make", "n_components"),
    [(_repeated_point, 4), (_constant_feature, 4), (_far_point, 4), (lambda X: X, 12),
     (lambda X: np.ones_like(X), 4), (lambda X: X + 1e8, 4)],
    ids=["repeated-point", "constant-feature", "far-point", "K-too-large", "all-identical",
         "far-from-origin"],
)
def test_degenerate_streams_stay_finite(make, n_components: int, covariance_type: str) -> None:
    """Degenerate streams never crash and never put a NaN or Inf into the model."""
    X, _ = Mixture.random(4, 5, random_state=0).sample(12_000, random_state=1)
    model = OnlineGMM(n_components, covariance_type=covariance_type, random_state=0)
    with np.errstate(over="raise", invalid="raise"):
        for result in stream(model, make(X), 500):
            assert np.isfinite(result.log_likelihood).all()
            assert np.isfinite(result.responsibilities).all()
    assert np.isfinite(model.weights_).all() and np.isclose(model.weights_.sum(), 1.0)
    assert np.isfinite(model.means_).all() and np.isfinite(model.covariances_).all()
    assert np.isfinite(model.condition_numbers_).all()


def _wild(n: int, seed: int) -> np.ndarray:
    """n valid but absurd points (8,): random signs, magnitudes 1e6 to 1e15 per feature."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=(n, 8)) * 10 ** rng.uniform(6, 15, size=(n, 8))


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("wild", [np.full((1, 8), 1e15), _wild(1, 1), _wild(3, 2), _wild(30, 3)],
                         ids=["one-at-1e15", "one", "three", "thirty"])
def test_wild_points_in_the_warm_up_spoil_nothing(covariance_type: str, wild: np.ndarray) -> None:
    """A few valid but absurd points (up to ``input.max_abs_value``) among 1 000 warm-up points
    cost the others nothing: every batch is learned, held-out within 0.05 nats/point of the
    clean fit. Before: the statistics were shifted by the mixture's mean, which one point at
    1e15 moved to 1e12, and the scatters lost every digit (one component took 99.7 % of the
    weight); the collapse check's frame, swamped by such a component, could not be factored,
    so every later batch was refused; thirty such points took k-means++'s centres and lent
    their scale (1e24) to the component holding every other point, for good."""
    mix = Mixture.random(4, 8, random_state=6)
    X, _ = mix.sample(6000, random_state=7)
    held_out, _ = mix.sample(5000, random_state=8)
    scores = []
    for first in (X[:1000], np.vstack([X[:500], wild, X[500:1000]])):
        model = OnlineGMM(8, covariance_type=covariance_type, random_state=0)
        stream(model, np.vstack([first, X[1000:]]), 500)
        scores.append(model.score(held_out))
    assert scores[1] >= scores[0] - 0.05, scores


@pytest.mark.parametrize("scale", [1e6, 1e12])
def test_a_feature_on_a_large_scale_costs_the_others_nothing(scale: float) -> None:
    """One feature in other units (bytes, nanoseconds: ×``scale``) fits as well as unscaled,
    held-out log-likelihood corrected by the Jacobian within 0.01 nats/point; as scikit-learn.
    (The covariance floor added 1e-12 × the largest variance to every variance: 1 at 1e6, which
    washed out the features of order 1, 0.8 nats/point lost; 92 at 1e12.)"""
    mix = Mixture.random(4, 8, random_state=6)
    X, _ = mix.sample(10_000, random_state=7)
    held_out, _ = mix.sample(5000, random_state=8)
    units = np.ones(8)
    units[0] = scale
    scores = []
    for u in (np.ones(8), units):
        model = OnlineGMM(8, random_state=0)
        stream(model, X * u, 1000)
        scores.append(model.score(held_out * u) + np.log(u).sum())
    assert scores[1] >= scores[0] - 0.01, scores
