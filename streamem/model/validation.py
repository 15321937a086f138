"""Checks at the model's edge: hyperparameters once, each batch of points once."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import sparse

_CHOICES = {
    "covariance_type": ("full", "diag", "spherical"),
    "init": ("kmeans++", "random"),
    "assignment": ("soft", "hard"),
}


def check_hyperparameters(params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first bad hyperparameter and what was expected.

    Run when learning starts, not by ``__init__`` or ``set_params`` (scikit-learn's convention).
    """
    for name, choices in _CHOICES.items():
        if not isinstance(params[name], str) or params[name] not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {params[name]!r}")
    k = params["n_components"]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {k!r}")
    for name in ("reg_covar", "learning_decay", "learning_offset", "anomaly_rate"):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not params["reg_covar"] > 0:
        raise ValueError(f"reg_covar must be > 0, got {params['reg_covar']!r}")
    if not 0.5 < params["learning_decay"] <= 1.0:
        raise ValueError(
            f"learning_decay must be in (0.5, 1] for stepwise EM to converge, "
            f"got {params['learning_decay']!r}"
        )
    if not params["learning_offset"] >= 0:
        raise ValueError(f"learning_offset must be >= 0, got {params['learning_offset']!r}")
    halflife = params["halflife"]
    if halflife is not None and (isinstance(halflife, bool) or not isinstance(
            halflife, (int, float, np.number))):
        raise ValueError(f"halflife must be a number of points or None, got {halflife!r}")
    if params["halflife"] is not None and not params["halflife"] > 0:
        raise ValueError(f"halflife must be > 0 points or None, got {params['halflife']!r}")
    for name in ("warmup", "random_state"):
        value, low = params[name], 1 if name == "warmup" else 0
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, np.integer)) or value < low):
            raise ValueError(f"{name} must be an integer >= {low} or None, got {value!r}")
    if not 0.0 < params["anomaly_rate"] < 1.0:
        raise ValueError(f"anomaly_rate must be in (0, 1), got {params['anomaly_rate']!r}")
    max_iter = params["max_iter"]
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    tol = params["tol"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) \
            or not 0.0 <= tol < np.inf:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


class NonNumericPoints(ValueError, TypeError):
    """Points that are not numbers: a ``ValueError`` (bad input) and a ``TypeError`` as numpy's."""


def check_points(X: Any, n_features: int | None, allow_empty: bool = False) -> np.ndarray:
    """X as a float64 (n, d) array with d >= 1 and n >= 1 (or n = 0 when ``allow_empty``).

    Complex, non-numeric, empty, wrongly shaped or non-finite input is refused with a message
    saying what was wrong (the wording of scikit-learn's ``check_array`` where it has one).
    A float64 ndarray, the streaming case, is not copied.
    """
    if not isinstance(X, np.ndarray) or X.dtype != np.float64:
        X = _as_float64(X)
    if X.ndim != 2:
        raise ValueError(
            f"expected a 2-D array (n_points, n_features), got shape {X.shape}; "
            "Reshape your data with X.reshape(1, -1) for a single point"
        )
    if X.shape[1] == 0:
        raise ValueError(f"found 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if X.shape[0] == 0 and not allow_empty:
        raise ValueError(f"found 0 point(s) (shape={X.shape}) while a minimum of 1 is required.")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but OnlineGMM is expecting {n_features} features "
            "as input"
        )
    limit = max_abs_value(X.shape[1])
    if X.size == 0 or (X.max() <= limit and X.min() >= -limit):  # False with a NaN
        return X
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"NaN or Inf in {len(rows)} row(s): {_shown(rows)}; nothing was learned")
    rows = np.flatnonzero((np.abs(X) > limit).any(axis=1))
    raise ValueError(f"values beyond +-{limit:.3g} in {len(rows)} row(s): {_shown(rows)} (their "
                     "squares summed over the features would overflow); nothing was learned")


def max_abs_value(n_features: int) -> float:
    """The largest magnitude a coordinate may have (about 1e144 / sqrt(d)).

    The sum of d squares stays 1e20 below float64's overflow, room for the differences of two
    points and precisions up to ~1e12 in the Mahalanobis distances (a component shrunk to the
    covariance floor).
    """
    return 1e-10 * math.sqrt(float(np.finfo(np.float64).max) / n_features)


def _shown(rows: np.ndarray) -> str:
    return ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")


def _as_float64(X: Any) -> np.ndarray:
    if sparse.issparse(X):
        raise NonNumericPoints("sparse input is not supported: pass X.toarray()")
    try:
        is_complex = np.iscomplexobj(X)
        if not is_complex:
            return np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise NonNumericPoints(f"points must be numeric: {exc}") from exc
    raise ValueError("Complex data not supported: points must be real numbers")
