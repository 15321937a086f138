"""One point's whole step, compiled by numba when it is installed.

``OnlineGMM._learn_point`` (the common case of one point per ``partial_fit``) costs some fifty
numpy calls of ~0.5 µs on (K,) to (K, d, d) arrays; compiled, the same arithmetic is one call.
``step`` does what ``point.answer``, ``point.step``, ``point.blend`` and
``params.refresh_params`` do — E-step with the precision factors and a log-sum-exp, the
schedule, the blend of the centred statistics with the same drift bookkeeping and the same rows
factorised again, the floor of ``covariance.py``, Cholesky (full covariances), the precision
factor, its log det, the weights — for every covariance type (the parts that differ are chosen
by the scatter's ndim, which numba resolves at compile time), writing into fresh arrays that
the caller commits only when the step is valid. Sums run in another order than numpy's and the
factors are not LAPACK's: results agree with the numpy path to rounding (1e-13 relative per
step, the factors 1e-12), not bit for bit.

numba is an optional extra (``streamem[jit]``): without it, or with ``STREAMEM_NO_JIT=1`` in
the environment, or ``ENABLED = False``, ``compiled()`` is ``None`` and the numpy path runs.
numba is imported on the first call of ``compiled()``, not with ``streamem``, and each type's
code is compiled on its first call; the compiled code is cached on disk (next to this module
or in numba's user cache dir; where neither is writable it is compiled in memory once per
process).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from streamem.model.covariance import LOG_2PI, RELATIVE_FLOOR
from streamem.model.point import STALE_LIMIT
from streamem.model.statistics import TINY

#: Whether ``compiled()`` may return the kernel (tests and the bench switch it).
ENABLED = os.environ.get("STREAMEM_NO_JIT", "") not in ("1", "true", "yes")
#: Rows of the (ROWS, K) output ``step`` fills.
NK, WEIGHTS, LOG_WEIGHTS, LOG_DET, LOG_NORM, RESP, USAGE, DRIFT, LOG_LIK = range(9)
ROWS = 9

_kernel: Callable[..., tuple[int, int, float]] | None = None
_tried = False
_ready: dict[str, bool] = {}  # covariance type -> compiled for it
#: Why the kernel is not available ("" once it is, or before the first try).
why_not = ""


def compiled(kind: str = "full") -> Callable[..., tuple[int, int, float]] | None:
    """The compiled ``step`` for covariances of ``kind`` ("full", "diag" or "spherical"), or
    ``None`` (numba missing, disabled, or failed to compile)."""
    if not ENABLED:
        return None
    if not _tried:
        _load()
    if _kernel is None:
        return None
    ready = _ready.get(kind)
    if ready is None:
        ready = _ready[kind] = _warm(_kernel, kind)
    return _kernel if ready else None


def _load() -> None:
    global _kernel, _tried, why_not, _factorise
    _tried = True
    try:
        import numba
    except ImportError:
        why_not = "numba is not installed (pip install 'streamem[jit]')"
        return
    options: dict[str, Any] = dict(nogil=True, error_model="numpy", boundscheck=False,
                                   fastmath={"reassoc", "contract"})
    try:
        try:
            factorise = numba.njit(cache=True, **options)(_factorise)
            kernel = numba.njit(cache=True, **options)(step)
        except RuntimeError:  # no writable cache location: compile in memory
            factorise = numba.njit(cache=False, **options)(_factorise)
            kernel = numba.njit(cache=False, **options)(step)
    except Exception as exc:  # a numba that cannot compile this: the numpy path
        why_not = f"numba failed to compile the kernel: {exc!r}"
        return
    _factorise = factorise  # what ``step`` calls, compiled
    _kernel = kernel


def _warm(kernel: Callable[..., tuple[int, int, float]], kind: str) -> bool:
    """Compile (or load from the cache) the kernel for ``kind`` now, on a 1-component,
    1-feature model; ``False`` if it does not compile."""
    global why_not
    shape = {"full": (1, 1, 1), "diag": (1, 1), "spherical": (1,)}[kind]
    one, cov = np.ones((1, 1)), np.ones(shape)
    try:
        kernel(one, np.ones(1), one, cov, one, cov, cov, np.zeros(1), np.zeros(1), np.zeros(1),
               np.zeros(1), np.ones(1), -np.inf, 1.0, 0, 1.0, 1.0, 0.0, 1e-6, 0.5,
               np.empty((ROWS, 1)), np.empty((2, 1, 1)), np.empty((3,) + shape))
    except Exception as exc:
        why_not = f"numba failed to compile the {kind} kernel: {exc!r}"
        return False
    return True


def step(
    x: np.ndarray, nk: np.ndarray, s_means: np.ndarray, scatter: np.ndarray,
    means: np.ndarray, covariances: np.ndarray, prec_chol: np.ndarray, log_norm: np.ndarray,
    log_det: np.ndarray, center: np.ndarray, drift: np.ndarray, usage: np.ndarray,
    threshold: float, limit: float, n_steps: int, learning_decay: float,
    learning_offset: float, floor: float, reg_covar: float, keep: float, vec: np.ndarray,
    mvec: np.ndarray, mats: np.ndarray,
) -> tuple[int, int, float]:
    """Answer and learn one point x (1, d); (label, heaviest
    component, step weight γ), label −1 (nothing to commit) when the point is not the common
    case or the step is not valid.

    Parameters
    ----------
    nk, s_means, scatter : (K,), (K, d) and the type's scatter shape (K, d, d), (K, d) or
        (K,): the statistics.
    means, covariances, prec_chol, log_norm, log_det, center : the parameters (``Params``).
    drift : (K,) ``point.blend``'s drift of the kept factors.
    usage : (K,) the recent usage, decayed by ``keep`` per point.
    threshold, limit : the anomaly threshold and the largest magnitude of a coordinate: a point
        below the one or beyond the other is not the common case.
    n_steps, learning_decay, learning_offset, floor : the schedule (``point.step``).
    vec : (ROWS, K) output: the rows NK … LOG_LIK (LOG_LIK's first entry only).
    mvec : (2, K, d) output: the statistics' means, the parameters' means (equal, not shared).
    mats : (3,) + the scatter's shape, output: scatter, covariances, precision factors.
    """
    K, d = s_means.shape
    for i in range(d):
        if not -limit <= x[0, i] <= limit:  # NaN fails too
            return -1, 0, 0.0
    D = np.empty((K, 2, d))  # [μ_k − x, μ_k − c]
    dist = np.empty((K, 2))  # their squared norms in each component's metric
    z = np.empty((2, d))
    resp = vec[RESP]
    top = -np.inf
    for k in range(K):
        for i in range(d):
            D[k, 0, i] = means[k, i] - x[0, i]
            D[k, 1, i] = means[k, i] - center[i]
        if scatter.ndim == 3:  # full: z = Dᵀ P, P upper triangular, row by row of P
            z[:] = 0.0
            for i in range(d):
                v0, v1 = D[k, 0, i], D[k, 1, i]
                for j in range(i, d):
                    z[0, j] += v0 * prec_chol[k, i, j]
                    z[1, j] += v1 * prec_chol[k, i, j]
        elif scatter.ndim == 2:  # diag: P is the diagonal prec_chol[k]
            for i in range(d):
                z[0, i] = D[k, 0, i] * prec_chol[k, i]
                z[1, i] = D[k, 1, i] * prec_chol[k, i]
        else:  # spherical: P = prec_chol[k]·I
            for i in range(d):
                z[0, i] = D[k, 0, i] * prec_chol[k]
                z[1, i] = D[k, 1, i] * prec_chol[k]
        for row in range(2):
            total = 0.0
            for j in range(d):
                total += z[row, j] * z[row, j]
            dist[k, row] = total
        resp[k] = log_norm[k] - 0.5 * dist[k, 0]
        if resp[k] > top:
            top = resp[k]
    if not math.isfinite(top):
        return -1, 0, 0.0
    total = 0.0
    for k in range(K):
        resp[k] = math.exp(resp[k] - top)
        total += resp[k]
    label = 0
    for k in range(K):
        resp[k] /= total
        if resp[k] > resp[label]:
            label = k
    log_lik = top + math.log(total)
    if not log_lik >= threshold:
        return -1, 0, 0.0
    vec[LOG_LIK, 0] = log_lik

    gamma = min(max((n_steps + 1 + learning_offset) ** -learning_decay, floor), 1.0)
    decay = 1.0 - gamma
    n_new = vec[NK]
    total = 0.0
    for k in range(K):
        n_new[k] = decay * nk[k] + resp[k] * gamma
        total += n_new[k]
    scale = 1.0 / total if total > TINY else 1.0
    new_scatter, new_cov, new_prec = mats[0], mats[1], mats[2]
    new_means = mvec[0]
    kept = decay * scale
    w = np.empty((2, d))
    check = 0.0  # the sum of the new scatter, means and log dets: finite only if they all are
    for k in range(K):
        b = resp[k] * gamma
        n = n_new[k]
        f = b / n if n > TINY else 0.0
        c = decay * nk[k] * f * scale  # δδᵀ's coefficient: N_old·N_new/N, normalised
        a, e = dist[k, 0], dist[k, 1]
        if b > TINY:  # δ = x − μ: the scatter gains c·D₀D₀ᵀ, the mean moves by −f·D₀
            for j in range(d):
                w[0, j] = c * D[k, 0, j]
                w[1, j] = 0.0
            along = 0
            moved = f * (2.0 + 2.0 * a) + drift[k]
        else:  # the point as a second moment about the center (see ``point.blend``)
            dead = b * scale
            for j in range(d):
                w[0, j] = dead * D[k, 0, j] - dead * D[k, 1, j]
                w[1, j] = -dead * D[k, 0, j] + (c + dead) * D[k, 1, j]
            along = 1
            moved = f * (2.0 + 4.0 * a + 6.0 * e) + drift[k]
        for i in range(d):
            new_means[k, i] = s_means[k, i] - f * D[k, along, i]
            check += new_means[k, i]
        if scatter.ndim == 3:  # + D₀ w₀ᵀ + D₁ w₁ᵀ (``outer_sum``)
            for i in range(d):
                for j in range(d):
                    value = scatter[k, i, j] * kept + D[k, 0, i] * w[0, j]
                    if along:
                        value += D[k, 1, i] * w[1, j]
                    new_scatter[k, i, j] = value
                    check += value
        elif scatter.ndim == 2:  # their diagonals
            for i in range(d):
                value = scatter[k, i] * kept + D[k, 0, i] * w[0, i] + D[k, 1, i] * w[1, i]
                new_scatter[k, i] = value
                check += value
        else:  # their traces over d
            value = 0.0
            for i in range(d):
                value += D[k, 0, i] * w[0, i] + D[k, 1, i] * w[1, i]
            new_scatter[k] = scatter[k] * kept + value / d
            check += new_scatter[k]
        n_new[k] = n * scale
        if moved <= STALE_LIMIT and n_new[k] > TINY:  # the factor is kept (NaN: renewed)
            vec[DRIFT, k] = moved
            new_cov[k] = covariances[k]
            new_prec[k] = prec_chol[k]
            vec[LOG_DET, k] = log_det[k]
            continue
        vec[DRIFT, k] = 0.0
        mass = max(n_new[k], TINY)
        if scatter.ndim == 3:
            value = _factorise(new_scatter[k], mass, reg_covar, new_cov[k], new_prec[k])
        elif scatter.ndim == 2:  # ``covariance._refresh_diag``
            value = 0.0
            for i in range(d):
                new_cov[k, i] = max(new_scatter[k, i] / mass, 0.0) + reg_covar
                new_prec[k, i] = 1.0 / math.sqrt(new_cov[k, i])
                value += math.log(new_prec[k, i])
        else:
            new_cov[k] = max(new_scatter[k] / mass, 0.0) + reg_covar
            new_prec[k] = 1.0 / math.sqrt(new_cov[k])
            value = d * math.log(new_prec[k])
        if not math.isfinite(value):
            return -1, 0, 0.0
        vec[LOG_DET, k] = value
    mvec[1] = new_means

    total = 0.0
    for k in range(K):
        total += n_new[k]
    heaviest = 0
    half_d_log_2pi = 0.5 * d * LOG_2PI
    for k in range(K):
        weight = n_new[k] / total
        vec[WEIGHTS, k] = weight
        vec[LOG_WEIGHTS, k] = math.log(weight) if weight > 0.0 else -np.inf
        vec[LOG_NORM, k] = vec[LOG_WEIGHTS, k] + (vec[LOG_DET, k] - half_d_log_2pi)
        vec[USAGE, k] = keep * usage[k] + (1.0 - keep) * resp[k]
        if weight > vec[WEIGHTS, heaviest]:
            heaviest = k
        check += vec[LOG_DET, k]
    if not math.isfinite(check):  # a NaN or Inf never enters the model
        return -1, 0, 0.0
    return label, heaviest, gamma


def _factorise(
    raw: np.ndarray, n: float, reg_covar: float, cov: np.ndarray, prec: np.ndarray
) -> float:
    """``covariance._refresh_full`` for one component: the floored covariance of scatter ``raw``
    (d, d) over mass ``n`` into ``cov``, its upper precision factor P = U⁻¹ (Σ = UᵀU) into
    ``prec``; returns log det P, NaN when the covariance is not positive definite."""
    d = raw.shape[0]
    half = 0.5 / n
    for i in range(d):
        for j in range(d):
            cov[i, j] = (raw[i, j] + raw[j, i]) * half
        cov[i, i] += max(cov[i, i], 0.0) * RELATIVE_FLOOR + reg_covar
    L = np.empty((d, d))  # Σ = L Lᵀ, L = Uᵀ: every sum below runs along contiguous rows
    for j in range(d):
        s = cov[j, j]
        for m in range(j):
            s -= L[j, m] * L[j, m]
        if not (s > 0.0 and math.isfinite(s)):
            return np.nan
        L[j, j] = math.sqrt(s)
        for i in range(j + 1, d):
            s = cov[i, j]
            for m in range(j):
                s -= L[i, m] * L[j, m]
            L[i, j] = s / L[j, j]
    product = 1.0
    for i in range(d):  # P = U⁻¹ = L⁻ᵀ, upper: P[i, j] = −Σ_{i≤m<j} P[i, m] L[j, m] / L[j, j]
        for j in range(i):
            prec[i, j] = 0.0
        prec[i, i] = 1.0 / L[i, i]
        product *= prec[i, i]
        for j in range(i + 1, d):
            s = 0.0
            for m in range(i, j):
                s += prec[i, m] * L[j, m]
            prec[i, j] = -s / L[j, j]
    if 1e-300 < product < 1e300:
        return math.log(product)
    value = 0.0
    for j in range(d):
        value += math.log(prec[j, j])
    return value
