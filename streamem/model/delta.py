"""Statistic deltas: what a worker learned from a batch, for a leader to fold into one model.

A worker answers a batch with the newest parameters it has and summarises it as a
:class:`StatsDelta`: the batch's unit-weight sufficient statistics (every point weighs one; the
leader applies the step sizes when it folds, see ``OnlineGMM.fold``) and what the collapse,
drift and anomaly logic needs. With ``learning_decay=1`` every point of a block folded at
t_start … t_end weighs 1/(t_end + τ0) and the old statistics decay by
(t_start + τ0 − 1)/(t_end + τ0), so folding unit-weight deltas in order reproduces one
instance's update on the concatenated stream exactly; only the parameters the E-step used
differ. Otherwise the block's total step weight is spread evenly over its points.

:func:`coalesce` merges consecutive deltas of one worker into one, exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from streamem.model import npz
from streamem.model.anomaly import tail_keep
from streamem.model.covariance import KINDS, CovarianceKind
from streamem.model.params import (
    Params,
    centred,
    e_step,
    hard_responsibilities,
)
from streamem.model.statistics import SufficientStatistics, batch_statistics
from streamem.model.validation import check_points

FORMAT = "streamem.StatsDelta"
FORMAT_VERSION = 1
_ARRAYS = ("header", "nk", "means", "scatter", "usage_add", "flagged", "flagged_at", "points",
           "inliers")
_HEADER = {"format", "format_version", "covariance_type", "n_components", "n_features",
           "version", "n_points", "n_updating", "n_flagged", "warmup", "recent_keep",
           "flag_add", "window_add"}
#: Added after the format's first release: deltas without them carry none.
_LATER_HEADER = {"window_add": 0.0}
MAX_HEADER_BYTES = 4096
#: Σ_k N_k must equal the updating points' count to this relative tolerance.
MASS_TOLERANCE = 1e-6
#: Relative size below which a negative diagonal scatter is rounding (see ``validate``).
NEGATIVE_TOLERANCE = 1e-9


def flagged_capacity(n_components: int, n_features: int) -> int:
    """How many recent flagged points the model keeps (and a delta carries) at most."""
    return max(256, 4 * n_components * (n_features + 1))


@dataclass(frozen=True)
class StatsDelta:
    """One worker's summary of one or more consecutive batches (K components, d features).

    Attributes
    ----------
    covariance_type : the model's covariance type (fixes ``scatter``'s shape).
    version : the oldest parameters' version the E-steps used.
    n_points : n, points answered.
    n_updating : m, points whose statistics are in ``nk``/``means``/``scatter`` (flagged points
        are left out while the model protects itself from them, see ``OnlineGMM.protecting_``).
    nk : (K,) Σ r over the m points (unit weights; sums to m).
    means : (K, d) responsibility-weighted means (any value where N_k = 0).
    scatter : the kind's scatter shape; centred Σ r (x − μ_k)(x − μ_k)ᵀ.
    n_flagged : points below the anomaly threshold.
    flagged : (f, d) the last flagged points, at most ``flagged_capacity(K, d)``.
    flagged_at : (f,) int64, each flagged point's position among the n points.
    recent_keep, usage_add, flag_add : the recent-usage (K,) and flagged-share averages move as
        u ← recent_keep·u + usage_add and s ← recent_keep·s + flag_add.
    points : (p, d) the last p ≤ n points themselves, when the leader needs them: all n before
        it is initialised (``warmup``: no statistics then, the leader learns from the points
        itself), and while it collects points to refit after a drift.
    warmup : the worker had no initialised parameters; only ``points`` count.
    window_add : the recent share of points in the threshold's calibration window moves as
        w ← tail_keep(n)·w + window_add (see :mod:`streamem.model.anomaly`).
    inliers : (q, d) the last q inliers, while the leader collects them for its moves (at most
        ``inlier_capacity``).
    """

    covariance_type: str
    version: int
    n_points: int
    n_updating: int
    nk: np.ndarray
    means: np.ndarray
    scatter: np.ndarray
    n_flagged: int
    flagged: np.ndarray
    flagged_at: np.ndarray
    recent_keep: float
    usage_add: np.ndarray
    flag_add: float
    points: np.ndarray
    warmup: bool = False
    window_add: float = 0.0
    inliers: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    @property
    def n_components(self) -> int:
        return len(self.nk)

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def statistics(self) -> SufficientStatistics:
        """The unit-weight statistics (copies)."""
        return SufficientStatistics(self.nk.copy(), self.means.copy(), self.scatter.copy())

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        """A versioned ``.npz`` (JSON header and float64/int64 arrays, no pickle)."""
        header = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "covariance_type": self.covariance_type, "n_components": self.n_components,
            "n_features": self.n_features, "version": self.version, "n_points": self.n_points,
            "n_updating": self.n_updating, "n_flagged": self.n_flagged,
            "warmup": self.warmup, "recent_keep": self.recent_keep, "flag_add": self.flag_add,
            "window_add": self.window_add,
        }
        return npz.dumps({
            "header": np.array(json.dumps(header)), "nk": self.nk, "means": self.means,
            "scatter": self.scatter, "usage_add": self.usage_add, "flagged": self.flagged,
            "flagged_at": self.flagged_at, "points": self.points,
            **({"inliers": self.inliers} if len(self.inliers) else {}),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> StatsDelta:
        """A delta from :meth:`to_bytes` output; ``ValueError`` saying what is wrong otherwise.

        Every array is read with its size bounded by ``data``'s (members are stored, not
        compressed) and checked for dtype, shape and finiteness.
        """
        try:
            archive = npz.Archive(data, allowed=_ARRAYS)
            text = archive.array("header", MAX_HEADER_BYTES, dtypes=("U",))
            header = json.loads(str(text))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not a streamem statistics delta: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not a streamem statistics delta (format header missing)")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"statistics delta format version {header.get('format_version')!r} "
                             f"is not supported (this streamem reads version {FORMAT_VERSION})")
        if isinstance(header, dict):
            header = {**_LATER_HEADER, **header}
        if set(header) != _HEADER:
            raise ValueError(f"statistics delta header keys {sorted(header)} are not "
                             f"{sorted(_HEADER)}")
        kind_name = header["covariance_type"]
        if kind_name not in KINDS:
            raise ValueError(f"statistics delta: unknown covariance_type {kind_name!r}")
        K, d = _int(header, "n_components", 1), _int(header, "n_features", 1)
        n = _int(header, "n_points", 0)
        limit = len(data)

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            a = archive.array(name, limit, dtypes=("<f8",))
            if a.shape != shape:
                raise ValueError(f"statistics delta: {name} has shape {a.shape}, "
                                 f"expected {shape}")
            return a

        flagged_at = archive.array("flagged_at", limit, dtypes=("<i8",))
        points = archive.array("points", limit, dtypes=("<f8",))
        if flagged_at.ndim != 1 or points.ndim != 2 or points.shape[1] != d:
            raise ValueError("statistics delta: flagged_at or points has the wrong shape")
        inliers = np.empty((0, d))
        if "inliers" in archive.names:
            inliers = archive.array("inliers", limit, dtypes=("<f8",))
            if inliers.ndim != 2 or inliers.shape[1] != d:
                raise ValueError("statistics delta: inliers has the wrong shape")
        delta = cls(
            covariance_type=kind_name, version=_int(header, "version", 0), n_points=n,
            n_updating=_int(header, "n_updating", 0), nk=get("nk", (K,)),
            means=get("means", (K, d)),
            scatter=get("scatter", KINDS[kind_name].scatter_shape(K, d)),
            n_flagged=_int(header, "n_flagged", 0),
            flagged=get("flagged", (len(flagged_at), d)), flagged_at=flagged_at,
            recent_keep=_float(header, "recent_keep"), usage_add=get("usage_add", (K,)),
            flag_add=_float(header, "flag_add"),
            points=points, warmup=_bool(header, "warmup"),
            window_add=_float(header, "window_add"), inliers=inliers,
        )
        delta.validate()
        return delta

    def validate(self) -> None:
        """``ValueError`` unless the delta is consistent and finite (see the attributes)."""
        kind = KINDS.get(self.covariance_type)
        if kind is None:
            raise ValueError(f"statistics delta: unknown covariance_type {self.covariance_type!r}")
        K, d, n = self.n_components, self.n_features, self.n_points
        if self.scatter.shape != kind.scatter_shape(K, d):
            raise ValueError("statistics delta: scatter has the wrong shape")
        if not self.n_updating <= n or not self.n_flagged <= n:
            raise ValueError("statistics delta: more updating or flagged points than points")
        for name in ("nk", "means", "scatter", "usage_add", "flagged"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"statistics delta: {name} is not finite")
        if (self.nk < 0).any() or (self.usage_add < 0).any():
            raise ValueError("statistics delta: negative responsibility mass")
        if abs(self.nk.sum() - self.n_updating) > MASS_TOLERANCE * max(1, self.n_updating):
            raise ValueError(f"statistics delta: Σ N_k = {self.nk.sum()!r} for "
                             f"{self.n_updating} updating points")
        if kind.name != "full":  # rounding leaves ~1e-16 × N_k·x² below zero, no more
            size = self.nk * (1.0 + (self.means**2).sum(axis=1))
            if (self.scatter < -NEGATIVE_TOLERANCE * size.reshape(-1, *[1] * (
                    self.scatter.ndim - 1))).any():
                raise ValueError("statistics delta: negative scatter")
        if not (0.0 <= self.recent_keep <= 1.0 and 0.0 <= self.flag_add <= 1.0
                and 0.0 <= self.window_add <= 1.0):
            raise ValueError("statistics delta: recent_keep, flag_add or window_add out of range")
        if len(self.inliers) and (len(self.inliers) > min(n, inlier_capacity(K, d))
                                  or self.inliers.ndim != 2 or self.inliers.shape[1] != d):
            raise ValueError("statistics delta: more inliers than points or allowed")
        if len(self.inliers):
            check_points(self.inliers, d, allow_empty=True)
        if len(self.flagged) > min(self.n_flagged, flagged_capacity(K, d)) or len(
                self.flagged_at) != len(self.flagged):
            raise ValueError("statistics delta: more flagged points than flagged or allowed")
        if len(self.flagged_at) and not (0 <= self.flagged_at.min()
                                         and self.flagged_at.max() < n):
            raise ValueError("statistics delta: a flagged position outside the batch")
        if kind.name == "full":
            scale = np.abs(self.scatter).max(initial=0.0)
            if (np.abs(self.scatter - np.swapaxes(self.scatter, 1, 2)) > 1e-8 * scale).any():
                raise ValueError("statistics delta: scatter is not symmetric")
        if self.points.ndim != 2 or len(self.points) > n:
            raise ValueError("statistics delta: more points than n_points")
        check_points(self.points, d, allow_empty=True)
        if self.warmup and (len(self.points) != n or self.n_updating or self.nk.any()):
            raise ValueError("statistics delta: a warm-up delta carries its points only")


def compute_delta(
    kind: CovarianceKind,
    params: Params,
    X: np.ndarray,
    *,
    version: int,
    threshold: float,
    protecting: bool,
    hard: bool,
    recent_halflife: float,
    keep_points: bool,
    drift_share: float,
    window: tuple[float, float] = (-math.inf, -math.inf),
    keep_inliers: bool = False,
) -> tuple[StatsDelta, np.ndarray, np.ndarray, np.ndarray]:
    """A worker's E-step on X (n, d) and its delta.

    Parameters
    ----------
    params : the parameters the worker answers with (of ``version``).
    threshold : log p(x) below which a point is flagged.
    protecting : whether flagged points are left out of the statistics.
    hard : classification EM (one-hot responsibilities in the statistics).
    recent_halflife : points; half-life of the recent-usage and flagged-share averages.
    keep_points : carry the points too (the leader collects them to refit after a drift);
        they are carried as well when more than ``drift_share`` of the batch is flagged, since
        the leader may start collecting with this very batch.
    window : the log-likelihoods [low, high) of the threshold's calibration window.
    keep_inliers : carry the last inliers (the leader collects them for its moves).

    Returns
    -------
    delta, responsibilities (n, K), log p(x) (n,), anomaly (n,) bool.
    """
    K, d = params.means.shape
    n = len(X)
    Y = centred(X, params.center)
    resp, log_lik = e_step(kind, params, X, Y)
    anomaly = log_lik < threshold
    n_flagged = int(np.count_nonzero(anomaly))
    R = hard_responsibilities(resp) if hard else resp
    if n_flagged and protecting:
        kept = np.flatnonzero(~anomaly)
        Yk, Rk = Y[kept], R[kept]
    else:
        Yk, Rk = Y, R
    if len(Yk):
        stats = batch_statistics(kind, Yk, Rk, params.center)
    else:
        stats = _empty_statistics(kind, K, d)
    keep = math.exp(-math.log(2.0) * n / recent_halflife) if n else 1.0
    inliers = (~anomaly).astype(np.float64)
    usage_add = ((1.0 - keep) / n) * (inliers @ resp) if n else np.zeros(K)
    rows = np.flatnonzero(anomaly)[-flagged_capacity(K, d):]
    delta = StatsDelta(
        covariance_type=kind.name, version=int(version), n_points=n, n_updating=len(Yk),
        nk=stats.nk, means=stats.means, scatter=stats.scatter, n_flagged=n_flagged,
        flagged=X[rows], flagged_at=rows.astype(np.int64), recent_keep=keep,
        usage_add=usage_add, flag_add=(1.0 - keep) * n_flagged / n if n else 0.0,
        points=X.copy() if keep_points or n_flagged > drift_share * n else np.empty((0, d)),
        window_add=(1.0 - tail_keep(n)) * int(np.count_nonzero(
            (log_lik >= window[0]) & (log_lik < window[1]))) / n if n else 0.0,
        inliers=(X[~anomaly][-inlier_capacity(K, d):] if keep_inliers and n
                 else np.empty((0, d))),
    )
    return delta, resp, log_lik, anomaly


def warmup_delta(covariance_type: str, n_components: int, X: np.ndarray) -> StatsDelta:
    """A delta that carries the points X (n, d) only: its worker had no initialised model."""
    kind = KINDS[covariance_type]
    n, d = X.shape
    stats = _empty_statistics(kind, n_components, d)
    return StatsDelta(covariance_type, 0, n, 0, stats.nk, stats.means, stats.scatter, 0,
                      np.empty((0, d)), np.empty(0, dtype=np.int64), 1.0,
                      np.zeros(n_components), 0.0, X.copy(), warmup=True)


def coalesce(deltas: list[StatsDelta]) -> StatsDelta:
    """One delta equal to folding ``deltas`` (consecutive, of one worker) in order.

    Statistics combine by Chan's update, the recent averages compose, flagged points and their
    positions concatenate (the last ``flagged_capacity`` kept), and so do the carried points as
    far as they are the last ones. A warm-up delta coalesces only with warm-up deltas.
    """
    if not deltas:
        raise ValueError("nothing to coalesce")
    first = deltas[0]
    kind = KINDS[first.covariance_type]
    out = first
    for d in deltas[1:]:
        if (d.covariance_type, d.n_components, d.n_features) != (
                out.covariance_type, out.n_components, out.n_features):
            raise ValueError("deltas of different models cannot be coalesced")
        if d.warmup != out.warmup:
            raise ValueError("a warm-up delta coalesces only with warm-up deltas")
        stats = out.statistics
        stats.blend(d.statistics, 1.0, kind)
        cap = flagged_capacity(out.n_components, out.n_features)
        flagged = np.concatenate([out.flagged, d.flagged])[-cap:]
        flagged_at = np.concatenate([out.flagged_at, d.flagged_at + out.n_points])[-cap:]
        points = d.points  # the last points only: a gap would break the suffix
        inliers = np.concatenate([out.inliers.reshape(-1, out.n_features), d.inliers.reshape(
            -1, out.n_features)])[-inlier_capacity(out.n_components, out.n_features):]
        if len(d.points) == d.n_points:
            points = np.concatenate([out.points, d.points])
        out = replace(
            out, version=min(out.version, d.version), n_points=out.n_points + d.n_points,
            n_updating=out.n_updating + d.n_updating, nk=stats.nk, means=stats.means,
            scatter=stats.scatter, n_flagged=out.n_flagged + d.n_flagged, flagged=flagged,
            flagged_at=flagged_at, recent_keep=out.recent_keep * d.recent_keep,
            usage_add=d.recent_keep * out.usage_add + d.usage_add,
            flag_add=d.recent_keep * out.flag_add + d.flag_add, points=points,
            window_add=tail_keep(d.n_points) * out.window_add + d.window_add, inliers=inliers,
        )
    return out


def inlier_capacity(n_components: int, n_features: int) -> int:
    """Recent inliers a model keeps for its moves (and a delta carries at most)."""
    return max(4096, 8 * n_components * (n_features + 1))


def _empty_statistics(kind: CovarianceKind, K: int, d: int) -> SufficientStatistics:
    return SufficientStatistics(np.zeros(K), np.zeros((K, d)), np.zeros(kind.scatter_shape(K, d)))


def _int(header: dict[str, object], name: str, low: int) -> int:
    value = header[name]
    if type(value) is not int or value < low:
        raise ValueError(f"statistics delta: {name} must be an integer ≥ {low}, got {value!r}")
    return value


def _float(header: dict[str, object], name: str) -> float:
    value = header[name]
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"statistics delta: {name} must be a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _bool(header: dict[str, object], name: str) -> bool:
    value = header[name]
    if type(value) is not bool:
        raise ValueError(f"statistics delta: {name} must be true or false, got {value!r}")
    return value
