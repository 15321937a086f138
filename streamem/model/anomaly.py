"""The anomaly threshold: the log-likelihood below which an inlier of the model is rare.

An inlier drawn from component k satisfies log p(x) ≥ log π_k + log N(x | k), and
−2·(log N(x | k) − c_k) is χ²_d distributed (c_k the log normaliser). So

    P(log p(x) < t) ≤ Σ_k π_k · P(χ²_d > 2(log π_k + c_k − t)),

with equality when the components do not overlap. The threshold solves that bound for
``anomaly_rate``: it is calibrated on the model itself, so it follows the model as it changes and
does not move with the share of anomalies in the stream. Where components overlap, inliers are
flagged at a rate at most ``anomaly_rate``.

Real data are rarely Gaussian: their tails are heavier than the components', and the bound then
flags inliers more often than ``anomaly_rate``. :func:`calibrated_threshold` measures by how much
in a window of moderate log-likelihoods where inliers dominate (between the bound's levels
``WINDOW`` × ``anomaly_rate``): there the bound predicts a known share of the points, and the
observed share (a recent average, half-life ``TAIL_HALFLIFE`` points) divided by it is the
tail's inflation f ≥ 1. The threshold in force solves the bound for ``anomaly_rate`` / f.
Anomalies far below the window do not enter that ratio, so the threshold still does not move
with their share.

Until that window holds enough points to tell (:func:`early_over`, at the first check after
about 2 / ``anomaly_rate`` points since a warm-up, or ``TAIL_HALFLIFE``), the bound is
unchecked, and on real data it flags inliers at many times ``anomaly_rate`` (an in-sample fit is
tighter than the points that follow it). Meanwhile a point below the threshold is reported as an
anomaly only when it is also below the *early floor* (:func:`early_floor`): the
``anomaly_rate`` quantile of the warm-up points' log-likelihoods under mixtures fitted to the
other half of the warm-up. A new inlier falls below the lowest of n such out-of-sample values
with probability about 1/(n + 1). Anomalies in the warm-up lower the floor to their depth: they
make early reports rarer, never more frequent.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaincc

from streamem.model.covariance import LOG_2PI

NEWTON_STEPS = 8
NEWTON_TOLERANCE = 1e-7
#: The window, in multiples of ``anomaly_rate`` of the bound, where the inflation is measured.
WINDOW = (3.0, 30.0)
#: Half-life, in points, of the recent share of points in the window.
TAIL_HALFLIFE = 5000.0
#: The calibration starts once the recent average holds this many expected points in the window.
WINDOW_MIN_POINTS = 100.0
#: The inflation counts only the observed share's excess beyond this many standard errors.
Z_INFLATION = 3.0
#: The fit is poor when the recent flagged share exceeds this many times ``anomaly_rate``.
FIT_POOR_FACTOR = 5.0


def inlier_flag_rate(t: float, log_peak: np.ndarray, weights: np.ndarray, n_features: int) -> float:
    """Upper bound on the share of the model's own points with log p(x) < t."""
    half_chi2 = np.maximum(log_peak - t, 0.0)
    return float(weights @ gammaincc(0.5 * n_features, half_chi2))


def anomaly_threshold(
    weights: np.ndarray,
    log_det_prec: np.ndarray,
    n_features: int,
    anomaly_rate: float,
    start: float | None = None,
) -> float:
    """The log-likelihood threshold flagging the model's inliers at ``anomaly_rate``.

    Parameters
    ----------
    weights : (K,) mixing weights.
    log_det_prec : (K,) log det of the precision Cholesky factors (= −½ log det Σ_k).
    n_features : d.
    anomaly_rate : target share of inliers flagged, in (0, 1).
    start : a nearby threshold (the previous one): Newton's method from there usually needs
        two or three steps; without it, or when Newton does not settle, a bracketing solver runs.
    """
    live = weights > 0
    w = weights[live]
    log_peak = np.log(w) - 0.5 * n_features * LOG_2PI + log_det_prec[live]
    hi = float(log_peak.max())
    if start is not None and math.isfinite(start):
        found = _newton(start, hi, log_peak, w, n_features, math.log(anomaly_rate))
        if found is not None:
            return found
    if inlier_flag_rate(hi, log_peak, w, n_features) <= anomaly_rate:
        return hi
    lo = float(log_peak.min()) - 1.0
    while inlier_flag_rate(lo, log_peak, w, n_features) > anomaly_rate:
        lo -= 2.0 * (hi - lo) + n_features
    return float(
        brentq(
            lambda t: np.log(max(inlier_flag_rate(t, log_peak, w, n_features), 1e-300))
            - np.log(anomaly_rate),
            lo,
            hi,
            xtol=1e-6,
        )
    )


