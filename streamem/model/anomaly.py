"""The anomaly threshold: the log-likelihood below which an inlier of the model is rare.

An inlier drawn from component k satisfies log p(x) ≥ log π_k + log N(x | k), and
−2·(log N(x | k) − c_k) is χ²_d distributed (c_k the log normaliser). So

    P(log p(x) < t) ≤ Σ_k π_k · P(χ²_d > 2(log π_k + c_k − t)),

with equality when the components do not overlap. The threshold solves that bound for
``anomaly_rate``: it is calibrated on the model itself, so it follows the model as it changes and
does not move with the share of anomalies in the stream. Where components overlap, inliers are
flagged at a rate at most ``anomaly_rate``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaincc

from streamem.model.covariance import LOG_2PI


def inlier_flag_rate(t: float, log_peak: np.ndarray, weights: np.ndarray, n_features: int) -> float:
    """Upper bound on the share of the model's own points with log p(x) < t."""
    half_chi2 = np.maximum(log_peak - t, 0.0)
    return float(weights @ gammaincc(0.5 * n_features, half_chi2))


def anomaly_threshold(
    weights: np.ndarray, log_det_prec: np.ndarray, n_features: int, anomaly_rate: float
) -> float:
    """The log-likelihood threshold flagging the model's inliers at ``anomaly_rate``.

    Parameters
    ----------
    weights : (K,) mixing weights.
    log_det_prec : (K,) log det of the precision Cholesky factors (= −½ log det Σ_k).
    n_features : d.
    anomaly_rate : target share of inliers flagged, in (0, 1).
    """
    live = weights > 0
    w = weights[live]
    log_peak = np.log(w) - 0.5 * n_features * LOG_2PI + log_det_prec[live]
    hi = float(log_peak.max())
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
