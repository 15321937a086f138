"""One point at a time: the batch path's E-step and statistics update for n = 1.

A caller that feeds single points (an event handler) pays per call for every numpy call, not
for arithmetic. These functions do what ``params.e_step`` and ``statistics.batch_statistics`` +
``SufficientStatistics.blend`` + ``normalise`` do for a batch of one point, in a few calls on
(K,) and (K, d) arrays. The results equal the batch path's up to rounding (the order of a few
floating-point operations differs): it is the same model, not an approximation of it.
"""

from __future__ import annotations

import math

import numpy as np

from streamem.model.covariance import CovarianceKind
from streamem.model.params import Params
from streamem.model.statistics import TINY, SufficientStatistics


def weighted_log_prob(kind: CovarianceKind, params: Params, x: np.ndarray) -> np.ndarray:
    """log π_k + log N(x | μ_k, Σ_k) of one point x (d,), (K,)."""
    maha = kind.point_mahalanobis(x - params.means, params.precisions_chol)
    return params.log_norm - 0.5 * maha


def e_step(
    kind: CovarianceKind, params: Params, x: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """Responsibilities (K,) and log p(x) of one point x (d,), in log space.

    ``None`` when no component gives x a finite density: the batch E-step handles that case.
    """
    weighted = weighted_log_prob(kind, params, x)
    top = weighted.max()
    if not math.isfinite(top):
        return None
    weighted -= top
    scaled = np.exp(weighted, out=weighted)
    total = scaled.sum()
    scaled /= total
    return scaled, float(top) + math.log(total)


def blend(
    kind: CovarianceKind,
    stats: SufficientStatistics,
    y: np.ndarray,
    r: np.ndarray,
    decay: float,
    center: np.ndarray,
) -> None:
    """s ← decay·s + stat(x), then normalised, in place, for one point.

    Parameters
    ----------
    y : (d,) the point minus ``center``.
    r : (K,) responsibilities already multiplied by the point's step weight.

    As in ``batch_statistics``, a component whose weight is at most ``TINY`` takes the point as
    second moment about ``center`` rather than as its mean.
    """
    n_old = decay * stats.nk
    n_new = n_old + r
    frac = np.divide(r, n_new, out=np.zeros_like(n_new), where=n_new > TINY)
    total = n_new.sum()
    scale = 1.0 / total if total > TINY else 1.0  # the normalisation, folded in
    live = r > TINY
    offset = center - stats.means
    scatter = (decay * scale) * stats.scatter
    if live.all():
        delta = offset + y
    else:
        delta = np.where(live[:, None], y, 0.0) + offset
        dead = np.where(live, 0.0, r * scale)
        scatter += kind.outer(dead[:, None] * y, y[None])
    scatter += kind.outer((n_old * frac * scale)[:, None] * delta, delta)
    stats.means = stats.means + frac[:, None] * delta
    n_new *= scale
    stats.nk = n_new
    stats.scatter = scatter
