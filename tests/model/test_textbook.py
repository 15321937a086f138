"""One ``learning_rate=1.0`` step is one exact batch EM iteration.

The E-step and M-step are written out by hand (plain numpy, no streamem code) on a textbook-size
example, and checked against scikit-learn's own M-step on a larger one.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from streamem import OnlineGMM

REG = 1e-6
EXACT = dict(anomaly_rate=1e-3, update_on_anomaly=True, reg_covar=REG, random_state=0)


def gauss_1d(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-((x - mean) ** 2) / (2.0 * var)) / np.sqrt(2.0 * np.pi * var)


def test_one_dimensional_two_components_by_hand() -> None:
    x = np.array([-2.1, -1.4, -0.9, 0.2, 1.1, 2.3, 2.8, 3.5])
    pi = np.array([0.4, 0.6])
    mu = np.array([-1.0, 2.0])
    var = np.array([1.0, 1.5])

    # E-step with the given variances: from_params takes them floor included.
    joint = np.stack([pi[k] * gauss_1d(x, mu[k], var[k]) for k in range(2)], axis=1)
    resp = joint / joint.sum(axis=1, keepdims=True)
    log_lik = np.log(joint.sum(axis=1))

    # M-step.
    nk = resp.sum(axis=0)
    new_pi = nk / len(x)
    new_mu = (resp * x[:, None]).sum(axis=0) / nk
    new_var = (resp * (x[:, None] - new_mu) ** 2).sum(axis=0) / nk + REG

    gmm = OnlineGMM.from_params(pi, mu[:, None], var[:, None, None], **EXACT)
    result = gmm.partial_fit(x[:, None], learning_rate=1.0)

    np.testing.assert_allclose(result.responsibilities, resp, rtol=1e-10)
    np.testing.assert_allclose(result.log_likelihood, log_lik, rtol=1e-10)
    np.testing.assert_array_equal(result.labels, resp.argmax(axis=1))
    assert not result.warmup.any()
    np.testing.assert_allclose(gmm.weights_, new_pi, rtol=1e-10)
    np.testing.assert_allclose(gmm.means_[:, 0], new_mu, rtol=1e-10)
    np.testing.assert_allclose(gmm.covariances_[:, 0, 0], new_var, rtol=1e-10)


def test_two_dimensional_full_covariances_by_hand() -> None:
    X = np.array([[0.0, 0.5], [1.0, 1.2], [0.4, -0.3], [3.9, 4.2], [4.6, 3.1], [5.2, 4.8],
                  [2.0, 2.5]])
    pi = np.array([0.5, 0.5])
    mu = np.array([[0.5, 0.5], [4.5, 4.0]])
    cov = np.array([[[1.0, 0.3], [0.3, 0.8]], [[0.9, -0.2], [-0.2, 1.1]]])

    def density(k: int) -> np.ndarray:
        c = cov[k]
        det = c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0]
        inv = np.array([[c[1, 1], -c[0, 1]], [-c[1, 0], c[0, 0]]]) / det
        diff = X - mu[k]
        maha = np.einsum("ni,ij,nj->n", diff, inv, diff)
        return np.exp(-0.5 * maha) / (2.0 * np.pi * np.sqrt(det))

    joint = np.stack([pi[k] * density(k) for k in range(2)], axis=1)
    resp = joint / joint.sum(axis=1, keepdims=True)
    nk = resp.sum(axis=0)
    new_mu = resp.T @ X / nk[:, None]
    new_cov = np.stack([
        (resp[:, k, None] * (X - new_mu[k])).T @ (X - new_mu[k]) / nk[k] + REG * np.eye(2)
        for k in range(2)
    ])

    gmm = OnlineGMM.from_params(pi, mu, cov, **EXACT)
    result = gmm.partial_fit(X, learning_rate=1.0)

    np.testing.assert_allclose(result.responsibilities, resp, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(gmm.weights_, nk / len(X), rtol=1e-10)
    np.testing.assert_allclose(gmm.means_, new_mu, rtol=1e-10)
    np.testing.assert_allclose(gmm.covariances_, new_cov, rtol=1e-9)


def initial_covariances(kind: str, K: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "full":
        A = rng.normal(size=(K, d, d))
        return A @ np.swapaxes(A, 1, 2) / d + np.eye(d)
    if kind == "diag":
        return rng.uniform(0.5, 2.0, size=(K, d))
    return rng.uniform(0.5, 2.0, size=K)


@pytest.mark.parametrize("kind", ["full", "diag", "spherical"])
def test_one_step_matches_sklearn_m_step(kind: str) -> None:
    """200 points (fewer than one collapse-check period): the step equals sklearn's M-step."""
    rng = np.random.default_rng(11)
    K, d, n = 3, 3, 200
    mu = rng.normal(0.0, 3.0, size=(K, d))
    X = mu[rng.integers(K, size=n)] + rng.normal(size=(n, d))
    gmm = OnlineGMM.from_params(rng.dirichlet(np.ones(K) * 5), mu + rng.normal(size=(K, d)),
                                initial_covariances(kind, K, d, rng), covariance_type=kind,
                                **EXACT)
    result = gmm.partial_fit(X, learning_rate=1.0)
    nk, means, covariances = _estimate_gaussian_parameters(X, result.responsibilities, REG, kind)
    np.testing.assert_allclose(gmm.weights_, nk / n, rtol=1e-9)
    np.testing.assert_allclose(gmm.means_, means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gmm.covariances_, covariances, rtol=1e-8)
    assert gmm.learning_rate_ == 1.0


def test_two_steps_are_two_batch_em_iterations() -> None:
    """Repeated ``learning_rate=1.0`` steps on the same batch are batch EM iterations."""
    rng = np.random.default_rng(12)
    X = np.concatenate([rng.normal(-2.0, 1.0, (60, 2)), rng.normal(3.0, 0.7, (40, 2))])
    gmm = OnlineGMM.from_params([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]],
                                np.stack([np.eye(2), np.eye(2)]), **EXACT)
    for _ in range(3):
        resp = gmm.predict_proba(X)
        gmm.partial_fit(X, learning_rate=1.0)
        nk, means, covariances = _estimate_gaussian_parameters(X, resp, REG, "full")
        np.testing.assert_allclose(gmm.weights_, nk / len(X), rtol=1e-9)
        np.testing.assert_allclose(gmm.means_, means, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gmm.covariances_, covariances, rtol=1e-8)
