"""Centred sufficient statistics against the naive N = Σr, S1 = Σ r x and S2 = Σ r xxᵀ."""

from __future__ import annotations

import numpy as np
import pytest

from streamem.model.covariance import DENSE_MOMENT_FEATURES, KINDS
from streamem.model.statistics import SufficientStatistics, batch_statistics

TYPES = ("full", "diag", "spherical")


def naive(kind: str, X: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N (K,), S1 (K, d) and S2 in the kind's scatter shape, straight from the definitions."""
    N = R.sum(axis=0)
    S1 = R.T @ X
    S2 = np.einsum("nk,ni,nj->kij", R, X, X)
    if kind == "diag":
        S2 = np.diagonal(S2, axis1=1, axis2=2)
    elif kind == "spherical":
        S2 = np.trace(S2, axis1=1, axis2=2) / X.shape[1]
    return N, S1, S2


def raw(kind: str, stats: SufficientStatistics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centred statistics turned back into N, S1 and S2 (S2 = scatter + N μμᵀ)."""
    N, mu = stats.nk, stats.means
    shape = (-1,) + (1,) * (stats.scatter.ndim - 1)
    return N, N[:, None] * mu, stats.scatter + N.reshape(shape) * KINDS[kind].outer(mu, mu)


def weighted_batch(seed: int, n: int = 40, K: int = 3, d: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 2.0, size=(n, d)) + rng.normal(0.0, 5.0, size=d)
    R = rng.dirichlet(np.ones(K), size=n) * rng.uniform(0.0, 1.0 / n, size=(n, 1))
    return X, R


@pytest.mark.parametrize("kind", TYPES)
def test_batch_statistics_match_naive_definitions(kind: str) -> None:
    X, R = weighted_batch(0)
    center = np.array([1.0, -2.0, 0.5])
    stats = batch_statistics(KINDS[kind], X - center, R, center)
    N, S1, S2 = naive(kind, X, R)
    got_N, got_S1, got_S2 = raw(kind, stats)
    np.testing.assert_allclose(got_N, N, rtol=1e-12)
    np.testing.assert_allclose(got_S1, S1, rtol=1e-10)
    np.testing.assert_allclose(got_S2, S2, rtol=1e-10)
    assert stats.scatter.shape == KINDS[kind].scatter_shape(3, 3)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("decay", [0.0, 0.3, 0.97, 1.0])
def test_blend_is_linear_in_s_space(kind: str, decay: float) -> None:
    """blend(batch, decay) equals decay·old + new for N, S1 and S2."""
    spec = KINDS[kind]
    X_old, R_old = weighted_batch(1)
    X_new, R_new = weighted_batch(2, n=25)
    c_old, c_new = X_old.mean(axis=0), X_new[0]
    old = batch_statistics(spec, X_old - c_old, R_old, c_old)
    new = batch_statistics(spec, X_new - c_new, R_new, c_new)
    pairs = zip(naive(kind, X_old, R_old), naive(kind, X_new, R_new), strict=True)
    expected = [decay * a + b for a, b in pairs]
    old.blend(new, decay, spec)
    for got, want in zip(raw(kind, old), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", TYPES)
def test_blend_with_an_empty_component_keeps_it_finite(kind: str) -> None:
    """A component with no mass on either side stays finite (no 0/0) and keeps zero mass."""
    spec = KINDS[kind]
    X, R = weighted_batch(3)
    R[:, 1] = 0.0
    stats = batch_statistics(spec, X, R, np.zeros(3))
    stats.blend(batch_statistics(spec, X, R, np.zeros(3)), 0.0, spec)
    assert stats.nk[1] == 0.0
    assert np.isfinite(stats.means).all() and np.isfinite(stats.scatter).all()


def test_many_features_separated_components_match_naive_definitions() -> None:
    """d > DENSE_MOMENT_FEATURES on well-separated components (the sparse second moments):
    responsibilities that underflow are skipped without changing S2 beyond rounding."""
    rng = np.random.default_rng(7)
    K, d, n = 4, DENSE_MOMENT_FEATURES + 8, 400
    labels = rng.integers(K, size=n)
    X = 30.0 * rng.normal(size=(K, d))[labels] + rng.normal(size=(n, d))
    R = np.full((n, K), 1e-30)
    R[np.arange(n), labels] = 1.0
    R = R / R.sum(axis=1, keepdims=True) / n
    stats = batch_statistics(KINDS["full"], X - X.mean(axis=0), R, X.mean(axis=0))
    N, S1, S2 = naive("full", X, R)
    got_N, got_S1, got_S2 = raw("full", stats)
    np.testing.assert_allclose(got_N, N, rtol=1e-12)
    np.testing.assert_allclose(got_S1, S1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_S2, S2, rtol=1e-9, atol=1e-9)


def test_far_from_origin_the_centred_covariance_is_accurate() -> None:
    """Data at 1e8 with unit scale: blended centred statistics give the covariance to 1e-6.

    The naive S2/N − μμᵀ from the same numbers is off by O(1), which shows the test can fail.
    """
    rng = np.random.default_rng(4)
    d, offset = 3, 1e8
    A = rng.normal(size=(d, d))
    true_cov = A @ A.T + np.eye(d)
    X = offset + rng.multivariate_normal(np.zeros(d), true_cov, size=3000)
    reference = np.cov(X - X.mean(axis=0), rowvar=False, bias=True)
    spec = KINDS["full"]
    stats = None
    for chunk in np.array_split(X, 6):
        R = np.full((len(chunk), 1), 1.0 / len(X))
        center = chunk[0]
        batch = batch_statistics(spec, chunk - center, R, center)
        if stats is None:
            stats = batch
        else:
            stats.blend(batch, 1.0, spec)
    assert stats is not None
    centred = stats.scatter[0] / stats.nk[0]
    assert np.max(np.abs(centred - reference)) / np.max(np.abs(reference)) < 1e-6

    w = 1.0 / len(X)
    S1, S2 = w * X.sum(axis=0), w * (X.T @ X)
    naive_cov = S2 - np.outer(S1, S1)
    assert np.max(np.abs(naive_cov - reference)) / np.max(np.abs(reference)) > 1e-2


@pytest.mark.parametrize("kind", TYPES)
def test_normalise_keeps_means_and_covariances(kind: str) -> None:
    spec = KINDS[kind]
    X, R = weighted_batch(5)
    stats = batch_statistics(spec, X, 3.7 * R, np.zeros(3))
    before = stats.copy()
    stats.normalise()
    assert stats.nk.sum() == pytest.approx(1.0, rel=1e-14)
    np.testing.assert_allclose(stats.means, before.means, rtol=1e-14)
    np.testing.assert_allclose(stats.covariances(spec, 1e-6), before.covariances(spec, 1e-6),
                               rtol=1e-12)
    np.testing.assert_allclose(stats.nk / before.nk, 1.0 / before.nk.sum(), rtol=1e-12)


def test_copy_is_independent() -> None:
    X, R = weighted_batch(6)
    stats = batch_statistics(KINDS["full"], X, R, np.zeros(3))
    clone = stats.copy()
    clone.nk[0] = 99.0
    clone.means[0, 0] = 99.0
    clone.scatter[0, 0, 0] = 99.0
    assert stats.nk[0] != 99.0 and stats.means[0, 0] != 99.0 and stats.scatter[0, 0, 0] != 99.0
