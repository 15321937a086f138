"""Matching the components of two mixtures, so that a refit keeps the ids of what did not move.

A drift refit fits a fresh mixture to the new regime; its components come in seeding order.
:func:`match_components` pairs them with the previous ones by the Hungarian assignment on the
squared Hellinger distance between Gaussians, H² = 1 − exp(−D_B) with D_B the Bhattacharyya
distance, so a cluster the drift left alone keeps its id. H² is bounded by one: components that
moved far cost about one whatever the pairing, so their distances (which grow with the square of
the shift in D_B) cannot outweigh the pairing of the components that stayed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def bhattacharyya(
    means_a: np.ndarray, covs_a: np.ndarray, means_b: np.ndarray, covs_b: np.ndarray
) -> np.ndarray:
    """Bhattacharyya distances between Gaussians, (K, L).

    D = ⅛ δᵀ Σ⁻¹ δ + ½ log det Σ − ¼ (log det Σ_a + log det Σ_b), with Σ = (Σ_a + Σ_b)/2 and
    δ = μ_a − μ_b, every determinant and solve through Cholesky factors.

    Parameters
    ----------
    means_a : (K, d); covs_a : (K, d, d) positive definite.
    means_b : (L, d); covs_b : (L, d, d) positive definite.
    """
    chol_a, chol_b = np.linalg.cholesky(covs_a), np.linalg.cholesky(covs_b)
    half_logdet_a = np.log(np.diagonal(chol_a, axis1=-2, axis2=-1)).sum(axis=-1)  # ½ log det
    half_logdet_b = np.log(np.diagonal(chol_b, axis1=-2, axis2=-1)).sum(axis=-1)
    pooled = 0.5 * (covs_a[:, None] + covs_b[None, :])  # (K, L, d, d)
    chol = np.linalg.cholesky(pooled)
    diff = means_a[:, None, :] - means_b[None, :, :]  # (K, L, d)
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    maha = np.einsum("kld,kld->kl", z, z)
    half_logdet = np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    return maha / 8.0 + half_logdet - 0.5 * (half_logdet_a[:, None] + half_logdet_b[None, :])


def match_components(
    means_old: np.ndarray, covs_old: np.ndarray, means_new: np.ndarray, covs_new: np.ndarray
) -> np.ndarray:
    """The order (K,) of the new components that best continues the old ids.

    ``new[order[k]]`` takes id k: the assignment minimising the total squared Hellinger
    distance between old component k and the new one it is given. Means (K, d), covariances
    (K, d, d).
    """
    cost = -np.expm1(-bhattacharyya(means_old, covs_old, means_new, covs_new))
    cost = np.where(np.isfinite(cost), cost, 1.0)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order
