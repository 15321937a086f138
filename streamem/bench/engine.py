"""``streamem bench engine``: points/s of ``partial_fit`` beside one scikit-learn EM iteration.

For each (K, d) it measures, on the same points and the same BLAS thread count:

* streamem: ``partial_fit`` in batches of 1000 (full covariance), after warm-up;
* scikit-learn: one E-step + M-step of ``GaussianMixture`` over all points
  (point-iterations/s — the cost of a batch EM pass);
* the flop limit: the machine's float64 matmul peak (measured now) over ~4·K·d² flops per point.

Times are the best of ``repeats`` runs, the two sides taking turns so that both meet the same
load; the ratios are what to compare across machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

SIZES: tuple[tuple[int, int], ...] = ((8, 8), (16, 32))


@dataclass(frozen=True)
class EngineResult:
    n_components: int
    n_features: int
    streamem_points_s: float
    sklearn_point_iterations_s: float
    peak_gflops: float
    state_bytes: tuple[int, int]  # the model's saved state after 20 000 and after all points

    @property
    def speedup(self) -> float:
        return self.streamem_points_s / self.sklearn_point_iterations_s

    @property
    def flop_fraction(self) -> float:
        flops = 4.0 * self.n_components * self.n_features**2
        return self.streamem_points_s * flops / (self.peak_gflops * 1e9)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``fn``, in seconds."""
    return best_times([fn], repeats)[0]


def best_times(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """The fastest of ``repeats`` runs of each of ``fns``, run in turn round by round.

    Interleaving puts both sides of a ratio under the same load on a shared machine.
    """
    best = [np.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float64 GEMM throughput on n×n matrices, GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    return 2.0 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def bench_size(
    n_components: int, n_features: int, n_points: int, batch: int, repeats: int, peak: float
) -> EngineResult:
    from sklearn.mixture import GaussianMixture

    mix = Mixture.random(n_components, n_features, random_state=0)
    warm, _ = mix.sample(20_000, random_state=1)
    X, _ = mix.sample(n_points, random_state=2)
    model = OnlineGMM(n_components, random_state=0)
    model.partial_fit(warm)
    state = model.to_bytes()
    after: list[int] = []

    def streamem_pass() -> None:
        m = OnlineGMM.from_bytes(state)
        for i in range(0, n_points, batch):
            m.partial_fit(X[i : i + batch])
        after.append(len(m.to_bytes()))

    reference = GaussianMixture(n_components, max_iter=5, random_state=0).fit(warm)

    def sklearn_iteration() -> None:
        _, log_resp = reference._e_step(X)
        reference._m_step(X, log_resp)

    ours, theirs = best_times([streamem_pass, sklearn_iteration], repeats)
    return EngineResult(
        n_components, n_features, n_points / ours, n_points / theirs, peak,
        (len(state), after[-1]),
    )


def run(
    sizes: Sequence[tuple[int, int]] = SIZES,
    n_points: int = 100_000,
    batch: int = 1000,
    repeats: int = 10,
) -> list[EngineResult]:
    """Measure every size; the matmul peak is measured once, in the same run."""
    peak = matmul_peak_gflops()
    return [bench_size(k, d, n_points, batch, repeats, peak) for k, d in sizes]


def report(results: Sequence[EngineResult], threads: str) -> str:
    lines = [
        f"streamem bench engine — full covariance, batches of 1000, BLAS threads: {threads}",
        f"float64 matmul peak: {results[0].peak_gflops:.1f} GFLOP/s",
        f"{'K':>4} {'d':>4} {'streamem pts/s':>15} {'sklearn EM pt-it/s':>19} "
        f"{'speedup':>8} {'flop limit':>10}",
    ]
    for r in results:
        lines.append(
            f"{r.n_components:>4} {r.n_features:>4} {r.streamem_points_s:>15,.0f} "
            f"{r.sklearn_point_iterations_s:>19,.0f} {r.speedup:>7.2f}x {r.flop_fraction:>9.0%}"
        )
    lines.append("model state (saved bytes) after 20,000 points -> after the pass:")
    for r in results:
        lines.append(f"{r.n_components:>4} {r.n_features:>4} {r.state_bytes[0]:>15,} -> "
                     f"{r.state_bytes[1]:,}")
    return "\n".join(lines)
