"""The model's bytes: a versioned ``.npz`` of arrays plus a JSON header, checked when read.

Everything that shapes the model's future (statistics, schedule position, warm-up buffer,
recent-usage trackers, seed) is saved, so a loaded model predicts identically and continues
the same trajectory.

:func:`loads` trusts nothing: the header must hold exactly the known keys with values of the
right type and range (hyperparameters as ``OnlineGMM`` checks them, a well-formed collapse
history); every array must have its dtype and the shape that ``n_components``, ``n_features``
and ``covariance_type`` give it, be finite, and the covariances must be positive definite.
Each array's size is checked against that shape before it is read. Anything else is a
``ValueError`` saying what is wrong, so a loaded model can always learn and answer.

The model is passed in (``loads`` takes its class) rather than imported: this module and
``gmm`` do not import each other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from streamem.model import npz
from streamem.model.collapse import RESET_REASONS
from streamem.model.covariance import KINDS, CovarianceKind
from streamem.model.params import Params, make_params, params_from_statistics
from streamem.model.statistics import SufficientStatistics
from streamem.model.validation import check_hyperparameters

FORMAT = "streamem.OnlineGMM"
FORMAT_VERSION = 1

_SCALARS = (
    "n_features_in_", "n_seen_", "version_", "resets_", "collapse_history_",
    "anomaly_threshold_", "learning_rate_", "_provisional_size", "_n_steps",
    "_sum_sq_weights", "_since_check", "_flag_share", "_state",
)
#: State added after the format's first release (the tail calibration and the moves): older
#: files lack it and load with the fresh state ``OnlineGMM`` starts with.
_LATER_SCALARS = ("_bound", "_inflation", "_window", "_window_share", "_window_mass",
                  "_recent_n", "_move_wait", "_move_backoff")
#: Reset reasons added after the first release; older files count none of them.
_LATER_REASONS = ("split", "merge", "reseed")
MAX_MOVE_WAIT = 1 << 20
_PARAMS = ("n_components", "covariance_type", "reg_covar", "learning_decay", "learning_offset",
           "halflife", "warmup", "init", "assignment", "anomaly_rate", "update_on_anomaly",
           "random_state", "max_iter", "tol")
#: Parameters added after the format's first release, with the value older files imply.
_LATER_PARAMS = {"max_iter": 10, "tol": 1e-3}
_ARRAYS = ("header", "usage", "flagged", "flagged_at", "buffer", "rewarm", "nk", "stat_means",
           "scatter", "weights", "means", "covariances", "center", "settled_means",
           "settled_covariances", "recent")
#: The JSON header of a real model is a few KB (the collapse history is its longest part).
MAX_HEADER_BYTES = 1 << 20
MAX_HISTORY = 10_000
F8, I8 = ("<f8",), ("<i8",)
_NPY_HEADER = 1024  #: room for an .npy header (numpy pads it to 64 or 128 bytes)


def dumps(model: Any) -> bytes:
    """Serialise an ``OnlineGMM`` to bytes."""
    header: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                              "params": model.get_params()}
    header.update({name: getattr(model, name, None) for name in _SCALARS + _LATER_SCALARS})
    header["anomaly_threshold_"] = float(model.anomaly_threshold_)
    header["_bound"] = float(model._bound)
    header["_window"] = [float(t) for t in model._window]
    header["_early"] = float(model._early)
    arrays: dict[str, np.ndarray] = {
        "usage": model._usage, "flagged": model._flagged, "flagged_at": model._flagged_at,
    }
    if model._buffer:
        arrays["buffer"] = np.concatenate(model._buffer)
    if model._rewarm:
        arrays["rewarm"] = np.concatenate(model._rewarm)
    if model.stats_ is not None:
        arrays.update(nk=model.stats_.nk, stat_means=model.stats_.means,
                      scatter=model.stats_.scatter)
    if model._params is not None:
        p = model._params
        arrays.update(weights=p.weights, means=p.means, covariances=p.covariances,
                      center=p.center)
    if model._recent.size:
        arrays["recent"] = model._recent
    if model._settled is not None:
        arrays.update(settled_means=model._settled[0], settled_covariances=model._settled[1])
    arrays["header"] = np.array(json.dumps(header))
    return npz.dumps(arrays)


def loads(cls: Callable[..., Any], data: bytes) -> Any:
    """Rebuild a model of class ``cls`` from :func:`dumps` output; ``ValueError`` otherwise."""
    try:
        archive = npz.Archive(data, allowed=_ARRAYS)
        text = archive.array("header", MAX_HEADER_BYTES, dtypes=("U",))
        header = json.loads(str(text), parse_constant=_infinity_only)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ValueError(f"not a streamem model file: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("not a streamem model file (format header missing)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"model file format version {header.get('format_version')!r} is not supported "
            f"(this streamem reads version {FORMAT_VERSION})"
        )
    try:
        return _build(cls, header, archive)
    except ValueError as exc:
        raise ValueError(f"invalid streamem model file: {exc}") from None


def _infinity_only(name: str) -> float:
    if name != "-Infinity":
        raise ValueError(f"{name} is not a valid number here")
    return -math.inf


def _build(cls: Callable[..., Any], header: dict[str, Any], archive: npz.Archive) -> Any:
    later = {name: header.pop(name) for name in _LATER_SCALARS if name in header}
    early = header.pop("_early", -math.inf)  # the early floor; older files have none
    _exact_keys("the header", header, {"format", "format_version", "params", *_SCALARS})
    params = header["params"]
    if isinstance(params, dict):
        params = {**_LATER_PARAMS, **params}
    _exact_keys("params", params, set(_PARAMS))
    try:
        check_hyperparameters(params)
        if type(params["update_on_anomaly"]) is not bool:
            raise ValueError("update_on_anomaly must be true or false")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"hyperparameters: {exc}") from None
    K, kind = int(params["n_components"]), KINDS[params["covariance_type"]]
    arrays = _Arrays(archive)
    usage = arrays.get("usage", (K,), low=0.0)  # before the model allocates anything of size K
    model = cls(**params)
    model._ready()  # a fresh learning state, which the header and arrays then overwrite
    d = _optional_int("n_features_in_", header["n_features_in_"], low=1)
    for name in ("n_seen_", "version_", "_provisional_size", "_n_steps", "_since_check"):
        setattr(model, name, _int(name, header[name], low=0))
    model.n_features_in_ = d
    model.resets_ = _resets(header["resets_"])
    model.collapse_history_ = _history(header["collapse_history_"], K)
    threshold = _number("anomaly_threshold_", header["anomaly_threshold_"], allow_minus_inf=True)
    model.anomaly_threshold_ = threshold
    model.learning_rate_ = _number("learning_rate_", header["learning_rate_"], 0.0, 1.0)
    model._sum_sq_weights = _number("_sum_sq_weights", header["_sum_sq_weights"], 0.0)
    model._tail.flag_share = _number("_flag_share", header["_flag_share"], 0.0, 1.0 + 1e-9)
    state = header["_state"]
    _exact_keys("_state", state, {"seed"})
    model._state = {"seed": _int("_state.seed", state["seed"], low=0)}

    if later:
        _exact_keys("the header's later state", later, set(_LATER_SCALARS))
        _later_state(model, later)
    model._tail.early = _number("_early", early, allow_minus_inf=True)

    model._usage = usage
    model._flagged = arrays.flagged(d, max_rows=max(4096, 64 * K * ((d or 0) + 1)))
    model._flagged_at = arrays.get("flagged_at", (len(model._flagged),), dtypes=I8, low=0)
    parts = archive.names
    if d is None:
        if parts & {"buffer", "rewarm", "nk", "weights"}:
            raise ValueError("the model holds points or parameters but no n_features_in_")
        return model
    if ("nk" in parts or "buffer" in parts) and "weights" not in parts:
        raise ValueError("statistics or a warm-up buffer without parameters")
    if "weights" in parts and not parts & {"nk", "buffer"}:
        raise ValueError("parameters without statistics or a warm-up buffer")
    if "buffer" in parts and "nk" in parts or "rewarm" in parts and "nk" not in parts:
        raise ValueError("a warm-up buffer that does not fit the model's state")
    for name in ("buffer", "rewarm"):
        if name in parts:
            setattr(model, f"_{name}", [arrays.get(name, (None, d), max_rows=model.warmup_)])
    if "weights" in parts:
        weights = arrays.get("weights", (K,), low=0.0)
        if abs(weights.sum() - 1.0) > 1e-6:
            raise ValueError(f"weights sum to {weights.sum()!r}, not 1")
        covariances = arrays.get("covariances", kind.scatter_shape(K, d))
        model._params = _params(kind, weights, arrays.get("means", (K, d)), covariances,
                                arrays.get("center", (d,)))
    if "nk" in parts:
        model.stats_ = SufficientStatistics(
            arrays.get("nk", (K,), low=0.0), arrays.get("stat_means", (K, d)),
            arrays.get("scatter", kind.scatter_shape(K, d)))
        if not model.stats_.nk.sum() > 0:
            raise ValueError("the statistics hold no mass")
        _symmetric("scatter", model.stats_.scatter, kind)
        # The next M-step must give usable parameters (it raises eigenvalues to the floor).
        try:
            with np.errstate(all="ignore"):
                p = params_from_statistics(model.stats_, kind, model.reg_covar)
            usable = np.isfinite(p.precisions_chol).all() and np.isfinite(p.log_det).all()
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            usable = False
        if not usable:
            raise ValueError("the statistics do not give positive definite covariances")
    if ("settled_means" in parts) != ("settled_covariances" in parts) or (
            "settled_means" in parts and "nk" not in parts):
        raise ValueError("settled components without statistics, or means without covariances")
    if "recent" in parts:
        model._recent = arrays.get("recent", (model._recent_capacity(), d))
    if "recent" not in parts and model._recent_n:
        raise ValueError("_recent_n counts recent inliers the file does not hold")
    if "settled_means" in parts:  # older files have none: the next check records them
        settled = (arrays.get("settled_means", (K, d)),
                   arrays.get("settled_covariances", kind.scatter_shape(K, d)))
        _params(kind, np.full(K, 1.0 / K), *settled, settled[0].mean(axis=0))
        model._settled = settled
    return model


def _later_state(model: Any, header: dict[str, Any]) -> None:
    """The tail calibration's and the moves' state, checked."""
    tail = model._tail
    tail.bound = _number("_bound", header["_bound"], allow_minus_inf=True)
    tail.inflation = _number("_inflation", header["_inflation"], 1.0)
    window = header["_window"]
    if not (isinstance(window, list) and len(window) == 2):
        raise ValueError(f"_window must be a list of two numbers, got {_short(window)}")
    tail.window = tuple(_number("_window", t, allow_minus_inf=True) for t in window)
    tail.window_share = _number("_window_share", header["_window_share"], 0.0, 1.0)
    tail.window_mass = _number("_window_mass", header["_window_mass"], 0.0, 1.0)
    model._recent_n = _int("_recent_n", header["_recent_n"], low=0)
    for name in ("_move_wait", "_move_backoff"):
        value = _int(name, header[name], low=0)
        if value > MAX_MOVE_WAIT:
            raise ValueError(f"{name} must be at most {MAX_MOVE_WAIT}, got {value}")
        setattr(model, name, value)


def _params(kind: CovarianceKind, weights: np.ndarray, means: np.ndarray,
            covariances: np.ndarray, center: np.ndarray) -> Params:
    """``make_params`` of positive definite, symmetric covariances; ``ValueError`` otherwise."""
    _symmetric("covariances", covariances, kind)
    try:
        if kind.name != "full" and not (covariances > 0).all():
            raise np.linalg.LinAlgError("a variance is not positive")
        params = make_params(kind, weights, means, covariances, center)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        raise ValueError(f"covariances are not positive definite ({exc})") from None
    if not (np.isfinite(params.precisions_chol).all() and np.isfinite(params.log_det).all()):
        raise ValueError("covariances are not positive definite")
    return params


def _symmetric(name: str, matrices: np.ndarray, kind: CovarianceKind) -> None:
    if kind.name != "full":
        return
    scale = np.abs(matrices).max(axis=(1, 2), keepdims=True)
    if (np.abs(matrices - np.swapaxes(matrices, 1, 2)) > 1e-8 * scale).any():
        raise ValueError(f"{name} are not symmetric")


class _Arrays:
    """Reads an archive's arrays, checking size (before reading), dtype, shape, finiteness."""

    def __init__(self, archive: npz.Archive) -> None:
        self.archive = archive

    def get(self, name: str, shape: tuple[int | None, ...], *, dtypes: tuple[str, ...] = F8,
            max_rows: int = 0, low: float | None = None) -> np.ndarray:
        """Array ``name`` of ``shape``; a leading ``None`` is 1 to ``max_rows`` rows."""
        free = shape[0] is None
        rows = max_rows if shape[0] is None else shape[0]
        limit = _NPY_HEADER + 8 * rows * math.prod(n or 0 for n in shape[1:])
        value = self.archive.array(name, limit, dtypes)
        want = (len(value), *shape[1:]) if free else shape
        if value.shape != want or (free and not 0 < len(value) <= rows):
            raise ValueError(f"array {name!r} has shape {value.shape}, expected "
                             f"{_shape_text(shape)}" + (f" with 1 to {rows} rows" if free else ""))
        return _checked(name, value, low)

    def flagged(self, d: int | None, max_rows: int) -> np.ndarray:
        """The flagged points: (m, d), or empty as (0, 0) before ``d`` is known."""
        width = d or 0
        value = self.archive.array("flagged", _NPY_HEADER + 8 * max_rows * width, F8)
        if value.ndim != 2 or value.shape[1] not in {0, width} or \
                (value.shape[1] == 0 and len(value)) or len(value) > max_rows:
            raise ValueError(f"array 'flagged' has shape {value.shape}, expected (m, {width})")
        return _checked("flagged", value, None)


