"""Per-covariance-type maths: one small function per job, chosen through :data:`KINDS`.

Shapes, with K components and d features:

============  ==================  ==================  =============================
type          covariances         precisions_chol     scatter (Σ r (x-μ)(x-μ)ᵀ)
============  ==================  ==================  =============================
full          (K, d, d)           (K, d, d) upper     (K, d, d)
diag          (K, d)              (K, d)              (K, d)
spherical     (K,)                (K,)                (K,) (mean over features)
============  ==================  ==================  =============================

``precisions_chol`` follows scikit-learn: ``precision = P @ P.T`` and
``(x - μ)ᵀ Σ⁻¹ (x - μ) = |(x - μ) @ P|²``. Every point-wise computation takes points ``Y`` already
shifted by a reference point ``c`` and means ``M = μ - c`` in the same frame, which keeps the
second moments free of cancellation when the data sit far from the origin.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

LOG_2PI = float(np.log(2.0 * np.pi))
#: Share of each variance added to it besides ``reg_covar``.
RELATIVE_FLOOR = 1e-12
#: Responsibilities below this share of a point's weight are left out of the second moments.
ACTIVE_SHARE = 1e-10
#: Up to this many features the second moments use one dense wide GEMM (loop overhead wins).
DENSE_MOMENT_FEATURES = 16


def _cholesky_full(cov: np.ndarray) -> np.ndarray:
    """Precision Cholesky factors (K, d, d) of covariances (K, d, d).

    P_k = U_k⁻¹ with Σ_k = U_kᵀ U_k, by LAPACK's potrf and trtri per component (upper factors
    are already scikit-learn's layout, so nothing is transposed; three times faster than a
    batched solve against the identity). Raises ``LinAlgError`` when a covariance is not
    positive definite.
    """
    out = np.empty_like(cov)
    potrf, trtri = lapack.dpotrf, lapack.dtrtri
    for k in range(len(cov)):
        chol, info = potrf(cov[k], 0, 1)  # lower=0, clean=1 (positional: a third faster)
        if info == 0:
            out[k], info = trtri(chol, 0)  # lower=0
        if info != 0:
            raise np.linalg.LinAlgError(f"covariance {k} is not positive definite")
    return out


def _cholesky_diag(cov: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(cov)


def _log_det_full(prec_chol: np.ndarray, n_features: int) -> np.ndarray:
    """log det of each precision Cholesky factor, (K,) — i.e. −½ log det Σ_k."""
    K, d, _ = prec_chol.shape
    return np.add.reduce(np.log(prec_chol.reshape(K, d * d)[:, :: d + 1]), axis=1)


def _log_det_diag(prec_chol: np.ndarray, n_features: int) -> np.ndarray:
    return np.log(prec_chol).sum(axis=1)


def _log_det_spherical(prec_chol: np.ndarray, n_features: int) -> np.ndarray:
    return n_features * np.log(prec_chol)


def _maha_full(Y: np.ndarray, M: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances, component-major (K, n), from one wide GEMM.

    [[P_1ᵀ … P_Kᵀ]ᵀ | −P_kᵀ m_k] (K·d, d+1) @ [Yᵀ; 1] (d+1, n) gives every P_kᵀ(y − m_k) at
    once, with the points along the rows so that the sums of squares per component run over
    long contiguous memory.
    """
    K, d, _ = prec_chol.shape
    n = len(Y)
    wide = np.empty((K * d, d + 1))
    wide[:, :d] = np.swapaxes(prec_chol, 1, 2).reshape(K * d, d)
    wide[:, d] = -np.matmul(M[:, None, :], prec_chol).reshape(K * d)
    Y1 = np.empty((d + 1, n))
    Y1[:d] = Y.T
    Y1[d] = 1.0
    Z = (wide @ Y1).reshape(K, d, n)
    return np.einsum("kdn,kdn->kn", Z, Z)


