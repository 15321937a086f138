"""Synthetic streams from a known Gaussian mixture, with drift and outliers.

The one generator behind ``streamem produce``, ``streamem demo``, the benchmarks and the tests,
so that every one of them draws the same kind of data.

>>> mix = Mixture.random(n_components=3, n_features=2, random_state=0)
>>> X, labels = mix.sample(5, random_state=1)
>>> X.shape, labels.shape
((5, 2), (5,))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

OUTLIER = -1  #: label of a point drawn from the uniform outlier distribution


@dataclass(frozen=True)
class Mixture:
    """A full-covariance Gaussian mixture with known parameters.

    weights: (K,), means: (K, d), covariances: (K, d, d).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def random(
        cls,
        n_components: int,
        n_features: int,
        *,
        separation: float = 4.0,
        scale: float = 1.0,
        random_state: int | np.random.Generator | None = None,
    ) -> Mixture:
        """Draw a mixture whose means sit about ``separation`` standard deviations apart.

        Covariances are random rotations of axis scales in [0.5, 1.5]·``scale``; weights are
        Dirichlet(5) so no component is negligible.
        """
        rng = np.random.default_rng(random_state)
        spread = separation * scale * np.sqrt(n_components) ** (1.0 / max(n_features, 1))
        means = rng.normal(0.0, spread, size=(n_components, n_features))
        covs = np.empty((n_components, n_features, n_features))
        for k in range(n_components):
            q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
            axes = (scale * rng.uniform(0.5, 1.5, size=n_features)) ** 2
            covs[k] = (q * axes) @ q.T
        weights = rng.dirichlet(np.full(n_components, 5.0))
        return cls(weights, means, covs)

    def sample(
        self, n: int, random_state: int | np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` points; returns ``X`` (n, d) and the true component of each, (n,)."""
        rng = np.random.default_rng(random_state)
        labels = rng.choice(self.n_components, size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covariances)
        z = rng.standard_normal((n, self.n_features))
        X = self.means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
        return X, labels

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Exact log p(x) under the mixture, (n,)."""
        d = self.n_features
        chol = np.linalg.cholesky(self.covariances)
        log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        diff = X[:, None, :] - self.means[None, :, :]
        sol = np.linalg.solve(chol[None], diff[..., None])[..., 0]
        maha = (sol**2).sum(axis=2)
        log_comp = -0.5 * (d * np.log(2 * np.pi) + log_det + maha) + np.log(self.weights)
        return logsumexp(log_comp, axis=1)

    def bounds(self, margin: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """A box holding the mixture's mass: each mean ± ``margin`` standard deviations."""
        sd = np.sqrt(np.diagonal(self.covariances, axis1=1, axis2=2))
        return (self.means - margin * sd).min(axis=0), (self.means + margin * sd).max(axis=0)


@dataclass(frozen=True)
class Stream:
    """An endless synthetic stream: a mixture, a share of uniform outliers, optional drift.

    At point ``drift_at`` the stream switches abruptly to ``after`` (when given).
    Outliers are uniform over the mixture's :meth:`Mixture.bounds` widened by half its size.
    """

    mixture: Mixture
    outlier_share: float = 0.0
    after: Mixture | None = None
    drift_at: int | None = None

    def batches(
        self, batch_size: int, random_state: int | np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X, labels)`` batches forever; outliers carry the label :data:`OUTLIER`."""
        rng = np.random.default_rng(random_state)
        seen = 0
        while True:
            mix = self.mixture
            if self.after is not None and self.drift_at is not None and seen >= self.drift_at:
                mix = self.after
            n = batch_size
            if self.after is not None and self.drift_at is not None and seen < self.drift_at:
                n = min(batch_size, self.drift_at - seen)
            X, labels = mix.sample(n, rng)
            if self.outlier_share > 0:
                out = rng.random(n) < self.outlier_share
                lo, hi = mix.bounds()
                pad = 0.5 * (hi - lo)
                X[out] = rng.uniform(lo - pad, hi + pad, size=(int(out.sum()), mix.n_features))
                labels[out] = OUTLIER
            seen += n
            yield X, labels

    def take(
        self, n: int, random_state: int | np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` points of the stream as one array pair."""
        parts, labels = [], []
        got = 0
        for X, y in self.batches(min(n, 10_000), random_state):
            parts.append(X[: n - got])
            labels.append(y[: n - got])
            got += len(parts[-1])
            if got >= n:
                break
        return np.concatenate(parts), np.concatenate(labels)
