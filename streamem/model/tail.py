"""``Tail``: the anomaly bookkeeping of ``OnlineGMM``, the state its flags are judged by.

It owns the recent flagged share and the anomaly threshold's calibration state: the bound, the
window and the recent share of points in it, the tail inflation, and the early floor. The
functions it composes, and why the threshold is calibrated so, are in
:mod:`streamem.model.anomaly`. It stands apart from ``gmm`` because it is a job of its own: the
model's learning only feeds it (log-likelihoods, flag counts, a delta's shares) and reads its
answers (the threshold in force, the flags reported, whether flags are excessive or drifting).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from streamem.model.anomaly import (
    anomaly_threshold,
    bound_share,
    calibrated_threshold,
    early_floor,
    early_over,
    tail_keep,
    window_levels,
)
from streamem.model.collapse import NOVELTY_SHARE
from streamem.model.covariance import CovarianceKind
from streamem.model.params import e_step, params_from_statistics
from streamem.model.seeding import fit_batch, tame

if TYPE_CHECKING:
    from streamem.model.delta import StatsDelta

#: Recent flagged share above which the stream is taken to have changed (``drifting``).
DRIFT_SHARE = 0.25
#: What the recent window share keeps over one point.
TAIL_KEEP = tail_keep(1)
#: The calibration window's ends are solved again once the bound's share below either is off
#: its level by this factor (the share in between is evaluated exactly at every refresh).
WINDOW_SLACK = 1.5


class Tail:
    """The recent flagged share and the threshold's calibration state of one model.

    Attributes
    ----------
    flag_share : recent share of flagged points (an average whose keep factors the model gives).
    bound : the bound solved for ``anomaly_rate``; −∞ before the first calibration.
    inflation : the tail inflation f ≥ 1 of the last calibration.
    window : (lo, hi) log-likelihoods between which the window's points are counted.
    window_share, window_mass : the recent average of the share of points in the window, and
        its total weight (≤ 1: the average starts from 0 at each warm-up).
    early : the early floor; −∞ when there is none.
    """

    __slots__ = ("flag_share", "bound", "inflation", "window", "window_share", "window_mass",
                 "early")

    def __init__(self) -> None:
        self.flag_share = 0.0
        self.bound = -math.inf
        self.inflation = 1.0
        self.window = (-math.inf, -math.inf)
        self.window_share = 0.0
        self.window_mass = 0.0
        self.early = -math.inf

    def copy(self) -> Tail:
        """An independent copy (every field is immutable): what a rollback restores."""
        new = Tail.__new__(Tail)
        for name in Tail.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    # ------------------------------------------------------------------ the flagged share
    def excessive(self, anomaly_rate: float) -> bool:
        """Whether flags run far above scattered anomalies (the recent share above
        max(``NOVELTY_SHARE``, 20 × ``anomaly_rate``))."""
        return self.flag_share > max(NOVELTY_SHARE, 20 * anomaly_rate)

    @property
    def drifting(self) -> bool:
        return self.flag_share > DRIFT_SHARE

    def excess(self, anomaly_rate: float) -> float:
        return self.flag_share / anomaly_rate

    def count_flags(self, keep: float, n_flagged: int, n: int) -> None:
        """The flagged share after ``n`` points, ``n_flagged`` flagged (the average keeps
        ``keep`` over them)."""
        self.flag_share = keep * self.flag_share + (1.0 - keep) * n_flagged / n

    def forget_flags(self) -> None:
        self.flag_share = 0.0

    # ------------------------------------------------------------------ the window
    def counted_window(self, anomaly_rate: float) -> tuple[float, float]:
        """The window points are counted in: none while flags are excessive (the model does
        not fit the stream then, and a drift must not lower the threshold)."""
        return (-np.inf, -np.inf) if self.excessive(anomaly_rate) else self.window

    def count_window(self, log_lik: np.ndarray, window: tuple[float, float]) -> None:
        """The window share after a batch of log-likelihoods (n,) counted in ``window``."""
        n = len(log_lik)
        if n == 0:
            return
        lo, hi = window
        keep = tail_keep(n)
        self.window_share *= keep
        if lo > -np.inf:
            inside = np.count_nonzero((log_lik >= lo) & (log_lik < hi))
            self.window_share += (1.0 - keep) * int(inside) / n
        self.window_mass = keep * self.window_mass + (1.0 - keep)

    def count_inlier(self, log_lik: float, anomaly_rate: float, recent_keep: float) -> None:
        """Both shares after one point, not flagged, of log-likelihood ``log_lik`` (the flagged
        share keeps ``recent_keep`` over it)."""
        lo, hi = self.counted_window(anomaly_rate)
        self.flag_share = recent_keep * self.flag_share + 0.0
        self.window_share *= TAIL_KEEP
        if lo <= log_lik < hi:
            self.window_share += 1.0 - TAIL_KEEP
        self.window_mass = TAIL_KEEP * self.window_mass + (1.0 - TAIL_KEEP)

    def fold(self, delta: StatsDelta) -> None:
        """Both shares after a worker's delta (:mod:`streamem.model.delta`)."""
        self.flag_share = delta.recent_keep * self.flag_share + delta.flag_add
        keep = tail_keep(delta.n_points)
        self.window_share = keep * self.window_share + delta.window_add
        self.window_mass = keep * self.window_mass + (1.0 - keep)

    # ------------------------------------------------------------------ the threshold
    def restart(self) -> None:
        """After a (re)fit: the window's average starts over, and there is no early floor
        until one is measured."""
        self.window_share = self.window_mass = 0.0
        self.early = -np.inf

    def calibrate(self, weights: np.ndarray, log_det: np.ndarray, n_features: int,
                  anomaly_rate: float, start: float) -> float:
        """The threshold in force for the parameters (weights and log det of the precision
        factors, (K,)); ``start``: the previous one. Ends the early floor once the tail is
        measured, and solves the window's ends again when they drifted off their levels."""
        d, rate = n_features, anomaly_rate
        self.bound = anomaly_threshold(weights, log_det, d, rate, start=self.bound)
        levels = window_levels(rate)
        shares = [bound_share(t, weights, log_det, d) for t in self.window]
        threshold, self.inflation = calibrated_threshold(
            self.window_share, self.window_mass, weights, log_det, d, rate, self.bound,
            start=start, predicted=shares[1] - shares[0])
        if early_over(self.window_mass, shares[1] - shares[0]):
            self.early = -np.inf  # the tail is measured: the early floor is over
        if not all(level / WINDOW_SLACK <= share <= level * WINDOW_SLACK
                   for share, level in zip(shares, levels, strict=True)):
            self.window = tuple(  # type: ignore[assignment]
                anomaly_threshold(weights, log_det, d, level, start=t)
                for level, t in zip(levels, self.window, strict=True))
        return threshold

    def reported(self, anomaly: np.ndarray, log_lik: np.ndarray) -> np.ndarray:
        """The flags answered: ``anomaly`` (below the threshold), and below the early floor
        while there is one."""
        if self.early == -np.inf:
            return anomaly
        return anomaly & (log_lik < self.early)

    @property
    def early_floor(self) -> float | None:
        return None if self.early == -np.inf else float(self.early)


def warm_up_floor(points: np.ndarray, n_components: int, kind: CovarianceKind, *,
                  reg_covar: float, init: str, hard: bool, anomaly_rate: float,
                  rng: np.random.Generator) -> float:
    """The early floor (``model.anomaly.early_floor``) of warm-up ``points`` (n, d): each half
    scored by a mixture fitted to the other; −∞ (none) for a warm-up of fewer than 4·K·(d + 1)
    points, or when a half cannot be fitted. Wild points (``seeding.tame``) are left out: one
    at 1e15 would put the floor at its depth (~−1e29)."""
    points = points[tame(points)]
    n, d = points.shape
    if n < 4 * n_components * (d + 1):
        return -np.inf
    halves = np.array_split(rng.permutation(n), 2)
    scores = []
    try:
        for fit, scored in (halves, halves[::-1]):
            stats = fit_batch(points[fit], n_components, kind, reg_covar=reg_covar, init=init,
                              hard=hard, rng=rng)
            params = params_from_statistics(stats, kind, reg_covar)
            scores.append(e_step(kind, params, points[scored])[1])
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return -np.inf
    return early_floor(np.concatenate(scores), anomaly_rate)
