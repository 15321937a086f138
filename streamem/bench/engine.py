"""``streamem bench engine``: points/s of ``partial_fit`` beside one scikit-learn EM iteration.

For each (K, d) it measures, on the same points and the same BLAS thread count:

* streamem: ``partial_fit`` in batches of 1000 (full covariance), after warm-up;
* scikit-learn: one E-step + M-step of ``GaussianMixture`` over all points
  (point-iterations/s — the cost of a batch EM pass);
* the flop limit: the machine's float64 matmul peak (measured now) over ~4·K·d² flops per point;
* one point per call (an event handler's pattern), after warm-up: µs per ``partial_fit`` (by the
  numpy path and by the compiled kernel of ``model.kernel``, when numba is installed) and per
  ``predict`` of a 1×d array, beside River's ``KMeans`` ``learn_one`` + ``predict_one`` on the
  same points as dicts (River is a development dependency; without it that column is empty).

The sides take turns, round by round, so that both meet the same load. A pass of batches counts
with its fastest round, as does scikit-learn's iteration (calls of about the same length). In the
one-point rows every call (one point, on each side) is timed in every round and counts with its
fastest round: a call the machine preempted in one round is taken from another, while one that
is slow in every round (a collapse check) keeps its cost. Each round starts from the same state.
The ratios are what to compare across machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from streamem.model import OnlineGMM, kernel
from streamem.synthetic import Mixture

SIZES: tuple[tuple[int, int], ...] = ((8, 8), (16, 32))
#: Single-point calls per round of the one-point rows.
POINT_CALLS = 2000


@dataclass(frozen=True)
class EngineResult:
    n_components: int
    n_features: int
    streamem_points_s: float
    sklearn_point_iterations_s: float
    peak_gflops: float
    state_bytes: tuple[int, int]  # the model's saved state after 20 000 and after all points
    point_fit_us: float  # one-point partial_fit by the numpy path, µs per call
    point_fit_compiled_us: float | None  # the same by the compiled kernel (None: no numba)
    point_predict_us: float  # one-point predict, µs per call
    river_us: float | None  # River KMeans learn_one + predict_one, µs per point

    @property
    def speedup(self) -> float:
        return self.streamem_points_s / self.sklearn_point_iterations_s

    @property
    def flop_fraction(self) -> float:
        flops = 4.0 * self.n_components * self.n_features**2
        return self.streamem_points_s * flops / (self.peak_gflops * 1e9)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``fn``, in seconds."""
    return fastest_calls([lambda: timed([fn])], repeats)[0]


def timed(calls: Sequence[Callable[[], object]]) -> np.ndarray:
    """Run ``calls`` in order; the seconds each took (n,)."""
    times = np.empty(len(calls))
    clock = time.perf_counter
    for i, call in enumerate(calls):
        start = clock()
        call()
        times[i] = clock() - start
    return times


def fastest_calls(rounds: Sequence[Callable[[], np.ndarray]], repeats: int) -> list[float]:
    """Seconds of each of ``rounds`` (a function that runs one round and returns the seconds
    of each of its calls): the sum over its calls of each call's fastest of ``repeats`` rounds.

    The rounds of all sides run in turn, which puts both sides of a ratio under the same load.
    """
    best: list[np.ndarray | None] = [None] * len(rounds)
    for _ in range(repeats):
        for i, run_round in enumerate(rounds):
            times = run_round()
            previous = best[i]
            best[i] = times if previous is None else np.minimum(previous, times)
    return [float(b.sum()) for b in best if b is not None]


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

    ours, theirs = fastest_calls(
        [lambda: timed([streamem_pass]), lambda: timed([sklearn_iteration])], repeats)
    point_fit, compiled, point_predict, river = bench_one_point(state, X[:POINT_CALLS], warm,
                                                                repeats)
    return EngineResult(
        n_components, n_features, n_points / ours, n_points / theirs, peak,
        (len(state), after[-1]), point_fit, compiled, point_predict, river,
    )


def bench_one_point(
    state: bytes, X: np.ndarray, warm: np.ndarray, repeats: int
) -> tuple[float, float | None, float, float | None]:
    """µs per call of one-point ``partial_fit`` (numpy path; compiled kernel, ``None`` without
    numba) and ``predict``, and of River's KMeans, each call counted with its fastest round
    (``fastest_calls``).

    Each round's ``partial_fit`` starts from the same warm model (restored before the clock
    starts); River's model, warmed on the same stream, keeps learning.
    """
    rows = [X[i : i + 1] for i in range(len(X))]
    predictor = OnlineGMM.from_bytes(state)
    enabled = kernel.ENABLED
    kernel.ENABLED = True
    with_kernel = kernel.compiled() is not None  # compiled (or loaded) before any clock runs

    def learn(compiled: bool) -> Callable[[], np.ndarray]:
        fresh = [OnlineGMM.from_bytes(state) for _ in range(repeats)]

        def run() -> np.ndarray:
            kernel.ENABLED = compiled
            model = fresh.pop()
            return timed([partial(model.partial_fit, row) for row in rows])

        return run

    def predict() -> np.ndarray:
        return timed([partial(predictor.predict, row) for row in rows])

    fns: list[Callable[[], np.ndarray]] = [learn(False), predict]
    if with_kernel:
        fns.append(learn(True))
    try:
        from river import cluster
    except ImportError:
        river = None
    else:
        river = cluster.KMeans(n_clusters=predictor.n_components, seed=0)
        for x in warm[:POINT_CALLS]:
            river.learn_one(dict(enumerate(x.tolist())))
        dicts = [dict(enumerate(x.tolist())) for x in X]

        def river_point(x: dict[int, float]) -> None:
            river.learn_one(x)
            river.predict_one(x)

        fns.append(lambda: timed([partial(river_point, x) for x in dicts]))
    try:
        times = [1e6 * t / len(rows) for t in fastest_calls(fns, repeats)]
    finally:
        kernel.ENABLED = enabled
    compiled = times[2] if with_kernel else None
    return times[0], compiled, times[1], times[-1] if river is not None else None


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
    lines.append("one point per call, µs (ratio to River KMeans learn_one + predict_one); "
                 "partial_fit by numpy and by the compiled kernel (numba):")
    lines.append(f"{'K':>4} {'d':>4} {'partial_fit numpy':>18} {'partial_fit compiled':>21} "
                 f"{'predict':>17} {'River':>8}")
    for r in results:
        river = "n/a" if r.river_us is None else f"{r.river_us:.1f}"
        fit, compiled, predict = (_beside(us, r.river_us) for us in (
            r.point_fit_us, r.point_fit_compiled_us, r.point_predict_us))
        lines.append(f"{r.n_components:>4} {r.n_features:>4} {fit:>18} {compiled:>21} "
                     f"{predict:>17} {river:>8}")
    if any(r.point_fit_compiled_us is None for r in results):
        lines.append(f"compiled kernel: n/a, {kernel.why_not or 'disabled'}")
    return "\n".join(lines)


def _beside(us: float | None, river_us: float | None) -> str:
    """µs, and its ratio to River's when there is one."""
    if us is None:
        return "n/a"
    return f"{us:.1f}" + ("" if river_us is None else f" ({us / river_us:.2f}x)")
