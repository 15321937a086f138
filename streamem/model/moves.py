"""Split, merge and re-seed moves: leave a poor start that one pass of EM cannot leave.

Stepwise EM only climbs the likelihood from where warm-up left it. The moves of split-and-merge
EM (Ueda et al., 2000) keep K fixed and go where the fit is worst: merge two components that
explain the same points (their responsibility vectors are the most alike), and use the freed one
either to ``split`` the component that explains its points worst (its Mahalanobis distances are
the least χ²-like) or to ``reseed`` it on the points of lowest likelihood. The changed components
are refined by partial EM on half of a buffer of recent inliers (the others fixed), and a move is
kept only when it raises the other half's log-likelihood significantly more than the same partial
EM without the move would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from streamem.model.covariance import LOG_2PI, CovarianceKind
from streamem.model.params import Params, estimate_weighted_log_prob, make_params
from streamem.model.statistics import batch_statistics

#: Partial EM iterations on the training half.
PARTIAL_EM_STEPS = 8
#: Merge pairs and split targets tried per check (every combination, plus one re-seed).
CANDIDATES = 2
#: A move must beat the no-move refit by this many standard errors on the held-out half...
Z_GAIN = 3.0
#: ... and by at least this much (nats per point).
MIN_GAIN = 1e-3
#: A try goes on only when some component's Mardia kurtosis, on ``SCREEN_POINTS`` recent
#: inliers, is this many standard errors from a Gaussian's (see :func:`worth_trying`).
SCREEN_Z = 4.0
#: ... and outside these multiples of it: a fitted Gaussian's estimate lies within them even in
#: 32 dimensions; a component stretched over two clusters falls below, heavy tails rise above.
SCREEN_BAND = (0.85, 1.5)
SCREEN_POINTS = 4096
#: Share of the training half, at least 2(d + 1) points, a re-seeded component starts on.
RESEED_SHARE = 0.05


_Refit = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Move:
    """An accepted move: ``reason`` ("split" or "reseed"), the merged pair, the components
    overwritten (``slots``) with their new weights (m,), means (m, d) and covariances (the
    kind's shape, floor excluded), and the held-out gain in nats per point."""

    reason: str
    merged: tuple[int, int]
    slots: tuple[int, ...]
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    gain: float


def best_move(
    params: Params, kind: CovarianceKind, X: np.ndarray, reg_covar: float,
    rng: np.random.Generator,
) -> Move | None:
    """The best significant move on recent inliers ``X`` (n, d), or ``None``."""
    n, d = X.shape
    K = len(params.weights)
    if K < 3 or n < 4 * (d + 1):
        return None
    order = rng.permutation(n)
    train, held = X[order[: n // 2]], X[order[n // 2 :]]
    logp_train = estimate_weighted_log_prob(kind, params, train)
    logp_held = estimate_weighted_log_prob(kind, params, held)
    resp = np.exp(logp_train - logsumexp(logp_train, axis=1, keepdims=True))
    full = kind.to_full(params.covariances, d)
    best: Move | None = None
    baselines: dict[tuple[int, ...], _Refit | None] = {}

    def consider(reason: str, merged: tuple[int, int], slots: tuple[int, ...],
                 w: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> None:
        nonlocal best
        if slots not in baselines:
            baselines[slots] = _refit_held_out(
                kind, train, held, logp_train, logp_held, slots, params.weights[list(slots)],
                params.means[list(slots)], full[list(slots)], reg_covar)
        base = baselines[slots]
        moved = _refit_held_out(kind, train, held, logp_train, logp_held, slots, w, mu, cov,
                                reg_covar)
        if base is None or moved is None:
            return
        delta = moved[0] - base[0]
        gain = float(delta.mean())
        if gain < max(MIN_GAIN, Z_GAIN * float(delta.std()) / np.sqrt(len(delta))):
            return
        if best is None or gain > best.gain:
            best = Move(reason, merged, slots, moved[1], moved[2], moved[3], gain)

    for i, j in _merge_candidates(resp)[:CANDIDATES]:
        w_m, mu_m, cov_m = _merged(params.weights, params.means, full, i, j)
        for k in [k for k in _split_candidates(kind, params, train, resp) if k not in (i, j)][
            :CANDIDATES
        ]:
            mu_a, mu_b, cov_s = _halves(params.means[k], full[k])
            consider("split", (i, j), (i, j, k),
                     np.array([w_m, params.weights[k] / 2, params.weights[k] / 2]),
                     np.stack([mu_m, mu_a, mu_b]), np.stack([cov_m, cov_s, cov_s]))
    pairs = _merge_candidates(resp)
    if pairs:
        i, j = pairs[0]
        w_m, mu_m, cov_m = _merged(params.weights, params.means, full, i, j)
        log_lik = logsumexp(logp_train, axis=1)
        m = max(2 * (d + 1), int(RESEED_SHARE * len(train)))
        low = train[np.argpartition(log_lik, m - 1)[:m]]
        sample = np.atleast_2d(np.cov(low, rowvar=False, bias=True))
        cov_r = 0.7 * sample + (0.3 * np.trace(sample) / d + reg_covar) * np.eye(d)
        consider("reseed", (i, j), (i, j), np.array([w_m, m / len(train)]),
                 np.stack([mu_m, low.mean(axis=0)]), np.stack([cov_m, cov_r]))
    return best


def worth_trying(
    params: Params, kind: CovarianceKind, X: np.ndarray, rng: np.random.Generator,
) -> bool:
    """A cheap screen before :func:`best_move`: whether a component's points X (n, d) are far
    from Gaussian: their Mardia kurtosis b₂ is ``SCREEN_Z`` standard errors √(8d(d + 2)/N_k)
    from d(d + 2) and outside ``SCREEN_BAND`` times it, as in the poor starts the moves leave."""
    n, d = X.shape
    if n > SCREEN_POINTS:
        X = X[rng.choice(n, SCREEN_POINTS, replace=False)]
    maha = kind.mahalanobis(X - params.center, params.means - params.center,
                            params.precisions_chol)  # (K, n)
    logp = (params.log_weights + params.log_det - 0.5 * d * LOG_2PI)[:, None] - 0.5 * maha
    resp = np.exp(logp - logsumexp(logp, axis=0, keepdims=True)).T  # (n, K)
    nk = resp.sum(axis=0)
    gaussian = d * (d + 2.0)
    kurtosis = np.einsum("kn,nk->k", maha**2, resp) / np.maximum(nk, 1e-300)
    z = np.abs(kurtosis - gaussian) / np.sqrt(8.0 * gaussian / np.maximum(nk, 1e-300))
    ratio = kurtosis / gaussian
    far = (z > SCREEN_Z) & ((ratio < SCREEN_BAND[0]) | (ratio > SCREEN_BAND[1]))
    return bool(far[nk >= 10 * (d + 1)].any())


def _merge_candidates(resp: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), best first, by the cosine of their responsibility vectors."""
    norm = np.sqrt((resp**2).sum(axis=0))
    cos = (resp.T @ resp) / np.maximum(np.outer(norm, norm), 1e-300)
    iu, ju = np.triu_indices(len(norm), 1)
    order = np.argsort(-cos[iu, ju])
    return [(int(iu[o]), int(ju[o])) for o in order if cos[iu[o], ju[o]] > 0]


def _split_candidates(
    kind: CovarianceKind, params: Params, X: np.ndarray, resp: np.ndarray
) -> list[int]:
    """Components, worst fit first: the farthest Mardia kurtosis from a Gaussian's d(d + 2)."""
    d = X.shape[1]
    maha = kind.mahalanobis(X - params.center, params.means - params.center,
                            params.precisions_chol)  # (K, n)
    nk = resp.sum(axis=0)
    kurtosis = np.einsum("kn,nk->k", maha**2, resp) / np.maximum(nk, 1e-300)
    badness = np.abs(np.log(np.maximum(kurtosis, 1e-300) / (d * (d + 2.0))))
    badness[nk < d + 1] = -np.inf
    return [int(k) for k in np.argsort(-badness) if np.isfinite(badness[k])]


def _merged(
    w: np.ndarray, mu: np.ndarray, cov: np.ndarray, i: int, j: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Moment-matched merge of components i and j: weight, mean (d,), covariance (d, d)."""
    total = float(w[i] + w[j])
    a, b = w[i] / total, w[j] / total
    mean = a * mu[i] + b * mu[j]
    di, dj = mu[i] - mean, mu[j] - mean
    return total, mean, a * (cov[i] + np.outer(di, di)) + b * (cov[j] + np.outer(dj, dj))


def _halves(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Gaussian cut through its mean along its widest axis: the halves' means and covariance.

    The halves sit ±0.8σ apart with variance 0.36σ² along that axis.
    """
    eigval, eigvec = np.linalg.eigh(cov)
    lam, v = float(eigval[-1]), eigvec[:, -1]
    step = 0.8 * np.sqrt(lam) * v
    return mean + step, mean - step, cov - 0.64 * lam * np.outer(v, v)


def _refit_held_out(
    kind: CovarianceKind,
    train: np.ndarray,
    held: np.ndarray,
    logp_train: np.ndarray,
    logp_held: np.ndarray,
    slots: tuple[int, ...],
    weights: np.ndarray,
    means: np.ndarray,
    full_covariances: np.ndarray,
    reg_covar: float,
) -> _Refit | None:
    """Partial EM of components ``slots`` on ``train``, the others fixed.

    Returns the held-out log-likelihoods (n_held,) and the refined weights, means and
    covariances (kind's shape, floor excluded), or ``None`` when a component empties or is not
    positive definite. The slots' total weight is kept.
    """
    d = train.shape[1]
    others = np.ones(logp_train.shape[1], dtype=bool)
    others[list(slots)] = False
    fixed_train = logsumexp(logp_train[:, others], axis=1)
    fixed_held = logsumexp(logp_held[:, others], axis=1)
    total = float(weights.sum())
    w, mu = weights.astype(np.float64), means
    cov = kind.add_floor(kind.from_full(full_covariances), 0.0)
    support = d + 1 if kind.name == "full" else 2
    try:
        for _ in range(PARTIAL_EM_STEPS):
            part = make_params(kind, w, mu, cov)
            lp = estimate_weighted_log_prob(kind, part, train)
            resp = np.exp(lp - np.logaddexp(fixed_train, logsumexp(lp, axis=1))[:, None])
            if (resp.sum(axis=0) < support).any():
                return None
            stats = batch_statistics(kind, train - part.center, resp / len(train), part.center)
            w = total * stats.nk / stats.nk.sum()
            mu = stats.means
            cov = stats.covariances(kind, reg_covar)
        part = make_params(kind, w, mu, cov)
    except np.linalg.LinAlgError:
        return None
    held_lp = np.logaddexp(fixed_held, logsumexp(estimate_weighted_log_prob(kind, part, held),
                                                 axis=1))
    if not np.isfinite(held_lp).all():
        return None
    return held_lp, w, mu, kind.add_floor(cov, -reg_covar)
