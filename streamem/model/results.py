"""What ``OnlineGMM.partial_fit`` answers (:class:`BatchResult`), and its refusal
(:class:`ModelRejected`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamem.model.params import row_argmax, row_max


class ModelRejected(ValueError):
    """``partial_fit`` refused a batch that would make the model invalid; it was rolled back."""


@dataclass(frozen=True)
class BatchResult:
    """What ``partial_fit`` answers for each point of a batch (n points, K components).

    labels (n,) int; probabilities (n,) responsibility of the chosen component;
    responsibilities (n, K), a transposed view of a component-major (K, n) array (the E-step's
    layout; ``np.ascontiguousarray`` gives row-major); log_likelihood (n,) log p(x); anomaly (n,)
    bool; warmup (n,) bool — answered by the provisional warm-up model; model_version — the
    parameters' version that answered.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    responsibilities: np.ndarray
    log_likelihood: np.ndarray
    anomaly: np.ndarray
    warmup: np.ndarray
    model_version: int

    def __len__(self) -> int:
        return len(self.labels)


#: ``anomaly`` and ``warmup`` of a one-point answer of ``_learn_point``: shared, read-only.
NO_FLAG = np.zeros(1, dtype=bool)
NO_FLAG.flags.writeable = False


def make_result(
    resp: np.ndarray, log_lik: np.ndarray, anomaly: np.ndarray, warmup: np.ndarray, version: int
) -> BatchResult:
    """The answer from responsibilities (n, K) and the other per-point arrays (n,)."""
    return BatchResult(row_argmax(resp), row_max(resp), resp, log_lik, anomaly, warmup, version)


def empty_result(n_components: int, version: int) -> BatchResult:
    """The answer to no points."""
    empty = np.zeros(0, dtype=bool)
    return make_result(np.zeros((0, n_components)), np.zeros(0), empty, empty, version)


def concatenate_results(parts: list[BatchResult]) -> BatchResult:
    """One answer from the answers to consecutive parts of a batch (the first part's version)."""
    if len(parts) == 1:
        return parts[0]
    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return BatchResult(
        joined("labels"), joined("probabilities"), joined("responsibilities"),
        joined("log_likelihood"), joined("anomaly"), joined("warmup"), parts[0].model_version,
    )
