"""Initialisation: k-means++ seeding and a few batch EM iterations on a buffer of points."""

from __future__ import annotations

import numpy as np

from streamem.model.covariance import CovarianceKind
from streamem.model.params import e_step, hard_responsibilities, params_from_statistics
from streamem.model.statistics import SufficientStatistics, batch_statistics

#: A point further than this many spreads from the median in a feature is wild (:func:`tame`).
WILD_SPREADS = 1e3


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ centres (n_clusters, d) drawn from the rows of X (n, d).

    Each step draws 2 + log K candidates by D² sampling and keeps the one that lowers the
    potential most, as scikit-learn does. With fewer distinct points than clusters, centres repeat.
    """
    n = len(X)
    trials = 2 + int(np.log(n_clusters))
    centres = np.empty((n_clusters, X.shape[1]))
    centres[0] = X[rng.integers(n)]
    closest = _squared_distances(X, centres[0])
    for k in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:
            centres[k] = X[rng.integers(n)]
            continue
        candidates = rng.choice(n, size=trials, p=closest / total)
        # one candidate at a time: an (n, d) temporary, not (trials, n, d) twice over
        pots = np.array([np.minimum(closest, _squared_distances(X, X[c])) for c in candidates])
        best = int(pots.sum(axis=1).argmin())
        centres[k] = X[candidates[best]]
        closest = pots[best]
    return centres


def _squared_distances(X: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """‖x − centre‖² of each row of X (n, d), from the differences (no cancellation)."""
    diff = X - centre
    diff *= diff
    return diff.sum(axis=1)


def lloyd(X: np.ndarray, centres: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """Refine centres (K, d) by Lloyd's k-means iterations; empty clusters keep their centre."""
    centres = centres.copy()
    sq = (X**2).sum(axis=1)
    for _ in range(max_iter):
        dist = sq[:, None] - 2.0 * X @ centres.T + (centres**2).sum(axis=1)[None]
        labels = dist.argmin(axis=1)
        counts = np.bincount(labels, minlength=len(centres))
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, X)
        moved = counts > 0
        new = centres.copy()
        new[moved] = sums[moved] / counts[moved, None]
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def tame(X: np.ndarray) -> np.ndarray:
    """Which points (n,) are within ``WILD_SPREADS`` robust spreads of the median in every
    feature; all of them when fewer than half would be.

    A feature's spread is the 90 % quantile of the points' distances from its median, or the
    99 % one where that is 0 (a feature flat beyond that does not judge): up to a tenth of the
    points can be wild without widening it, and the real data sets of the tests (Shuttle,
    Segment, heavy-tailed) have no point beyond 1e3 spreads in their warm-up. A few valid
    but absurd points (1e15 among values of order 10) would otherwise take k-means++ centres,
    lend their scale to thin clusters' covariances, and leave a fit that stepwise EM never
    leaves; left out, they are answered by the fit of the others, as the anomalies they are.

    >>> X = np.vstack([np.arange(20.0).reshape(10, 2), [[1e15, 0.0]]])
    >>> tame(X).tolist().count(False)
    1
    """
    if len(X) < 2:
        return np.ones(len(X), dtype=bool)
    distance = np.abs(X - np.median(X, axis=0))
    q90, q99 = np.quantile(distance, [0.9, 0.99], axis=0)
    spread = np.where(q90 > 0, q90, np.where(q99 > 0, q99, np.inf))
    keep = (distance <= WILD_SPREADS * spread).all(axis=1)
    return keep if 2 * np.count_nonzero(keep) >= len(X) else np.ones(len(X), dtype=bool)


def pooled_covariance(X: np.ndarray) -> np.ndarray:
    """Covariance (d, d) of all points; the identity when there are too few to estimate one."""
    d = X.shape[1]
    if len(X) < 2:
        return np.eye(d)
    cov = np.atleast_2d(np.cov(X, rowvar=False, bias=True))
    if not np.any(np.diag(cov) > 0):
        return np.eye(d)
    return cov


def _hard_statistics(
    kind: CovarianceKind, X: np.ndarray, centres: np.ndarray, reg_covar: float
) -> SufficientStatistics:
    """Statistics of the nearest-centre partition; thin clusters borrow the pooled covariance."""
    n, d = X.shape
    K = len(centres)
    dist = np.stack([_squared_distances(X, c) for c in centres], axis=1)  # no (n, K, d)
    R = np.zeros((n, K))
    R[np.arange(n), dist.argmin(axis=1)] = 1.0 / n
    center = np.median(X, axis=0)  # robust: see params.reference_point
    stats = batch_statistics(kind, X - center, R, center)
    pooled = kind.from_full(pooled_covariance(X)[None])[0]
    thin = stats.nk * n < d + 1
    stats.nk[thin] = np.maximum(stats.nk[thin], 1.0 / n)
    stats.means[thin] = centres[thin]
    stats.scatter[thin] = stats.nk[thin].reshape((-1,) + (1,) * (stats.scatter.ndim - 1)) * pooled
    stats.normalise()
    return stats


def fit_batch(
    X: np.ndarray,
    n_components: int,
    kind: CovarianceKind,
    *,
    reg_covar: float,
    init: str,
    hard: bool,
    rng: np.random.Generator,
    max_iter: int = 30,
    n_init: int = 1,
    tol: float = 1e-4,
) -> SufficientStatistics:
    """Statistics of a mixture fitted to X (n, d) by seeding and batch EM (weights 1/n).

    With ``n_init`` > 1, the fit with the best mean log-likelihood on X is kept. Wild points
    (:func:`tame`) are left out of the fit.
    """
    X = X[tame(X)]
    best, best_score = None, -np.inf
    for _ in range(n_init):
        if init == "kmeans++":
            centres = lloyd(X, kmeans_plusplus(X, n_components, rng))
        else:
            centres = X[rng.choice(len(X), size=n_components, replace=len(X) < n_components)]
        stats, score = _batch_em(X, _hard_statistics(kind, X, centres, reg_covar), kind,
                                 reg_covar=reg_covar, hard=hard, max_iter=max_iter, tol=tol)
        if best is None or score > best_score:
            best, best_score = stats, score
    assert best is not None
    return best


def _batch_em(
    X: np.ndarray,
    stats: SufficientStatistics,
    kind: CovarianceKind,
    *,
    reg_covar: float,
    hard: bool,
    max_iter: int,
    tol: float,
) -> tuple[SufficientStatistics, float]:
    """Batch EM from ``stats``; returns the statistics and the final mean log-likelihood."""
    previous = -np.inf
    for _ in range(max_iter):
        params = params_from_statistics(stats, kind, reg_covar)
        resp, log_lik = e_step(kind, params, X)
        if hard:
            resp = hard_responsibilities(resp)
        stats = batch_statistics(kind, X - params.center, resp / len(X), params.center)
        stats.nk = np.maximum(stats.nk, 1e-12)
        stats.normalise()
        current = float(log_lik.mean())
        if abs(current - previous) < tol:
            break
        previous = current
    return stats, previous