def _maha_diag(Y: np.ndarray, M: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    prec = prec_chol**2
    maha = prec @ (Y**2).T - 2.0 * ((M * prec) @ Y.T) + (M**2 * prec).sum(axis=1)[:, None]
    return np.maximum(maha, 0.0)


def _maha_spherical(Y: np.ndarray, M: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    prec = prec_chol**2
    maha = (Y**2).sum(axis=1)[None] - 2.0 * (M @ Y.T) + (M**2).sum(axis=1)[:, None]
    return np.maximum(maha * prec[:, None], 0.0)


def _point_maha_full(D: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis norms (K, m) of a few vectors per component, D (K, m, d), each in its
    component's metric (D = x − μ_k: one point's distances from the means)."""
    Z = np.matmul(D, prec_chol)
    Z *= Z
    return np.add.reduce(Z, axis=2)


def _point_maha_diag(D: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    Z = D * prec_chol[:, None, :]
    return np.einsum("kij,kij->ki", Z, Z)


def _point_maha_spherical(D: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    return np.einsum("kij,kij->ki", D, D) * (prec_chol**2)[:, None]


def _moment_full(Y: np.ndarray, R: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """Σ_i R_ik y_i y_iᵀ for every k, (K, d, d), over the points ``active`` (n, K) for k.

    ``active`` defaults to the pairs whose responsibility is at least ``ACTIVE_SHARE`` of their
    point's weight (their contribution is below rounding otherwise).

    Few features: one GEMM of Rᵀ (K, n) against the points' outer-product features
    (n, d(d+1)/2). Many: a point far from a component has a responsibility that underflows its
    contribution, so each component's GEMM runs over its active points only — about K/2 times
    less work than the dense product on a well-separated mixture.
    """
    n, d = Y.shape
    K = R.shape[1]
    if d <= DENSE_MOMENT_FEATURES:
        return _unpack_upper(R.T @ _outer_features(Y).T, d)
    if active is None:
        active = R > ACTIVE_SHARE * (R @ np.ones(K))[:, None]
    out = np.zeros((K, d, d))
    for k in range(K):
        rows = np.flatnonzero(active[:, k])
        if len(rows):
            Yk = Y[rows]
            out[k] = (Yk * R[rows, k, None]).T @ Yk
    return out


def _outer_features(Y: np.ndarray) -> np.ndarray:
    """The upper triangle of every y yᵀ, one row per entry, (d(d+1)/2, n).

    Points run along the rows so that every multiply is over long contiguous memory.
    """
    n, d = Y.shape
    YT = np.ascontiguousarray(Y.T)
    out = np.empty((d * (d + 1) // 2, n))
    start = 0
    for i in range(d):
        np.multiply(YT[i], YT[i:], out=out[start : start + d - i])
        start += d - i
    return out


@functools.lru_cache(maxsize=64)
def _upper_positions(d: int) -> np.ndarray:
    """For each entry of a d×d matrix, row-major, its position in the row-major upper triangle."""
    rows, cols = np.triu_indices(d)
    position = np.empty((d, d), dtype=np.intp)
    position[rows, cols] = position[cols, rows] = np.arange(len(rows))
    return position.ravel()


def _unpack_upper(upper: np.ndarray, d: int) -> np.ndarray:
    """Symmetric matrices (K, d, d) from their row-major upper triangles (K, d(d+1)/2)."""
    return np.take(upper, _upper_positions(d), axis=1).reshape(len(upper), d, d)


def _moment_diag(Y: np.ndarray, R: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    return R.T @ (Y**2)


def _moment_spherical(
    Y: np.ndarray, R: np.ndarray, active: np.ndarray | None = None
) -> np.ndarray:
    return (R.T @ (Y**2).sum(axis=1)) / Y.shape[1]


def _outer_full(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-component outer products a_k b_kᵀ, (K, d, d)."""
    return a[:, :, None] * b[:, None, :]


def _outer_sum_full(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-component sums of outer products Σ_j a_kj b_kjᵀ of A, B (K, m, d), (K, d, d): one
    batched GEMM."""
    return np.matmul(A.transpose(0, 2, 1), B)


def _outer_sum_diag(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.einsum("kjd,kjd->kd", A, B)


def _outer_sum_spherical(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.einsum("kjd,kjd->k", A, B) / A.shape[2]


def _outer_diag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


def _outer_spherical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).mean(axis=1)


def _add_floor_full(cov: np.ndarray, reg: float) -> np.ndarray:
    """Symmetrise and add reg + RELATIVE_FLOOR × its own variance to each diagonal entry.

    The relative part bounds the condition number of the correlation matrix (about
    d / RELATIVE_FLOOR), so the Cholesky factorisation (indifferent to the features' scales)
    succeeds even for perfectly correlated features at a large scale. Per feature, not the
    largest variance for all: a feature in bytes (variance 1e12) next to features of order 1
    would otherwise add 1 to their variances and wash them out (0.8 nats per point lost at 1e6,
    43 at 1e9, against scikit-learn's fit).
    """
    cov = cov + cov.transpose(0, 2, 1)
    cov *= 0.5
    d = cov.shape[-1]
    diag = cov.reshape(len(cov), d * d)[:, :: d + 1]  # a view of the diagonals
    diag += np.maximum(diag, 0.0) * RELATIVE_FLOOR + reg
    return cov


def _refresh_full(
    scatter: np.ndarray, divisors: list[float], rows: list[int], reg: float,
    covariances: np.ndarray, prec_chol: np.ndarray, n_features: int,
) -> list[float]:
    """The floored covariance (``_add_floor_full`` of scatter / divisor, to rounding: exactly
    symmetric, (S + Sᵀ)·(0.5/n) in two calls) and its precision factor (``_cholesky_full``'s,
    bit for bit) of each component in ``rows``, written into ``covariances`` and ``prec_chol``
    (K, d, d); returns the factors' log dets (m,) as floats (``_log_det_full``'s to rounding).
    One matrix at a time: for the few rows one point moves, a handful of calls each beats the
    batched functions' fixed cost. ``LinAlgError`` when a covariance is not positive
    definite."""
    d = scatter.shape[-1]
    potrf, trtri = lapack.dpotrf, lapack.dtrtri
    log_dets = []
    for k, n in zip(rows, divisors, strict=True):
        raw = scatter[k]
        cov = np.add(raw, raw.T, out=covariances[k])
        cov *= 0.5 / n
        diag = cov.reshape(d * d)[:: d + 1]
        diag += np.maximum(diag, 0.0) * RELATIVE_FLOOR + reg
        chol, info = potrf(cov, 0, 1)
        if info == 0:
            prec_chol[k], info = trtri(chol, 0)
        if info != 0:
            raise np.linalg.LinAlgError(f"covariance {k} is not positive definite")
        factor = prec_chol[k].reshape(d * d)[:: d + 1].tolist()
        product = math.prod(factor)  # one log; the sum of logs if it over- or underflows
        log_dets.append(math.log(product) if 1e-300 < product < 1e300
                        else math.fsum(map(math.log, factor)))
    return log_dets


def _refresh_diag(
    scatter: np.ndarray, divisors: list[float], rows: list[int], reg: float,
    covariances: np.ndarray, prec_chol: np.ndarray, n_features: int,
) -> list[float]:
    """``_refresh_full`` for diagonal and spherical covariances, batched."""
    shape = (-1,) + (1,) * (scatter.ndim - 1)
    fresh = _add_floor_diag(scatter.take(rows, axis=0) / np.reshape(divisors, shape), reg)
    covariances[rows] = fresh
    prec_chol[rows] = factors = _cholesky_diag(fresh)
    log_det = _log_det_spherical if scatter.ndim == 1 else _log_det_diag
    return log_det(factors, n_features).tolist()


def _add_floor_diag(cov: np.ndarray, reg: float) -> np.ndarray:
    return np.maximum(cov, 0.0) + reg


def _variances_full(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of each covariance, ascending, (K, d)."""
    return np.linalg.eigvalsh(cov)


def _variances_diag(cov: np.ndarray) -> np.ndarray:
    return np.sort(cov, axis=1)


def _variances_spherical(cov: np.ndarray) -> np.ndarray:
    return cov[:, None]


def _to_full_full(cov: np.ndarray, d: int) -> np.ndarray:
    return cov


def _to_full_diag(cov: np.ndarray, d: int) -> np.ndarray:
    return cov[:, :, None] * np.eye(d)[None]


def _to_full_spherical(cov: np.ndarray, d: int) -> np.ndarray:
    return cov[:, None, None] * np.eye(d)[None]


def _from_full_full(cov: np.ndarray) -> np.ndarray:
    return cov


def _from_full_diag(cov: np.ndarray) -> np.ndarray:
    return np.diagonal(cov, axis1=1, axis2=2).copy()


def _from_full_spherical(cov: np.ndarray) -> np.ndarray:
    return np.diagonal(cov, axis1=1, axis2=2).mean(axis=1)


@dataclass(frozen=True)
class CovarianceKind:
    """The functions that differ between covariance types.

    Attributes
    ----------
    precision_cholesky : covariances -> precision Cholesky factors
    log_det : (precisions_chol, n_features) -> (K,) log det of the factors (= −½ log det Σ)
    mahalanobis : (Y (n, d), M (K, d), precisions_chol) -> (K, n) squared distances
    point_mahalanobis : (D (K, m, d), precisions_chol) -> (K, m) squared norms of m vectors per
        component in its metric (D = x − μ_k: one point's distances)
    moment : (Y (n, d), R (n, K)[, active (n, K) bool]) -> Σ_i R_ik (second moment of y_i) per
        component; pairs outside ``active`` may be skipped
    outer : (a (K, d), b (K, d)) -> per-component a bᵀ in this type's scatter shape
    outer_sum : (A (K, m, d), B (K, m, d)) -> per-component Σ_j a_j b_jᵀ, the scatter shape
    add_floor : (covariances, reg) -> symmetrised covariances + reg·I
    refresh : (scatter, divisors (m,), rows (m,), reg, covariances, precisions_chol,
        n_features) -> (m,) floats; the floored covariances scatter[rows] / divisors and
        their factors, written in place, and the factors' log dets
    variances : covariances -> (K, d or 1) eigenvalues, ascending
    to_full / from_full : convert to and from (K, d, d)
    n_parameters : (K, d) -> free covariance parameters
    """

    name: str
    precision_cholesky: Callable[[np.ndarray], np.ndarray]
    log_det: Callable[[np.ndarray, int], np.ndarray]
    mahalanobis: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    point_mahalanobis: Callable[[np.ndarray, np.ndarray], np.ndarray]
    moment: Callable[..., np.ndarray]
    outer: Callable[[np.ndarray, np.ndarray], np.ndarray]
    outer_sum: Callable[[np.ndarray, np.ndarray], np.ndarray]
    add_floor: Callable[[np.ndarray, float], np.ndarray]
    refresh: Callable[..., list[float]]
    variances: Callable[[np.ndarray], np.ndarray]
    to_full: Callable[[np.ndarray, int], np.ndarray]
    from_full: Callable[[np.ndarray], np.ndarray]
    n_parameters: Callable[[int, int], int]

    def scatter_shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        return {
            "full": (n_components, n_features, n_features),
            "diag": (n_components, n_features),
            "spherical": (n_components,),
        }[self.name]


def _n_parameters_full(n_components: int, n_features: int) -> int:
    return n_components * n_features * (n_features + 1) // 2


def _n_parameters_diag(n_components: int, n_features: int) -> int:
    return n_components * n_features


def _n_parameters_spherical(n_components: int, n_features: int) -> int:
    return n_components


# Module-level functions only (no lambdas): the table is pickled with the model by reference.
KINDS: dict[str, CovarianceKind] = {
    "full": CovarianceKind(
        "full", _cholesky_full, _log_det_full, _maha_full, _point_maha_full, _moment_full,
        _outer_full, _outer_sum_full, _add_floor_full, _refresh_full, _variances_full,
        _to_full_full, _from_full_full, _n_parameters_full,
    ),
    "diag": CovarianceKind(
        "diag", _cholesky_diag, _log_det_diag, _maha_diag, _point_maha_diag, _moment_diag,
        _outer_diag, _outer_sum_diag, _add_floor_diag, _refresh_diag, _variances_diag,
        _to_full_diag, _from_full_diag, _n_parameters_diag,
    ),
    "spherical": CovarianceKind(
        "spherical", _cholesky_diag, _log_det_spherical, _maha_spherical, _point_maha_spherical,
        _moment_spherical, _outer_spherical, _outer_sum_spherical, _add_floor_diag,
        _refresh_diag, _variances_spherical, _to_full_spherical, _from_full_spherical,
        _n_parameters_spherical,
    ),
}


def estimate_log_gaussian_prob(
    kind: CovarianceKind,
    Y: np.ndarray,
    M: np.ndarray,
    prec_chol: np.ndarray,
    log_offset: np.ndarray | float = 0.0,
    log_det: np.ndarray | None = None,
) -> np.ndarray:
    """log N(y | m_k, Σ_k) + ``log_offset`` (K,) for every point and component, (n, K).

    ``log_det`` is ``kind.log_det(prec_chol, d)`` when the caller already has it. The result is
    the transpose of a contiguous (K, n) array: reductions over components run along contiguous
    rows (see ``params.e_step``).
    """
    d = Y.shape[1]
    if log_det is None:
        log_det = kind.log_det(prec_chol, d)
    out = kind.mahalanobis(Y, M, prec_chol)
    out *= -0.5
    out += (log_det + (log_offset - 0.5 * d * LOG_2PI))[:, None]
    return out.T