def bound_share(t: float, weights: np.ndarray, log_det_prec: np.ndarray, n_features: int) -> float:
    """The bound's share of the model's own points with log p(x) < t (see the module)."""
    live = weights > 0
    w = weights[live]
    log_peak = np.log(w) - 0.5 * n_features * LOG_2PI + log_det_prec[live]
    return inlier_flag_rate(t, log_peak, w, n_features)


def tail_keep(n_points: int) -> float:
    """The factor the recent window share keeps over ``n_points`` new points."""
    return math.exp(-math.log(2.0) * n_points / TAIL_HALFLIFE)


def window_levels(anomaly_rate: float) -> tuple[float, float]:
    """The bound's levels (low, high) between which the window lies."""
    lo, hi = (min(f * anomaly_rate, 0.5) for f in WINDOW)
    return lo, hi


def early_floor(log_lik: np.ndarray, anomaly_rate: float) -> float:
    """The ``anomaly_rate`` quantile of out-of-sample log-likelihoods (n,) of the warm-up: the
    k-th lowest, k = max(1, ⌊rate · n⌋); −∞ (no floor) without points. An impossible point
    (−∞, or NaN from a degenerate fit) counts as −1e300."""
    if not len(log_lik):
        return -math.inf
    k = max(1, int(anomaly_rate * len(log_lik)))
    finite = np.nan_to_num(log_lik, nan=-1e300, neginf=-1e300, posinf=1e300)
    return float(np.partition(finite, k - 1)[k - 1])


def tail_measured(window_mass: float, predicted: float) -> bool:
    """Whether the recent average over a total weight ``window_mass`` holds enough expected
    points (``WINDOW_MIN_POINTS``) in a window of predicted share ``predicted``."""
    points = window_mass * 2.0 * TAIL_HALFLIFE / math.log(2.0)  # the average's effective size
    return predicted > 0 and window_mass > 0 and points * predicted >= WINDOW_MIN_POINTS


def early_over(window_mass: float, predicted: float) -> bool:
    """Whether the early floor is over: the tail is measured (:func:`tail_measured`), or the
    recent average has had ``TAIL_HALFLIFE`` points (half its weight) to measure it."""
    return window_mass >= 0.5 or tail_measured(window_mass, predicted)


def calibrated_threshold(
    window_share: float, window_mass: float, weights: np.ndarray, log_det_prec: np.ndarray,
    n_features: int, anomaly_rate: float, bound: float, start: float | None = None,
    predicted: float | None = None,
) -> tuple[float, float]:
    """The threshold in force and the tail inflation f: the bound solved for
    ``anomaly_rate`` / f (``bound``, its solution for ``anomaly_rate``, when f = 1).

    ``window_share`` is the recent average of the share of points in the window, over a total
    weight ``window_mass`` ≤ 1 (the average started from 0); f is 1 while it holds too few
    points to tell. ``start``: the previous threshold, where Newton's method starts.
    ``predicted``: the bound's share in the window the points were counted in (by default the
    one between the levels ``WINDOW`` × ``anomaly_rate``).
    """
    if predicted is None:
        lo, hi = window_levels(anomaly_rate)
        predicted = hi - lo
    if not tail_measured(window_mass, predicted):
        return bound, 1.0
    points = window_mass * 2.0 * TAIL_HALFLIFE / math.log(2.0)
    observed = window_share / window_mass
    f = max(1.0, (observed - Z_INFLATION * math.sqrt(observed / points)) / predicted)
    if f <= 1.0:
        return bound, f
    return anomaly_threshold(weights, log_det_prec, n_features, anomaly_rate / f,
                             start=bound if start is None else start), f


def _newton(
    t: float, hi: float, log_peak: np.ndarray, w: np.ndarray, n_features: int, log_rate: float
) -> float | None:
    """Newton's method on log(flag rate) − log(rate) from ``t``; ``None`` if it does not settle.

    The derivative of Σ π_k Q(d/2, x_k), x_k = peak_k − t, is Σ π_k x_k^(d/2 − 1) e^(−x_k) / Γ(d/2)
    over the components with x_k > 0.
    """
    a = 0.5 * n_features
    log_gamma_a = math.lgamma(a)
    for _ in range(NEWTON_STEPS):
        x = log_peak - t
        inside = x > 0
        if not inside.any():
            return None
        rate = inlier_flag_rate(t, log_peak, w, n_features)
        xi = x[inside]
        slope = float(w[inside] @ np.exp((a - 1.0) * np.log(xi) - xi - log_gamma_a))
        if not (rate > 0.0 and slope > 0.0):
            return None
        step = (math.log(rate) - log_rate) * rate / slope
        t -= step
        if not (math.isfinite(t) and t < hi):
            return None
        if abs(step) < NEWTON_TOLERANCE:
            return t
    return None
