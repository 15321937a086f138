"""Describe a checkpoint (or a bare model file) in words, as JSON, or as a picture.

Reads a checkpoint written by streamem run (the model together with the offsets it
reflects) or a model file written by OnlineGMM.save, and reports the covariance type, K, d,
points seen, parameter version, warm-up state, the components by weight (mean, scale
sqrt(trace/d), smallest/largest covariance eigenvalue, condition number), the anomaly threshold,
resets by reason with the recent collapse history, and the offsets.

--plot draws the components in the plane of the two principal axes of the pooled covariance,
each as its 2-sigma ellipse labelled with its weight, next to a log-likelihood history when the
model keeps one (else the weights as bars). It needs matplotlib: pip install 'streamem[plot]'.

examples:
  streamem inspect streamem-checkpoint.npz
  streamem inspect streamem-checkpoint.npz --json | jq .components
  streamem inspect model.npz --plot model.png

exit codes: 0 ok, 1 the plot could not be written, 2 missing or corrupt file, or no matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import numpy as np

    from streamem.io.checkpoint import Checkpoint
    from streamem.model import OnlineGMM

RECENT_EVENTS = 10
MAX_FEATURES_SHOWN = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint file (checkpoint.path) or a model file (OnlineGMM.save)")
    parser.add_argument("--plot", metavar="OUT.png", default=None,
                        help="also draw the model into this image file (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def main(args: argparse.Namespace) -> int:
    from streamem.errors import CheckpointError

    try:
        model, ckpt = load(args.checkpoint)
    except CheckpointError as exc:
        print(f"streamem inspect: {exc}", file=sys.stderr)
        return 2
    info = describe(model, ckpt, args.checkpoint)
    print(json.dumps(info, indent=2) if args.json else to_text(info))
    if args.plot:
        return _plot(model, args.plot, sys.stderr if args.json else sys.stdout)
    return 0


def load(path: str) -> tuple[OnlineGMM, Checkpoint | None]:
    """The model at ``path`` and, for a checkpoint, the checkpoint (None for a model file).

    Raises :class:`~streamem.errors.CheckpointError` when the file is missing, unreadable,
    too large, or neither a valid checkpoint nor a valid model file.
    """
    from streamem.errors import CheckpointError
    from streamem.io.checkpoint import MAX_FILE_BYTES, Checkpoint
    from streamem.io.files import read_bounded
    from streamem.model import OnlineGMM

    where = f"checkpoint file {path}"
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is too large ({exc})") from None
    try:
        ckpt = Checkpoint.from_bytes(data, where, check_model=False)
    except CheckpointError as exc:
        try:
            return OnlineGMM.from_bytes(data), None
        except ValueError as model_exc:
            if str(model_exc).startswith("not a streamem model file"):
                raise CheckpointError(f"{exc} (nor is it a streamem model file)") from None
            raise CheckpointError(f"model file {path}: {model_exc}") from None
    return ckpt.load_model(where), ckpt


def describe(model: OnlineGMM, ckpt: Checkpoint | None, path: str) -> dict[str, Any]:
    """Everything :func:`to_text` prints, as a JSON-able dict."""
    import numpy as np

    threshold = float(model.anomaly_threshold_)
    return {
        "path": path,
        "kind": "checkpoint" if ckpt else "model file",
        "written_at": None if ckpt is None else
        datetime.fromtimestamp(ckpt.written_at, timezone.utc).isoformat(timespec="seconds"),
        "offsets": [] if ckpt is None else [
            {"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(ckpt.offsets.items())
        ],
        "covariance_type": model.covariance_type,
        "n_components": model.n_components,
        "n_features": getattr(model, "n_features_in_", None),
        "n_seen": int(model.n_seen_),
        "version": int(model.version_),
        "warmup": {"points": model.warmup_, "state": _warmup_state(model)},
        "anomaly_threshold": threshold if np.isfinite(threshold) else None,
        "anomaly_rate": model.anomaly_rate,
        "learning_rate": float(model.learning_rate_),
        "hyperparameters": model.get_params(),
        "resets": {str(k): int(v) for k, v in model.resets_.items()},
        "collapse_history": [{"point": int(n), "component": int(k), "reason": str(why)}
                             for n, k, why in model.collapse_history_],
        "components": _components(model),
    }


def _warmup_state(model: OnlineGMM) -> str:
    if model.n_seen_ == 0:
        return "no points yet"
    if not model.initialized_:
        return (f"warming up: {model.n_seen_:,} of {model.warmup_:,} points buffered "
                "(answers come from a provisional fit)")
    if model.drifting_:
        return "re-warming: most recent points are flagged, the model is refitting after drift"
    return "complete"


def full_covariances(model: OnlineGMM) -> np.ndarray:
    """The model's covariances as (K, d, d) whatever its covariance type."""
    from streamem.model.covariance import KINDS

    means = model.means_
    return KINDS[model.covariance_type].to_full(model.covariances_, means.shape[1])


