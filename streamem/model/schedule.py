"""The step-size schedule, defined per point so that batching does not change the model.

Point t (counted from the start of the stream) takes the step
γ_t = max((t + τ0)^−κ, γ_min), with κ = ``learning_decay``, τ0 = ``learning_offset`` and
γ_min = 1 − 2^(−1/halflife): once the decaying part falls below the floor, the weight of an old
regime halves every ``halflife`` points. A batch of B points moves the statistics exactly as B
single-point steps would: s ← Π(1 − γ_i)·s + Σ_i w_i·stat(x_i), w_i = γ_i Π_{j>i}(1 − γ_j).

>>> decay, w = batch_weights(step_sizes(0, 3, learning_decay=1.0, learning_offset=0.0, floor=0.0))
>>> float(decay), [round(float(v), 3) for v in w]
(0.0, [0.333, 0.333, 0.333])
"""

from __future__ import annotations

import functools
import math

import numpy as np


def floor_for_halflife(halflife: float | None) -> float:
    """The step-size floor γ_min at which old statistics halve every ``halflife`` points."""
    if halflife is None or not math.isfinite(halflife):
        return 0.0
    return -math.expm1(-math.log(2.0) / halflife)


def step_sizes(
    n_steps: int, n: int, *, learning_decay: float, learning_offset: float, floor: float
) -> np.ndarray:
    """Step sizes (n,) of the points numbered n_steps + 1 … n_steps + n."""
    t = np.arange(n_steps + 1, n_steps + n + 1, dtype=np.float64)
    gamma = (t + learning_offset) ** (-learning_decay)
    return np.clip(np.maximum(gamma, floor), 0.0, 1.0)


def batch_weights(gamma: np.ndarray) -> tuple[float, np.ndarray]:
    """Decay of the old statistics and each point's weight, for a batch of steps ``gamma`` (n,).

    Returns ``(decay, w)`` with decay = Π(1 − γ_i) and w (n,) so that decay + Σ w = 1.
    """
    with np.errstate(divide="ignore"):
        log_keep = np.log1p(-gamma)
    after = np.concatenate([np.cumsum(log_keep[::-1])[::-1][1:], [0.0]])
    w = gamma * np.exp(after)
    decay = float(np.exp(log_keep.sum()))
    return decay, w


def batch_schedule(
    n_steps: int, n: int, *, learning_decay: float, learning_offset: float, floor: float
) -> tuple[float, np.ndarray, float]:
    """``batch_weights`` of the points n_steps + 1 … n_steps + n, and the last point's step.

    Once the decaying part is below the floor every step is the floor, and the weights of a
    batch depend on its length alone: they are computed once per length (read-only).
    """
    if learning_decay > 0 and (n_steps + 1 + learning_offset) ** (-learning_decay) <= floor:
        decay, w = _floor_weights(n, floor)
        return decay, w, min(floor, 1.0)
    gamma = step_sizes(n_steps, n, learning_decay=learning_decay,
                       learning_offset=learning_offset, floor=floor)
    decay, w = batch_weights(gamma)
    return decay, w, float(gamma[-1])


@functools.lru_cache(maxsize=8)
def _floor_weights(n: int, floor: float) -> tuple[float, np.ndarray]:
    decay, w = batch_weights(np.full(n, min(floor, 1.0)))
    w.flags.writeable = False
    return decay, w
