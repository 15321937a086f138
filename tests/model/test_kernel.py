"""The compiled one-point kernel: one step is the numpy path's step (``point.answer``,
``point.step``, ``point.blend``, ``refresh_params``) to rounding, it refuses what the numpy path
refuses, and numba stays optional and lazily imported.

numba is a development dependency: the compiled kernel must be there (a test fails, not skips,
without it). ``kernel.step`` also runs uncompiled, as plain Python: both are tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamem
from streamem.model import OnlineGMM, kernel, point
from streamem.model.covariance import KINDS
from streamem.model.params import Params, params_from_statistics, refresh_params
from streamem.model.statistics import SufficientStatistics
from streamem.model.validation import max_abs_value
from streamem.synthetic import Mixture

from .test_point import assert_close, stats_of

FULL = KINDS["full"]
REG = 1e-6
KEEP = 0.999
SCHEDULE = dict(learning_decay=0.7, learning_offset=10.0, floor=1e-4)


@pytest.fixture(params=["compiled", "python"])
def step(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(kernel, "ENABLED", True)
    compiled = kernel.compiled("full")
    assert compiled is not None, kernel.why_not
    return compiled if request.param == "compiled" else kernel.step


def run(step, stats: SufficientStatistics, params: Params, x: np.ndarray,  # type: ignore[no-untyped-def]
        drift: np.ndarray, usage: np.ndarray, n_steps: int, threshold: float = -np.inf):
    K, d = params.means.shape
    vec, mvec = np.empty((kernel.ROWS, K)), np.empty((2, K, d))
    mats = np.empty((3,) + stats.scatter.shape)
    label, heaviest, gamma = step(
        x[None], stats.nk, stats.means, stats.scatter, params.means, params.covariances,
        params.precisions_chol, params.log_norm, params.log_det, params.center, drift, usage,
        threshold, max_abs_value(d), n_steps, SCHEDULE["learning_decay"],
        SCHEDULE["learning_offset"], SCHEDULE["floor"], REG, KEEP, vec, mvec, mats)
    return label, heaviest, gamma, vec, mvec, mats


@pytest.mark.parametrize("kind_name", ["full", "diag", "spherical"])
def test_one_step_is_the_numpy_paths_step(step, kind_name: str) -> None:  # type: ignore[no-untyped-def]
    """Points near each mean and far away, components with and without weight (the point as a
    second moment about the center), kept and renewed factors, a drift carried in."""
    kind = KINDS[kind_name]
    assert kernel.compiled(kind_name) is not None, kernel.why_not
    rng = np.random.default_rng(7)
    renewed = kept = 0
    for trial in range(30):
        stats = stats_of(kind_name, K=4, d=3, seed=trial)
        params = params_from_statistics(stats, kind, REG)
        x = params.means[trial % 4] + rng.normal(size=3) * 10.0 ** (trial % 3)
        drift_in = rng.uniform(0, 2 * point.STALE_LIMIT, size=4) * (trial % 2)
        usage = rng.dirichlet(np.ones(4))
        n_steps = 100 + 1000 * trial
        label, heaviest, gamma, vec, mvec, mats = run(step, stats, params, x, drift_in, usage,
                                                      n_steps)
        resp, log_lik, dist, D = point.answer(kind, params, x)  # type: ignore[misc]
        decay, weight = point.step(n_steps, **SCHEDULE)
        want, rows, drift = point.blend(kind, stats, D, [v * weight for v in resp], decay, dist,
                                        drift_in.tolist())
        fresh = refresh_params(want, kind, REG, params, rows)
        assert label == int(np.argmax(resp)) and gamma == weight
        assert vec[kernel.LOG_LIK, 0] == pytest.approx(log_lik, rel=1e-14)
        assert_close(vec[kernel.RESP], np.array(resp), rtol=1e-14)
        assert_close(vec[kernel.NK], want.nk, rtol=1e-14)
        assert_close(mvec[0], want.means, rtol=1e-14)
        np.testing.assert_array_equal(mvec[1], mvec[0])
        assert_close(mats[0], want.scatter, rtol=1e-13)
        assert [k for k in range(4) if vec[kernel.DRIFT, k] == 0.0] == [
            k for k in range(4) if drift[k] == 0.0]  # the same factors renewed
        assert_close(vec[kernel.DRIFT], np.array(drift), rtol=1e-12)  # a bound
        for row, name in ((kernel.WEIGHTS, "weights"), (kernel.LOG_DET, "log_det"),
                          (kernel.LOG_WEIGHTS, "log_weights"), (kernel.LOG_NORM, "log_norm")):
            assert_close(vec[row], getattr(fresh, name), rtol=1e-13)
        assert_close(mats[1], fresh.covariances, rtol=1e-14)
        assert_close(mats[2], fresh.precisions_chol, rtol=1e-12)
        if kind_name == "full":
            np.testing.assert_array_equal(np.tril(mats[2], -1), 0.0)  # upper factors
        np.testing.assert_array_equal(mvec[1][heaviest], fresh.center)
        assert_close(vec[kernel.USAGE], KEEP * usage + (1 - KEEP) * np.array(resp), rtol=1e-15)
        renewed += len(rows)
        kept += 4 - len(rows)
    assert renewed > 30 and kept > 30  # both kinds of rows were met


@pytest.mark.parametrize("case", ["nan", "inf", "beyond", "flagged", "not positive definite",
                                  "not finite"])
def test_what_the_numpy_path_refuses_the_kernel_refuses(step, case: str) -> None:  # type: ignore[no-untyped-def]
    """-1: nothing to commit; the general path then takes (or refuses) the point."""
    stats = stats_of("full", K=4, d=3, seed=1)
    if case == "not finite":  # component 1 far from the point: its factor is kept
        stats.means = stats.means + np.array([[0.0], [1e3], [0.0], [0.0]])
    params = params_from_statistics(stats, FULL, REG)
    x, threshold = params.means[0] + 0.1, -np.inf
    if case in ("nan", "inf"):
        x[1] = np.nan if case == "nan" else np.inf
    elif case == "beyond":
        x[1] = 1.01 * max_abs_value(3)
    elif case == "flagged":
        threshold = 1e3
    elif case == "not positive definite":  # the statistics blended into: a negative variance
        stats.scatter = stats.scatter.copy()
        stats.scatter[0] = -np.eye(3)
    else:  # a NaN in the statistics of that component
        stats.scatter = stats.scatter.copy()
        stats.scatter[1, 0, 1] = np.nan
    label, _, _, _, _, mats = run(step, stats, params, x, np.zeros(4), np.zeros(4), 100,
                                  threshold)
    assert label == -1
    if case == "not finite":  # its factor was kept, not renewed: the final check caught it
        np.testing.assert_array_equal(mats[1][1], params.covariances[1])
    if case == "not positive definite":  # and without the bad statistics, it learns
        good = stats_of("full", K=4, d=3, seed=1)
        assert run(step, good, params, x, np.zeros(4), np.zeros(4), 100, threshold)[0] >= 0


def test_numba_is_imported_on_the_first_point_not_with_streamem() -> None:
    code = ("import sys, numpy as np\n"
            "from streamem.model import OnlineGMM\n"
            "import streamem.cli\n"
            "assert 'numba' not in sys.modules\n"
            "g = OnlineGMM(2, warmup=20, random_state=0)\n"
            "g.partial_fit(np.random.default_rng(0).normal(size=(40, 2)))\n"
            "assert 'numba' not in sys.modules\n"
            "g.partial_fit(np.zeros((1, 2)))\n"
            "print('numba' in sys.modules)\n")
    env = dict(os.environ)
    env.pop("STREAMEM_NO_JIT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"
    env["STREAMEM_NO_JIT"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_without_numba_the_numpy_path_learns_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = Mixture.random(3, 2, random_state=1).sample(800, random_state=2)

    def stream() -> OnlineGMM:
        gmm = OnlineGMM(3, warmup=200, random_state=0)
        for i in range(len(X)):
            gmm.partial_fit(X[i : i + 1])
        return gmm

    monkeypatch.setattr(kernel, "ENABLED", False)
    reference = stream()
    monkeypatch.setattr(kernel, "ENABLED", True)
    for name, value in (("_tried", False), ("_kernel", None), ("_ready", {}), ("why_not", "")):
        monkeypatch.setattr(kernel, name, value)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    assert kernel.compiled() is None and "not installed" in kernel.why_not
    gmm = stream()
    np.testing.assert_array_equal(gmm.precisions_cholesky_, reference.precisions_cholesky_)
    np.testing.assert_array_equal(gmm.means_, reference.means_)


def test_no_writable_cache_compiles_in_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A package dir where numba cannot write (its ``__pycache__`` a file) and no writable
    user cache dir: the kernel is compiled for the process, and the point learned."""
    package = Path(streamem.__file__).parent
    shutil.copytree(package, tmp_path / "streamem",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "streamem" / "model" / "__pycache__").write_text("")
    code = ("import numpy as np\n"
            "from streamem.model import OnlineGMM, kernel\n"
            "assert kernel.compiled() is not None, kernel.why_not\n"
            "g = OnlineGMM(2, warmup=20, random_state=0)\n"
            "g.partial_fit(np.random.default_rng(0).normal(size=(40, 2)))\n"
            "print(g.partial_fit(np.zeros((1, 2))).labels[0] in (0, 1))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HOME": "/proc",
           "NUMBA_CACHE_DIR": "/proc/streamem-none", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("STREAMEM_NO_JIT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.strip() == "True"
    assert not list((tmp_path / "streamem").rglob("*.nbi"))  # nothing cached
