"""Checks at the model's edge: hyperparameters once, each batch of points once."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class Interval:
    """A number between ``lo`` and ``hi`` (either may be None: unbounded), an integer when
    ``integer``; ``finite`` refuses +-inf, ``none`` accepts None too. NaN and booleans never
    pass."""

    integer: bool
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = True
    none: bool = False

    def __contains__(self, value: Any) -> bool:
        if value is None:
            return self.none
        kinds = (int, np.integer) if self.integer else (int, float, np.number)
        if isinstance(value, bool) or not isinstance(value, kinds) or np.iscomplexobj(value):
            return False
        if np.isnan(value) or (self.finite and not np.isfinite(value)):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return bool(self.hi is None or (value < self.hi if self.hi_open else value <= self.hi))

    def __str__(self) -> str:
        bounds = [f"{'>' if self.lo_open else '>='} {self.lo:g}" if self.lo is not None else "",
                  f"{'<' if self.hi_open else '<='} {self.hi:g}" if self.hi is not None else ""]
        kind = "an integer" if self.integer else "a finite number" if self.finite else "a number"
        text = " ".join([kind, " and ".join(b for b in bounds if b)]).strip()
        return f"{text} or None" if self.none else text


@dataclass(frozen=True)
class Options:
    """One of ``values`` (strings)."""

    values: tuple[str, ...]

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return f"one of {self.values}"


Constraint = Interval | Options

PARAMETER_CONSTRAINTS: dict[str, Constraint] = {
    "n_components": Interval(integer=True, lo=1),
    "covariance_type": Options(("full", "diag", "spherical")),
    "reg_covar": Interval(integer=False, lo=0.0, lo_open=True),
    # stepwise EM converges for step sizes (t + offset)^-decay with decay in (0.5, 1]
    "learning_decay": Interval(integer=False, lo=0.5, hi=1.0, lo_open=True),
    "learning_offset": Interval(integer=False, lo=0.0),
    "halflife": Interval(integer=False, lo=0.0, lo_open=True, finite=False, none=True),
    "warmup": Interval(integer=True, lo=1, none=True),
    "init": Options(("kmeans++", "random")),
    "assignment": Options(("soft", "hard")),
    "anomaly_rate": Interval(integer=False, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    "random_state": Interval(integer=True, lo=0, none=True),
    "max_iter": Interval(integer=True, lo=1),
    "tol": Interval(integer=False, lo=0.0),
}
"""Each hyperparameter's valid values, declared once (as scikit-learn's
``_parameter_constraints``): the model checks against it, the config reads its ranges."""


def check_hyperparameters(params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first bad hyperparameter and what was expected.

    Run when learning starts, not by ``__init__`` or ``set_params`` (scikit-learn's convention).
    """
    for name, constraint in PARAMETER_CONSTRAINTS.items():
        if params[name] not in constraint:
            raise ValueError(f"{name} must be {constraint}, got {params[name]!r}")


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


@functools.lru_cache(maxsize=64)
def max_abs_value(n_features: int) -> float:
    """The largest magnitude a coordinate may have (about 1e144 / sqrt(d)).

    The sum of d squares stays 1e20 below float64's overflow, room for the differences of two
    points and precisions up to ~1e12 in the Mahalanobis distances (a component shrunk to the
    covariance floor).
    """
    return 1e-10 * math.sqrt(float(np.finfo(np.float64).max) / n_features)


def _shown(rows: np.ndarray) -> str:
    return ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")


def feature_names(X: Any) -> np.ndarray | None:
    """The column names (d,) of a data frame X when they are all strings, as scikit-learn keeps
    them in ``feature_names_in_``; ``None`` for an array, or names of other types."""
    columns = None if isinstance(X, np.ndarray) else getattr(X, "columns", None)
    if columns is None:
        return None
    names = np.asarray(list(columns), dtype=object)
    if names.ndim != 1 or not all(isinstance(name, str) for name in names):
        return None
    return names


def check_feature_names(fitted: np.ndarray | None, X: Any) -> None:
    """Refuse a data frame X whose column names are not ``fitted`` (scikit-learn's rule: a
    ``ValueError`` naming the differences; a warning when only one of them has names)."""
    names = feature_names(X)
    if fitted is None and names is None:
        return
    if fitted is None:
        warnings.warn("X has feature names, but OnlineGMM was fitted without feature names",
                      UserWarning, stacklevel=3)
    elif names is None:
        warnings.warn("X does not have valid feature names, but OnlineGMM was fitted with "
                      "feature names", UserWarning, stacklevel=3)
    elif len(names) != len(fitted) or (names != fitted).any():
        unseen = sorted(set(names) - set(fitted))
        missing = sorted(set(fitted) - set(names))
        detail = "".join(f"\n{what}: {', '.join(found)}" for what, found in (
            ("Feature names unseen at fit time", unseen),
            ("Feature names seen at fit time, yet now missing", missing)) if found)
        raise ValueError("The feature names should match those that were passed during fit."
                         + (detail or "\nFeature names must be in the same order as they were "
                            "in fit."))


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
