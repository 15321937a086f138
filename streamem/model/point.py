"""One point at a time: the batch path's E-step, update and M-step for n = 1.

A caller that feeds single points (an event handler) pays per call for every numpy call, not
for arithmetic. These functions do what ``params.e_step``, ``schedule.batch_schedule``,
``statistics.batch_statistics`` + ``SufficientStatistics.blend`` + ``normalise`` and
``params.params_from_statistics`` do for a batch of one point, in a few calls on (K,) and (K, d)
arrays. The results equal the batch path's up to rounding (the order of a few floating-point
operations differs, and a precision factor is kept while its covariance has moved by less than
``STALE_LIMIT`` relative): it is the same model, not an approximation of it.
"""

from __future__ import annotations

import math

import numpy as np

from streamem.model.covariance import CovarianceKind
from streamem.model.params import Params
from streamem.model.statistics import TINY, SufficientStatistics

#: Relative change of a covariance, in any direction, below which its precision factor is kept
#: (see ``stale_rows``): far below the 1e-12 to which one-point and batch answers agree.
STALE_LIMIT = 1e-14
#: Weights of ‖P_kᵀ(x − μ_k)‖² and ‖P_kᵀ(μ_k − c)‖² in the reach of a point (see ``answer``).
_REACH = np.array([4.0, 6.0])


def weighted_log_prob(kind: CovarianceKind, params: Params, x: np.ndarray) -> np.ndarray:
    """log π_k + log N(x | μ_k, Σ_k) of one point x (d,), (K,)."""
    maha = kind.point_mahalanobis((x - params.means)[:, None], params.precisions_chol)
    return params.log_norm - 0.5 * maha[:, 0]


def e_step(
    kind: CovarianceKind, params: Params, x: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """Responsibilities (K,) and log p(x) of one point x (d,), in log space.

    ``None`` when no component gives x a finite density: the batch E-step handles that case.
    """
    return _normalised(weighted_log_prob(kind, params, x))


def answer(
    kind: CovarianceKind, params: Params, x: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``e_step`` of one point x (d,) that is to be learned, and the reach (K,) of its update.

    reach_k = 2·(1 + 2‖P_kᵀ(x − μ_k)‖² + 3‖P_kᵀ(μ_k − c)‖²), P_k the precision factor and c the
    center: when the update gives x a share f_k of component k's mass (``blend``'s fractions),
    the floored covariance F_k moves by ‖P_kᵀ ΔF_k P_k‖₂ ≤ f_k·reach_k — relative to itself, in
    every direction. (Σ' = (1 − f)Σ + f(1 − f)δδᵀ, or for a weight at most ``TINY``
    (1 − f)Σ + f·yyᵀ + f(1 − f)mmᵀ, with δ = x − μ, y = x − c, m = c − μ; the floor's relative
    part moves with the largest variance, by at most as much again.) ``None`` as ``e_step``.
    """
    means = params.means
    DM = np.empty((len(means), 2, len(x)))
    np.subtract(x, means, out=DM[:, 0])
    np.subtract(means, params.center, out=DM[:, 1])
    dist = kind.point_mahalanobis(DM, params.precisions_chol)
    weighted = dist[:, 0] * -0.5
    weighted += params.log_norm
    found = _normalised(weighted)
    if found is None:
        return None
    reach = dist @ _REACH
    reach += 2.0
    return found[0], found[1], reach


def _normalised(weighted: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Responsibilities and log p(x) from log π_k + log N(x | k) (K,), normalised in place.

    K values: Python's max and ``math.fsum`` of a list beat numpy's reductions. (A NaN, which
    a valid model cannot produce, would reach the responsibilities, which the model checks.)
    """
    top = max(weighted.tolist())
    if not math.isfinite(top):
        return None
    weighted -= top
    scaled = np.exp(weighted, out=weighted)
    total = math.fsum(scaled.tolist())
    scaled /= total
    return scaled, top + math.log(total)


def step(
    n_steps: int, *, learning_decay: float, learning_offset: float, floor: float
) -> tuple[float, float]:
    """``schedule.batch_schedule`` for one point: the decay of the statistics and the point's
    weight, which is its step size γ = max((t + τ0)^−κ, floor), capped at 1."""
    gamma = min(max((n_steps + 1 + learning_offset) ** -learning_decay, floor), 1.0)
    return 1.0 - gamma, gamma


def blend(
    kind: CovarianceKind,
    stats: SufficientStatistics,
    y: np.ndarray,
    r: np.ndarray,
    decay: float,
    center: np.ndarray,
) -> np.ndarray:
    """s ← decay·s + stat(x), then normalised, in place, for one point.

    Parameters
    ----------
    y : (d,) the point minus ``center``.
    r : (K,) responsibilities already multiplied by the point's step weight.

    Returns the point's share of each component's mass after the update (K,), 0 where that
    mass is at most ``TINY``. As in ``batch_statistics``, a component whose weight is at most
    ``TINY`` takes the point as second moment about ``center`` rather than as its mean.
    """
    n_old = decay * stats.nk
    n_new = n_old + r
    masses = n_new.tolist()  # K numbers: Python's min and fsum beat numpy's reductions
    if min(masses) > TINY:
        frac = r / n_new
    else:
        frac = np.divide(r, n_new, out=np.zeros_like(n_new), where=n_new > TINY)
    total = math.fsum(masses)
    scale = 1.0 / total if total > TINY else 1.0  # the normalisation, folded in
    offset = center - stats.means
    scatter = (decay * scale) * stats.scatter
    if min(r.tolist()) > TINY:
        delta = offset + y
    else:
        live = r > TINY
        delta = live[:, None] * y
        delta += offset
        dead = r * scale
        dead[live] = 0.0
        scatter += kind.outer(dead[:, None] * y, y[None])
    coef = n_old * frac
    coef *= scale
    scatter += kind.outer(coef[:, None] * delta, delta)
    stats.means = stats.means + frac[:, None] * delta
    n_new *= scale
    stats.nk = n_new
    stats.scatter = scatter
    return frac


def stale_rows(
    drift: np.ndarray | None, frac: np.ndarray, reach: np.ndarray, nk: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The components whose covariance a one-point step leaves to factorise again, (m,), and
    the drift (K,) of the others.

    ``drift`` (``None``: all 0) bounds how far each covariance has moved, relative to itself,
    since its factor was computed; the step adds frac·reach (see ``answer``). A component past
    ``STALE_LIMIT`` (or whose bound is not a number), or whose normalised mass ``nk`` is at most
    ``TINY`` (its covariance is then its scatter over ``TINY``, which the decay moves), is
    factorised again and its drift starts over at 0.
    """
    moved = frac * reach
    if drift is not None:
        moved += drift
    rows = (~(moved <= STALE_LIMIT) | (nk <= TINY)).nonzero()[0]
    moved[rows] = 0.0
    return rows, moved
