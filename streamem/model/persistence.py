"""The model file: a versioned ``.npz`` of arrays plus a JSON header, written atomically.

Everything that shapes the model's future (statistics, schedule position, warm-up buffer,
recent-usage trackers, seed) is saved, so a loaded model predicts identically and continues
the same trajectory.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from streamem.model.params import make_params
from streamem.model.statistics import SufficientStatistics

if TYPE_CHECKING:
    from streamem.model.gmm import OnlineGMM

FORMAT = "streamem.OnlineGMM"
FORMAT_VERSION = 1

_SCALARS = (
    "n_features_in_", "n_seen_", "version_", "resets_", "collapse_history_",
    "anomaly_threshold_", "learning_rate_", "_provisional_size", "_n_steps",
    "_sum_sq_weights", "_since_check", "_flag_share", "_state",
)


def dumps(model: OnlineGMM) -> bytes:
    """Serialise a model to bytes."""
    header: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                              "params": model.get_params()}
    header.update({name: getattr(model, name, None) for name in _SCALARS})
    header["anomaly_threshold_"] = float(model.anomaly_threshold_)
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
    out = io.BytesIO()
    arrays["header"] = np.array(json.dumps(header))
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def loads(cls: type[OnlineGMM], data: bytes) -> OnlineGMM:
    """Rebuild a model from :func:`dumps` output; raises ``ValueError`` on anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        header = json.loads(str(arrays.pop("header")))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"not a streamem model file: {exc}") from exc
    if header.get("format") != FORMAT:
        raise ValueError("not a streamem model file (format header missing)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"model file format version {header.get('format_version')} is not supported "
            f"(this streamem reads version {FORMAT_VERSION})"
        )
    model = cls(**header["params"])
    for name in _SCALARS:
        setattr(model, name, header[name])
    model.collapse_history_ = [tuple(h) for h in header["collapse_history_"]]
    model._usage, model._flagged = arrays["usage"], arrays["flagged"]
    model._flagged_at = arrays["flagged_at"]
    model._buffer = [arrays["buffer"]] if "buffer" in arrays else []
    model._rewarm = [arrays["rewarm"]] if "rewarm" in arrays else []
    if "nk" in arrays:
        model.stats_ = SufficientStatistics(arrays["nk"], arrays["stat_means"], arrays["scatter"])
    if "weights" in arrays:
        model._params = make_params(model._kind, arrays["weights"], arrays["means"],
                                    arrays["covariances"], arrays["center"])
    return model


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
