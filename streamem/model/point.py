"""One point at a time: the batch path's E-step, update and M-step for n = 1.

A caller that feeds single points (an event handler) pays per call for every numpy call, not
for arithmetic. These functions do what ``params.e_step``, ``schedule.batch_schedule``,
``statistics.batch_statistics`` + ``SufficientStatistics.blend`` + ``normalise`` and
``params.params_from_statistics`` do for a batch of one point, in a few calls on (K,) and (K, d)
arrays. The results equal the batch path's up to rounding (the order of a few floating-point
operations differs, and a precision factor is kept while its covariance has moved by less than
``STALE_LIMIT`` relative): it is the same model, not an approximation of it. ``blend`` returns
new statistics rather than changing them, so that ``OnlineGMM._learn_point`` can compute a whole
step and commit it only once it is valid, without a snapshot to roll back.
"""

from __future__ import annotations

import math

import numpy as np

from streamem.model.covariance import CovarianceKind
from streamem.model.params import Params
from streamem.model.statistics import TINY, SufficientStatistics

#: Relative change of a covariance, in any direction, below which its precision factor is kept
#: (see ``blend``): far below the 1e-12 to which one-point and batch answers agree.
STALE_LIMIT = 1e-14


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
) -> tuple[list[float], float, list[list[float]], np.ndarray] | None:
    """``e_step`` of one point x (d,) that is to be learned: its responsibilities (K,) and
    log p(x), its distances (K, 2) [‖P_kᵀ(x − μ_k)‖², ‖P_kᵀ(μ_k − c)‖²] (P_k the precision
    factor, c the center) and D (K, 2, d) = [μ_k − x, μ_k − c], which ``blend`` takes.
    ``None`` as ``e_step``.

    Both rows of D come from one subtraction; the K numbers of each kind are worked on as
    Python floats: fewer calls than numpy's.
    """
    D = np.subtract(params.means[:, None], np.array((x, params.center)))
    dist = kind.point_mahalanobis(D, params.precisions_chol).tolist()
    weighted = [c - 0.5 * a for c, (a, _) in zip(params.log_norm.tolist(), dist, strict=True)]
    top = max(weighted)
    if not math.isfinite(top):
        return None
    scaled = [math.exp(v - top) for v in weighted]
    total = math.fsum(scaled)
    return [v / total for v in scaled], top + math.log(total), dist, D


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
    D: np.ndarray,
    r: list[float],
    decay: float,
    dist: list[list[float]],
    drift: list[float] | np.ndarray | None,
) -> tuple[SufficientStatistics, list[int], list[float]]:
    """decay·s + stat(x), normalised, for one point: new statistics (``stats`` is unchanged),
    the components whose covariance the step leaves to factorise again, and the drift (K,) of
    the others.

    Parameters
    ----------
    D : (K, 2, d) [μ_k − x, μ_k − c] (``answer``), c the center.
    r : (K,) responsibilities already multiplied by the point's step weight.
    dist : (K, 2) the point's distances (``answer``).
    drift : (K,) bounds on how far each covariance has moved, relative to itself, since its
        factor was computed (``None``: all 0).

    As in ``batch_statistics``, a component whose weight is at most ``TINY`` takes the point as
    second moment about c rather than as its mean. Each component's change is a 3×2 matrix of
    coefficients C_k on D_k: the mean moves by C_k[2]·D_k, the scatter by D_kᵀ (C_k[:2]·D_k) —
    one batched product each for all of them.

    The step adds f·reach to a component's drift, f the point's share of its mass after the
    update (0 where that mass is at most ``TINY``): the floored covariance F moves by
    ‖PᵀΔF P‖₂ ≤ f·reach, relative to itself in every direction, with a = ‖Pᵀ(x − μ)‖² and
    b = ‖Pᵀ(μ − c)‖² (``dist``) and reach = 2·(1 + a) for a weight above ``TINY``
    (Σ' = (1 − f)Σ + f(1 − f)δδᵀ, δ = x − μ), 2·(1 + 2a + 3b) otherwise
    ((1 − f)Σ + f·yyᵀ + f(1 − f)mmᵀ, y = x − c, m = c − μ); the factor 2: the floor's relative
    part, RF·diag(ΔΣ), moves F by at most RF / λ_min(F's correlation matrix) ≤ 1 + RF times
    as much again. A component past
    ``STALE_LIMIT`` (or whose bound is not a number), or whose normalised mass is at most
    ``TINY`` (its covariance is then its scatter over ``TINY``, which the decay moves), is to
    be factorised again and its drift starts over at 0.
    """
    nk = stats.nk.tolist()
    n_new = [decay * v + b for v, b in zip(nk, r, strict=True)]
    total = math.fsum(n_new)
    scale = 1.0 / total if total > TINY else 1.0  # the normalisation, folded in
    nk_new = [n * scale for n in n_new]
    coefficients: list[float] = []  # C (K, 3, 2), flat: one list of floats converts fastest
    rows: list[int] = []
    moved: list[float] = []
    k = 0
    drifts: list[float] = (  # the compiled kernel's are a (K,) array
        [0.0] * len(nk) if drift is None else drift if type(drift) is list
        else np.asarray(drift).tolist())
    for v, b, n, (a, e), h in zip(nk, r, n_new, dist, drifts, strict=True):
        f = b / n if n > TINY else 0.0
        c = decay * v * f * scale  # δδᵀ's coefficient: N_old·N_new/N, normalised
        if b > TINY:  # δ = x − μ = −D_k[0]
            coefficients += (c, 0.0, 0.0, 0.0, -f, 0.0)
            m = f * (2.0 + 2.0 * a) + h
        else:  # δ = c − μ, and the point's second moment about c: y = −D_k[0] + D_k[1]
            dead = b * scale
            coefficients += (dead, -dead, -dead, c + dead, 0.0, -f)
            m = f * (2.0 + 4.0 * a + 6.0 * e) + h
        if m <= STALE_LIMIT and n * scale > TINY:
            moved.append(m)
        else:
            rows.append(k)
            moved.append(0.0)
        k += 1
    W = np.matmul(np.fromiter(coefficients, np.float64, len(coefficients)).reshape(-1, 3, 2), D)
    scatter = stats.scatter * (decay * scale)
    scatter += kind.outer_sum(D, W[:, :2])
    return SufficientStatistics(np.array(nk_new), stats.means + W[:, 2], scatter), rows, moved
