"""Checks on a model's parameters shared by the model, runtime and daemon tests."""

from __future__ import annotations

import numpy as np


def assert_positive_definite(full: np.ndarray) -> None:
    """Each covariance (K, d, d) is positive definite, judged without regard to the features'
    units: by its Cholesky factor, and by the eigenvalues of its correlation matrix (those of
    the raw matrix are only good to ε·‖Σ‖: 6e11 for a feature at 1e13 next to features of
    order 1, so a valid covariance can show an eigenvalue of −7)."""
    np.linalg.cholesky(full)
    scale = 1.0 / np.sqrt(np.diagonal(full, axis1=1, axis2=2))
    correlation = full * scale[:, :, None] * scale[:, None, :]
    assert np.all(np.linalg.eigvalsh(correlation) > 0.0), "a covariance is not positive definite"
