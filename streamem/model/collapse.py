"""Mode collapse and stranded components: detect them, and put the component back to use.

Reasons a component is reset (the keys of ``OnlineGMM.resets_``):

* ``weight`` — its responsibility mass is too small to support a covariance: fewer than d + 1
  effective points (N_k × the effective sample size of the statistics).
* ``singular`` — it has shrunk onto a point or a few: in the frame whitened by the pooled
  covariance, at least half its variances are below ``SINGULAR_RATIO``. A constant feature,
  singular for every component alike, does not trigger it; nor does a component of real data
  that is flat in a few features only (integer readings stuck at one value for a subgroup), which
  is a legitimate and often the best explanation of those points.
* ``stranded`` — no inlier has used it recently while recent flagged points gather in a dense
  group the model does not explain (after drift, or a new cluster): it is moved there.

A ``weight`` or ``singular`` component is re-seeded on such a dense group of flagged points when
there is one, and otherwise by splitting the heaviest component along its widest axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from streamem.model.covariance import CovarianceKind, estimate_log_gaussian_prob
from streamem.model.params import Params
from streamem.model.statistics import SufficientStatistics

SINGULAR_RATIO = 1e-5
#: Recent flagged share below which flagged points are treated as scattered anomalies only.
NOVELTY_SHARE = 0.02
#: Why components were reset (``OnlineGMM.resets_``): collapse checks, a drift refit, and the
#: moves of ``model.moves`` (a merge frees a component that a split or re-seed takes).
RESET_REASONS = ("weight", "singular", "stranded", "drift", "split", "merge", "reseed")


def pooled_covariance(params: Params, kind: CovarianceKind,
                      rows: np.ndarray | None = None) -> np.ndarray:
    """Covariance (d, d) of the mixture of components ``rows`` (all by default): within plus
    between components."""
    d = params.means.shape[1]
    weights, means, covariances = params.weights, params.means, params.covariances
    if rows is not None:
        weights, means, covariances = weights[rows], means[rows], covariances[rows]
        weights = weights / weights.sum()
    within = weights @ kind.to_full(covariances, d).reshape(len(weights), d * d)
    diff = means - weights @ means
    return within.reshape(d, d) + (diff.T * weights) @ diff


def pooled_cholesky(params: Params, kind: CovarianceKind,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """Lower Cholesky factor L (d, d) of the pooled covariance (of ``rows``), L Lᵀ = pooled."""
    chol, info = lapack.dpotrf(pooled_covariance(params, kind, rows), lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("the pooled covariance is not positive definite")
    return np.ascontiguousarray(chol)


def whitened_median_variance(params: Params, kind: CovarianceKind,
                             frame: np.ndarray | None = None) -> np.ndarray:
    """Each component's median variance relative to the pooled covariance, (K,).

    The median is the (d // 2 + 1)-th smallest eigenvalue of W_k = L⁻¹ Σ_k L⁻ᵀ (L Lᵀ the pooled
    covariance). Exact where it matters: λ_min(W_k) ≥ 1 / trace(W_k⁻¹) and
    trace(W_k⁻¹) = ‖P_kᵀ L‖²_F, one small product. That lower bound is returned for components it
    clears of ``SINGULAR_RATIO``; only the others pay for eigenvalues. ``frame``: the components
    the pooled covariance is taken over (all by default).
    """
    d = params.means.shape[1]
    chol = pooled_cholesky(params, kind, frame)
    prec = kind.to_full(params.precisions_chol, d)
    root = np.swapaxes(prec, -1, -2) @ chol  # W_k⁻¹ = root_kᵀ root_k
    bound = 1.0 / (root**2).sum(axis=(1, 2))
    suspect = np.flatnonzero(bound < SINGULAR_RATIO)
    if len(suspect):
        full = kind.to_full(params.covariances[suspect], d)
        half = np.linalg.solve(chol[None], full)
        white = np.linalg.solve(chol[None], np.swapaxes(half, -1, -2))
        bound[suspect] = np.linalg.eigvalsh(0.5 * (white + np.swapaxes(white, -1, -2)))[:, d // 2]
    return bound


def find_collapsed(
    stats: SufficientStatistics, params: Params, kind: CovarianceKind, n_effective: float
) -> list[tuple[int, str]]:
    """Components to reset, with their reason."""
    d = params.means.shape[1]
    support = d + 1 if kind.name == "full" else 2
    starved = stats.nk * n_effective < support
    singular = np.zeros(len(starved), dtype=bool)
    frame = np.flatnonzero(~starved)  # a starved component at 1e15 would swamp the frame
    if len(frame):
        try:
            singular = whitened_median_variance(params, kind, frame) < SINGULAR_RATIO
        except np.linalg.LinAlgError:  # no frame to whiten in: nothing to call singular
            pass
    return [(int(k), "weight") for k in np.flatnonzero(starved)] + [
        (int(k), "singular") for k in np.flatnonzero(singular & ~starved)
    ]


@dataclass(frozen=True)
class Group:
    """A dense group of recent flagged points: where a new component should go.

    mean : (d,); covariance : (d, d); share : estimated share of the stream it receives;
    members : indices into the flagged buffer.
    """

    mean: np.ndarray
    covariance: np.ndarray
    share: float
    members: np.ndarray


def find_dense_group(
    points: np.ndarray,
    arrivals: np.ndarray,
    n_seen: int,
    params: Params,
    kind: CovarianceKind,
    *,
    threshold: float,
    reg_covar: float,
) -> Group | None:
    """The densest group of flagged ``points`` (m, d) that a new component would explain.

    A group is the d + 1 (at least 10) nearest flagged neighbours, in the pooled-whitened frame,
    of the point with the tightest neighbourhood. It is accepted only when a Gaussian fitted to it,
    weighted by its share of the stream, would lift its points above the anomaly ``threshold`` —
    scattered outliers never form such a group.
    """
    m, d = points.shape
    size = max(d + 1, 10)
    if m < size:
        return None
    try:
        chol = pooled_cholesky(params, kind, np.flatnonzero(params.weights >= 1.0 / len(points)))
    except np.linalg.LinAlgError:
        return None
    Z = np.linalg.solve(chol, (points - params.center).T).T
    sq = (Z**2).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)
    nearest = np.argpartition(dist, size - 1, axis=1)[:, :size]
    radius = np.take_along_axis(dist, nearest, axis=1).max(axis=1)
    members = nearest[int(radius.argmin())]
    group = points[members]
    mean = group.mean(axis=0)
    sample = np.atleast_2d(np.cov(group, rowvar=False, bias=True))
    cov = 0.7 * sample + 0.3 * (np.trace(sample) / d) * np.eye(d) + reg_covar * np.eye(d)
    span = max(n_seen - int(arrivals[members].min()), size)
    share = min(size / span, 1.0)
    prec_chol = kind.precision_cholesky(kind.from_full(cov[None]))
    log_prob = estimate_log_gaussian_prob(
        kind, group - mean, np.zeros((1, d)), prec_chol
    )[:, 0] + np.log(share)
    if float(np.median(log_prob)) < threshold:
        return None
    return Group(mean, cov, share, members)


def split_heaviest(
    stats: SufficientStatistics, params: Params, kind: CovarianceKind
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, float]:
    """Split the heaviest component along its widest axis.

    Returns the heavy component's index, the two new means (d,) each, the shared full covariance
    (d, d) of the halves, and the mass each half receives.
    """
    d = params.means.shape[1]
    j = int(stats.nk.argmax())
    cov = kind.to_full(params.covariances[j : j + 1], d)[0]
    eigval, eigvec = np.linalg.eigh(cov)
    lam, v = float(eigval[-1]), eigvec[:, -1]
    # The halves of a Gaussian cut through its mean sit ±0.8σ apart with variance 0.36σ².
    step = 0.8 * np.sqrt(lam) * v
    half_cov = cov - 0.64 * lam * np.outer(v, v)
    return j, params.means[j] + step, params.means[j] - step, half_cov, 0.5 * float(stats.nk[j])


def place(
    stats: SufficientStatistics,
    kind: CovarianceKind,
    k: int,
    mean: np.ndarray,
    covariance: np.ndarray,
    mass: float,
) -> None:
    """Overwrite component ``k``'s statistics with a Gaussian of the given (full) covariance."""
    stats.nk[k] = mass
    stats.means[k] = mean
    stats.scatter[k] = mass * kind.from_full(covariance[None])[0]