def _checked(name: str, value: np.ndarray, low: float | None) -> np.ndarray:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"array {name!r} holds NaN or Inf")
    if low is not None and (value < low).any():
        raise ValueError(f"array {name!r} holds values below {low:g}")
    return value


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("n" if n is None else str(n) for n in shape) + ")"


def _exact_keys(what: str, value: Any, keys: set[str]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a mapping")
    unknown, missing = set(value) - keys, keys - set(value)
    if unknown:
        raise ValueError(f"{what} has unknown keys {sorted(unknown)}")
    if missing:
        raise ValueError(f"{what} lacks keys {sorted(missing)}")


def _int(name: str, value: Any, low: int) -> int:
    if type(value) is not int or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {_short(value)}")
    return value


def _optional_int(name: str, value: Any, low: int) -> int | None:
    return None if value is None else _int(name, value, low)


def _number(name: str, value: Any, low: float | None = None, high: float | None = None,
            allow_minus_inf: bool = False) -> float:
    ok = type(value) in (int, float) and (math.isfinite(value) or
                                          (allow_minus_inf and value == -math.inf))
    if ok and low is not None and value < low or ok and high is not None and value > high:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number"
                         f"{f' in [{low:g}, {high:g}]' if high is not None else ''}"
                         f"{f' >= {low:g}' if high is None and low is not None else ''}"
                         f", got {_short(value)}")
    return float(value)


def _resets(value: Any) -> dict[str, int]:
    if isinstance(value, dict):
        value = {**dict.fromkeys(_LATER_REASONS, 0), **value}
    _exact_keys("resets_", value, set(RESET_REASONS))
    return {reason: _int(f"resets_.{reason}", value[reason], low=0) for reason in RESET_REASONS}


def _history(value: Any, n_components: int) -> list[tuple[int, int, str]]:
    """``collapse_history_``: a list of ``[point, component (-1: all), reason]``."""
    if not isinstance(value, list) or len(value) > MAX_HISTORY:
        raise ValueError(f"collapse_history_ must be a list of at most {MAX_HISTORY} entries")
    out = []
    for i, entry in enumerate(value):
        if not (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int
                and entry[0] >= 0 and type(entry[1]) is int and -1 <= entry[1] < n_components
                and entry[2] in RESET_REASONS):
            raise ValueError(f"collapse_history_ entry {i} is not [point >= 0, component in "
                             f"-1..{n_components - 1}, reason in {RESET_REASONS}]: "
                             f"{_short(entry)}")
        out.append((entry[0], entry[1], entry[2]))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
