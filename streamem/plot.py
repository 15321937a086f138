"""Draw a fitted model for ``streamem inspect --plot`` (matplotlib, the ``plot`` extra).

Left: the components in the plane of the two principal axes of the pooled covariance, each as
its 2σ ellipse labelled with its weight, over points sampled from the model. Right: the model's
log-likelihood history when it keeps one (an attribute ``log_likelihood_history_``), otherwise
the weights as bars — and the returned note says so.

matplotlib is imported only here and only when drawing, with the Agg canvas (no display, no
pyplot state); without it :func:`draw` raises :class:`PlotUnavailable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from streamem.model import OnlineGMM

SAMPLES = 3000
SIGMAS = 2.0


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed, or the model has nothing to draw."""


def principal_plane(weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> tuple[
        np.ndarray, np.ndarray]:
    """The mixture's centre (d,) and its two principal axes as columns (d, 2).

    The axes are the top eigenvectors of the pooled covariance (within plus between
    components), from weights (K,), means (K, d) and full covariances (K, d, d). With d = 1 the
    second axis is zero.
    """
    centre = weights @ means
    diff = means - centre
    pooled = np.einsum("k,kij->ij", weights, covs) + np.einsum("k,ki,kj->ij", weights, diff, diff)
    _, vecs = np.linalg.eigh(pooled)
    axes = vecs[:, ::-1][:, :2]
    if axes.shape[1] == 1:
        axes = np.hstack([axes, np.zeros_like(axes)])
    return centre, axes


def ellipse(cov2: np.ndarray, sigmas: float = SIGMAS) -> tuple[float, float, float]:
    """Width, height and angle (degrees) of the ``sigmas`` ellipse of a 2×2 covariance."""
    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
    return 2 * sigmas * float(np.sqrt(vals[1])), 2 * sigmas * float(np.sqrt(vals[0])), angle


def draw(model: OnlineGMM, path: str) -> str:
    """Write the picture of ``model`` to ``path`` (format from its suffix, e.g. PNG).

    Returns a note for the user ("" when there is nothing to say). Raises
    :class:`PlotUnavailable` without matplotlib or before the model has parameters, and
    ``OSError`` when the file cannot be written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Ellipse
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'streamem[plot]'") from exc
    from streamem.model.covariance import KINDS

    try:
        weights, means = model.weights_, model.means_
    except RuntimeError as exc:
        raise PlotUnavailable("the model has seen no points yet: nothing to draw") from exc
    covs = KINDS[model.covariance_type].to_full(model.covariances_, means.shape[1])
    centre, axes = principal_plane(weights, means, covs)
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colours = [f"C{k % 10}" for k in range(len(weights))]

    X, labels = model.sample(SAMPLES, random_state=0)
    Z = (X - centre) @ axes
    left.scatter(Z[:, 0], Z[:, 1], s=2, c=[colours[k] for k in labels], alpha=0.25, linewidths=0)
    for k, (w, mean, cov) in enumerate(zip(weights, means, covs, strict=True)):
        m2 = (mean - centre) @ axes
        width, height, angle = ellipse(axes.T @ cov @ axes)
        left.add_patch(Ellipse(tuple(m2), width, height, angle=angle, fill=False,
                               edgecolor=colours[k], linewidth=1.5))
        left.annotate(f"{k}: {w:.2f}", tuple(m2), ha="center", va="center", fontsize=9,
                      weight="bold", color=colours[k])
    left.set_xlabel("principal axis 1")
    left.set_ylabel("principal axis 2")
    left.set_title(f"{model.n_components} components ({model.covariance_type}), "
                   f"{model.n_seen_:,} points seen: {SIGMAS:g}σ ellipses, weight labels")
    left.set_aspect("equal", adjustable="datalim")

    history = getattr(model, "log_likelihood_history_", None)
    if history is not None and len(history):
        _history_panel(right, np.asarray(history, dtype=np.float64))
        note = ""
    else:
        order = np.argsort(-weights, kind="stable")
        right.bar([str(k) for k in order], weights[order], color=[colours[k] for k in order])
        right.set_xlabel("component")
        right.set_ylabel("weight")
        right.set_title("component weights\n(the checkpoint keeps no log-likelihood history)")
        note = "the checkpoint keeps no log-likelihood history: drew the weights instead"
    fig.savefig(path, dpi=100)
    return note


def _history_panel(ax: Any, history: np.ndarray) -> None:
    """History rows are (points seen, mean log-likelihood), or just values per step."""
    if history.ndim == 2 and history.shape[1] >= 2:
        ax.plot(history[:, 0], history[:, 1])
        ax.set_xlabel("points seen")
    else:
        ax.plot(history.ravel())
        ax.set_xlabel("step")
    ax.set_ylabel("mean log-likelihood per point")
    ax.set_title("log-likelihood history")