def _components(model: OnlineGMM) -> list[dict[str, Any]]:
    """Per component, heaviest first; empty before the model has parameters."""
    import numpy as np

    try:
        weights, means = model.weights_, model.means_
    except RuntimeError:
        return []
    covs = full_covariances(model)
    eig = np.linalg.eigvalsh(covs)
    d = means.shape[1]
    return [{
        "component": int(k),
        "weight": float(weights[k]),
        "mean": [float(v) for v in means[k]],
        "scale": float(np.sqrt(np.trace(covs[k]) / d)),
        "eigenvalue_min": float(eig[k, 0]),
        "eigenvalue_max": float(eig[k, -1]),
        "condition_number": float(eig[k, -1] / eig[k, 0]),
    } for k in np.argsort(-weights, kind="stable")]


def to_text(info: dict[str, Any]) -> str:
    """The description in words."""
    lines = [f"{info['kind']} {info['path']}" + (f" (written {info['written_at']})"
                                                 if info["written_at"] else "")]
    if info["offsets"]:
        lines.append("  offsets     " + ", ".join(f"{o['topic']}[{o['partition']}] next "
                                                   f"{o['offset']:,}" for o in info["offsets"]))
    elif info["kind"] == "checkpoint":
        lines.append("  offsets     none yet")
    thr = info["anomaly_threshold"]
    lines += [
        f"model       {info['covariance_type']} covariances, K={info['n_components']} components, "
        f"d={info['n_features'] if info['n_features'] is not None else '?'} features",
        f"  seen      {info['n_seen']:,} points; parameter version {info['version']:,}; "
        f"last step size {info['learning_rate']:.3g}",
        f"  warm-up   {info['warmup']['state']} (warm-up length {info['warmup']['points']:,})",
        "  anomaly   " + ("no threshold yet (warming up)" if thr is None else
                          f"log-likelihood below {thr:.3f} "
                          f"(anomaly_rate {info['anomaly_rate']:g})"),
        "  resets    " + ", ".join(f"{k} {v}" for k, v in info["resets"].items()),
    ]
    recent = info["collapse_history"][-RECENT_EVENTS:]
    lines.append("  recent    " + ("no resets" if not recent else "; ".join(
        f"point {e['point']:,}: " + ("refit after drift" if e["reason"] == "drift" else
                                     f"component {e['component']} {e['reason']}")
        for e in recent)))
    comps = info["components"]
    if not comps:
        lines.append("components  none yet (the model has seen no points)")
        return "\n".join(lines)
    top = max(c["weight"] for c in comps) or 1.0
    lines += ["components by weight",
              f"  {'#':>3}  {'weight':<27} {'scale':>8} {'eig min':>10} {'eig max':>10} "
              f"{'cond':>9}  mean"]
    for c in comps:
        bar = _bar(c["weight"] / top, 20)
        lines.append(f"  {c['component']:>3}  {c['weight']:.3f} {bar} {c['scale']:8.3g} "
                     f"{c['eigenvalue_min']:10.3g} {c['eigenvalue_max']:10.3g} "
                     f"{c['condition_number']:9.3g}  {_vector(c['mean'])}")
    return "\n".join(lines)


def _bar(fraction: float, width: int) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "░" * (width - filled)


def _vector(values: list[float]) -> str:
    shown = ", ".join(f"{v:.3g}" for v in values[:MAX_FEATURES_SHOWN])
    more = f", … ({len(values) - MAX_FEATURES_SHOWN} more)" if len(values) > MAX_FEATURES_SHOWN \
        else ""
    return f"[{shown}{more}]"


def _plot(model: OnlineGMM, path: str, out: TextIO) -> int:
    from streamem import plot

    try:
        note = plot.draw(model, path)
    except plot.PlotUnavailable as exc:
        print(f"streamem inspect: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"streamem inspect: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    print(f"plot: wrote {path}" + (f"; {note}" if note else ""), file=out)
    return 0
