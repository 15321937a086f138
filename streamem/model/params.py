"""Mixture parameters derived from the statistics, and the E-step that uses them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from streamem.model.covariance import CovarianceKind, estimate_log_gaussian_prob
from streamem.model.statistics import SufficientStatistics


@dataclass(frozen=True)
class Params:
    """Everything the E-step needs, refreshed from the statistics after each update.

    Attributes
    ----------
    weights : (K,) mixing weights.
    means : (K, d) means.
    covariances : the kind's covariance shape, floored by ``reg_covar``.
    precisions_chol : the kind's precision Cholesky factors.
    center : (d,) reference point subtracted from the points before any product.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_chol: np.ndarray
    center: np.ndarray

    @property
    def log_weights(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.weights)


def params_from_statistics(
    stats: SufficientStatistics, kind: CovarianceKind, reg_covar: float
) -> Params:
    """The M-step: weights, means, floored covariances and their precision Cholesky factors."""
    weights = stats.nk / stats.nk.sum()
    covariances = stats.covariances(kind, reg_covar)
    try:
        prec_chol = kind.precision_cholesky(covariances)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - the floor makes this unreachable
        raise FloatingPointError(
            "a covariance is not positive definite even after the floor; increase reg_covar "
            "or standardise the features"
        ) from exc
    center = weights @ stats.means
    return Params(weights, stats.means.copy(), covariances, prec_chol, center)


def estimate_weighted_log_prob(kind: CovarianceKind, params: Params, X: np.ndarray) -> np.ndarray:
    """log π_k + log N(x | μ_k, Σ_k), (n, K)."""
    Y = X - params.center
    M = params.means - params.center
    return estimate_log_gaussian_prob(kind, Y, M, params.precisions_chol) + params.log_weights


def row_max(a: np.ndarray) -> np.ndarray:
    """Max of each row of a (n, K); numpy reduces a short last axis slowly, a transposed copy fast."""
    return np.ascontiguousarray(a.T).max(axis=0)


def row_argmax(a: np.ndarray) -> np.ndarray:
    """Argmax of each row of a (n, K) (first one on ties)."""
    return np.ascontiguousarray(a.T).argmax(axis=0)


def row_sum(a: np.ndarray) -> np.ndarray:
    """Sum of each row of a (n, K), as a GEMV."""
    return a @ np.ones(a.shape[1])


def log_sum_exp(a: np.ndarray) -> np.ndarray:
    """log Σ_k exp(a_nk) per row of a (n, K), stable for rows of −inf or huge values."""
    top = row_max(a)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return top + np.log(row_sum(np.exp(a - top[:, None])))


def e_step(
    kind: CovarianceKind, params: Params, X: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Responsibilities (n, K) and log p(x) (n,), in log space throughout."""
    weighted = estimate_weighted_log_prob(kind, params, X)
    log_lik = log_sum_exp(weighted)
    resp = np.exp(weighted - log_lik[:, None])
    return resp, log_lik


def hard_responsibilities(resp: np.ndarray) -> np.ndarray:
    """One-hot of the most responsible component: the classification-EM (k-means) limit."""
    hard = np.zeros_like(resp)
    hard[np.arange(len(resp)), row_argmax(resp)] = 1.0
    return hard
