"""Mixture parameters derived from the statistics, and the E-step that uses them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamem.model.covariance import (
    LOG_2PI,
    RELATIVE_FLOOR,
    CovarianceKind,
    estimate_log_gaussian_prob,
)
from streamem.model.statistics import TINY, SufficientStatistics


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

    log_weights: np.ndarray  # (K,) log π_k, −inf for an empty component
    log_det: np.ndarray  # (K,) log det of each precision Cholesky factor (= −½ log det Σ_k)
    log_norm: np.ndarray  # (K,) log π_k + log_det − ½ d log 2π: log π_k N(μ_k | μ_k, Σ_k)


def params_from_statistics(
    stats: SufficientStatistics, kind: CovarianceKind, reg_covar: float
) -> Params:
    """The M-step: weights, means, floored covariances and their precision Cholesky factors."""
    weights = stats.nk / stats.nk.sum()
    covariances = stats.covariances(kind, reg_covar)
    try:
        return make_params(kind, weights, stats.means.copy(), covariances)
    except np.linalg.LinAlgError:
        # Rounding (points ~1e5 apart at unit scale) left an eigenvalue below the floor.
        return make_params(kind, weights, stats.means.copy(),
                           clip_eigenvalues(covariances, reg_covar))


def refresh_params(
    stats: SufficientStatistics,
    kind: CovarianceKind,
    reg_covar: float,
    previous: Params,
    rows: list[int] | np.ndarray,
) -> Params:
    """``params_from_statistics`` after a step that moved only the covariances ``rows`` (m,).

    Weights and means come from ``stats``; the covariances ``rows`` are computed and factorised
    again, the others keep ``previous``'s covariance and factor (``point.blend`` picks the
    rows so that a kept factor is that of the current covariance to within ``STALE_LIMIT``).
    The log dets of the factors computed again come from ``kind.refresh`` (equal to
    ``kind.log_det``'s to rounding: ``OnlineGMM._settle``).
    """
    nk, means = stats.nk, stats.means
    covariances, prec, log_det = previous.covariances, previous.precisions_chol, previous.log_det
    if len(rows):
        covariances, prec, log_det = covariances.copy(), prec.copy(), log_det.copy()
        masses = nk.tolist()
        try:
            fresh = kind.refresh(stats.scatter, [max(masses[k], TINY) for k in rows], rows,
                                 reg_covar, covariances, prec, means.shape[1])
        except np.linalg.LinAlgError:
            return params_from_statistics(stats, kind, reg_covar)
        for k, value in zip(rows, fresh, strict=True):
            log_det[k] = value
    return make_params(kind, nk / np.add.reduce(nk), means.copy(), covariances, prec_chol=prec,
                       log_det=log_det)


def make_params(
    kind: CovarianceKind,
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    center: np.ndarray | None = None,
    prec_chol: np.ndarray | None = None,
    log_det: np.ndarray | None = None,
) -> Params:
    """Params from weights, means and floored covariances; ``center`` defaults to
    :func:`reference_point`.

    ``prec_chol`` are the covariances' precision factors and ``log_det`` their log dets (K,)
    when the caller has them.
    """
    if 0.0 not in weights.tolist():  # weights.all(), faster for K numbers
        log_weights = np.log(weights)
    else:  # an empty component: −inf, without a warning
        log_weights = np.log(weights, out=np.full(len(weights), -np.inf), where=weights > 0)
    if prec_chol is None:
        prec_chol = kind.precision_cholesky(covariances)
    d = means.shape[1]
    if log_det is None:
        log_det = kind.log_det(prec_chol, d)
    if center is None:
        center = reference_point(weights, means)
    return Params(weights, means, covariances, prec_chol, center, log_weights, log_det,
                  log_weights + (log_det - 0.5 * d * LOG_2PI))


def reference_point(weights: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The point (d,) the statistics are shifted by: the mean of the heaviest component.

    Any point near the data keeps the moments' cancellation small; the mixture's mean does not
    do: one component of weight 1e-3 at 1e15 moves it to 1e12, and scatters about means of
    order 10 computed about it lose every digit.
    """
    return means[int(weights.argmax())]


def clip_eigenvalues(covariances: np.ndarray, floor: float) -> np.ndarray:
    """Full covariances (K, d, d) with every eigenvalue raised to at least ``floor``."""
    eigval, eigvec = np.linalg.eigh(covariances)
    eigval = np.maximum(eigval, floor + RELATIVE_FLOOR * np.abs(eigval).max(axis=1, keepdims=True))
    return np.einsum("kij,kj,klj->kil", eigvec, eigval, eigvec)


def centred(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """X − center (n, d), as the transpose of a contiguous (d, n) array.

    Every product over the points (the E-step's GEMM, the second moments' features) wants the
    points along contiguous rows; the online step computes this once for its E- and M-step.
    """
    YT = np.empty((X.shape[1], X.shape[0]))
    np.subtract(X.T, center[:, None], out=YT)
    return YT.T


def estimate_weighted_log_prob(
    kind: CovarianceKind, params: Params, X: np.ndarray, Y: np.ndarray | None = None
) -> np.ndarray:
    """log π_k + log N(x | μ_k, Σ_k), (n, K); ``Y`` is ``centred(X, params.center)`` if known."""
    if Y is None:
        Y = centred(X, params.center)
    M = params.means - params.center
    return estimate_log_gaussian_prob(kind, Y, M, params.precisions_chol, params.log_weights,
                                      params.log_det)


def row_max(a: np.ndarray) -> np.ndarray:
    """Max of each row of a (n, K) (numpy reduces a short last axis slowly; a transpose fast)."""
    return np.ascontiguousarray(a.T).max(axis=0)


def row_argmax(a: np.ndarray) -> np.ndarray:
    """Argmax of each row of a (n, K) (first one on ties)."""
    return np.ascontiguousarray(a.T).argmax(axis=0)


def e_step(
    kind: CovarianceKind, params: Params, X: np.ndarray, Y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Responsibilities (n, K) and log p(x) (n,), in log space throughout.

    The responsibilities are the transpose of a contiguous (K, n) array, as the component-wise
    log densities are: every reduction over components runs along contiguous rows. ``Y`` is
    ``centred(X, params.center)`` when the caller already has it.
    """
    weighted = estimate_weighted_log_prob(kind, params, X, Y).T
    top = weighted.max(axis=0)
    lost = ~np.isfinite(top)  # a point no component gives a finite density
    if lost.any():
        top[lost] = 0.0
    weighted -= top
    scaled = np.exp(weighted, out=weighted)
    total = np.ones(len(scaled)) @ scaled  # ≥ 1 where top was finite: the top term is exp(0)
    # Normalise by the sum itself, not by exp(log p): when log p is huge, their difference
    # loses every digit and the responsibilities would not sum to one.
    scaled /= total
    if not lost.any():
        return scaled.T, top + np.log(total)
    with np.errstate(divide="ignore"):
        return scaled.T, top + np.log(total)


def hard_responsibilities(resp: np.ndarray) -> np.ndarray:
    """One-hot of the most responsible component: the classification-EM (k-means) limit."""
    hard = np.zeros_like(resp)
    hard[np.arange(len(resp)), row_argmax(resp)] = 1.0
    return hard
