"""Sufficient statistics of a Gaussian mixture, kept centred so they never cancel.

The stepwise EM statistics are N_k = Σ r, S1_k = Σ r·x and S2_k = Σ r·xxᵀ, each a weighted
average over the points seen (the weights sum to one). They are stored in the equivalent centred
form (N_k, μ_k = S1_k/N_k, C_k = S2_k − N_k μ_k μ_kᵀ) and blended with Chan's pairwise update, which
is exact and avoids the catastrophic cancellation of S2/N − μμᵀ far from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamem.model.covariance import CovarianceKind

TINY = 10.0 * np.finfo(np.float64).eps


@dataclass
class SufficientStatistics:
    """Centred statistics of K components.

    Attributes
    ----------
    nk : (K,) responsibility mass; sums to one, so it is also the mixing weights.
    means : (K, d) weighted means μ_k.
    scatter : the kind's scatter shape; Σ r (x − μ_k)(x − μ_k)ᵀ (unnormalised by N_k).
    """

    nk: np.ndarray
    means: np.ndarray
    scatter: np.ndarray

    def copy(self) -> SufficientStatistics:
        return SufficientStatistics(self.nk.copy(), self.means.copy(), self.scatter.copy())

    def covariances(
        self, kind: CovarianceKind, reg_covar: float, rows: list[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Covariances C_k / N_k + reg·I in the kind's shape (of the components ``rows`` only,
        when given)."""
        nk, scatter = self.nk, self.scatter
        if rows is not None:
            nk, scatter = nk.take(rows), scatter.take(rows, axis=0)
        shape = (-1,) + (1,) * (scatter.ndim - 1)
        return kind.add_floor(scatter / np.maximum(nk, TINY).reshape(shape), reg_covar)

    def blend(self, batch: SufficientStatistics, decay: float, kind: CovarianceKind) -> None:
        """s ← decay·s + batch, in place, where ``batch`` already carries its step weights."""
        n_old = decay * self.nk
        n_new = n_old + batch.nk
        frac = np.divide(batch.nk, n_new, out=np.zeros_like(n_new), where=n_new > TINY)
        delta = batch.means - self.means
        scatter = decay * self.scatter
        scatter += batch.scatter
        scatter += kind.outer((n_old * frac)[:, None] * delta, delta)  # N_old·N_new/N·δδᵀ
        self.scatter = scatter
        self.means = self.means + frac[:, None] * delta
        self.nk = n_new

    def normalise(self) -> None:
        """Rescale so that Σ N_k = 1 (covariances and means are unchanged)."""
        total = self.nk.sum()
        if total > TINY:
            self.nk = self.nk / total
            self.scatter = self.scatter / total


def batch_statistics(
    kind: CovarianceKind, Y: np.ndarray, R: np.ndarray, center: np.ndarray
) -> SufficientStatistics:
    """Centred statistics of a weighted batch.

    Parameters
    ----------
    Y : (n, d) points minus ``center``.
    R : (n, K) responsibilities already multiplied by each point's step weight.
    center : (d,) the reference point ``Y`` was shifted by.

    N_k and the means use every responsibility; the second moments may skip those below
    ``covariance.ACTIVE_SHARE`` of their point's weight (their contribution is below rounding).
    """
    nk = np.ones(len(R)) @ R
    safe = np.where(nk > TINY, nk, 1.0)
    m = (R.T @ Y) / safe[:, None]
    m[nk <= TINY] = 0.0
    second = kind.moment(Y, R)
    shape = (-1,) + (1,) * (second.ndim - 1)
    scatter = second - nk.reshape(shape) * kind.outer(m, m)
    return SufficientStatistics(nk, m + center, scatter)
