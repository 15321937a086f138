"""One point at a time: the fast path gives the batch path's numbers (to ~1e-12), not a new model.

The batch path for one point is the general code: ``params.e_step``, ``batch_statistics`` +
``blend`` + ``normalise``, and a full ``params_from_statistics``. Tests force it by swapping the
one-point kernels for it. The tests of ``OnlineGMM`` run over both one-point paths (the
``one_point`` fixture): the numpy functions of ``point`` and the compiled ``kernel.step`` (full
covariances; numba is a development dependency, so the compiled path is not optional here).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from streamem.model import OnlineGMM, kernel, point
from streamem.model.covariance import KINDS
from streamem.model.params import e_step, params_from_statistics, refresh_params
from streamem.model.point import STALE_LIMIT
from streamem.model.results import ModelRejected
from streamem.model.statistics import TINY, SufficientStatistics, batch_statistics
from streamem.model.validation import max_abs_value
from streamem.synthetic import Mixture, Stream

from .test_validation import assert_unchanged, snapshot

KIND_NAMES = ("full", "diag", "spherical")
RTOL = 1e-12


def stats_of(kind_name: str, K: int = 4, d: int = 3, seed: int = 0) -> SufficientStatistics:
    mix = Mixture.random(K, d, random_state=seed)
    nk = mix.weights.copy()
    nk[-1] = 1e-30  # a near-empty component: the batch path treats it apart
    nk /= nk.sum()
    scatter = KINDS[kind_name].from_full(mix.covariances) * nk.reshape((-1,) + (1,) * (
        KINDS[kind_name].from_full(mix.covariances).ndim - 1))
    return SufficientStatistics(nk, mix.means + 100.0, scatter)


def batch_blend(kind_name, stats, y, r, decay, center) -> None:
    """The batch path for one point, in place."""
    kind = KINDS[kind_name]
    batch = batch_statistics(kind, y[None], r[None], center)
    stats.blend(batch, decay, kind)
    stats.normalise()


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    """Equal to ``rtol`` relative to the array's scale (entries near zero included)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-300))


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_e_step_of_one_point_is_the_batch_e_step(kind_name: str) -> None:
    kind = KINDS[kind_name]
    params = params_from_statistics(stats_of(kind_name), kind, 1e-6)
    rng = np.random.default_rng(1)
    for x in np.vstack([params.means + rng.normal(size=params.means.shape),
                        params.means[0] + 1e3, params.center]):
        resp, log_lik = point.e_step(kind, params, x)
        want_resp, want_log_lik = e_step(kind, params, x[None])
        assert_close(resp, want_resp[0])
        assert log_lik == pytest.approx(want_log_lik[0], rel=RTOL)


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0 - 1e-4])
def test_blend_of_one_point_is_the_batch_update(kind_name: str, decay: float) -> None:
    """Live components, one with a tiny weight (< TINY) and one with none, a near-empty one."""
    kind = KINDS[kind_name]
    rng = np.random.default_rng(2)
    for trial in range(20):
        fast, slow = stats_of(kind_name, seed=trial), stats_of(kind_name, seed=trial)
        center = fast.nk @ fast.means
        y = fast.means[trial % 4] + rng.normal(size=3) - center
        r = rng.dirichlet(np.ones(4)) * 1e-3
        r[trial % 2] = 1e-3 * TINY  # below TINY: the point is a second moment about ``center``
        r[2] = 0.0 if trial % 3 == 0 else r[2]
        x = y + center
        D = np.stack([fast.means - x, fast.means - center], axis=1)
        fast, _, _ = point.blend(kind, fast, D, r.tolist(), decay, [[0.0, 0.0]] * 4, None)
        batch_blend(kind_name, slow, y, r, decay, center)
        assert_close(fast.nk, slow.nk)
        assert_close(fast.means, slow.means)
        # The batch path's scatter of one point, R·yyᵀ − R·mmᵀ with m ≈ y, is rounding noise
        # on the scale of the data: compare on that scale.
        data_scale = np.abs(slow.nk).max() * (np.abs(y).max() + 10.0) ** 2
        np.testing.assert_allclose(fast.scatter, slow.scatter, rtol=0,
                                   atol=RTOL * max(np.abs(slow.scatter).max(), data_scale))


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_refresh_computes_and_factorises_only_the_rows_given(kind_name: str) -> None:
    kind = KINDS[kind_name]
    stats = stats_of(kind_name)
    before = params_from_statistics(stats, kind, 1e-6)
    stats.scatter = stats.scatter * np.array([1.5, 1.0, 1.0, 1.0]).reshape(
        (-1,) + (1,) * (stats.scatter.ndim - 1))
    stats.means = stats.means + 1.0
    params = refresh_params(stats, kind, 1e-6, before, np.array([0]))
    fresh = params_from_statistics(stats, kind, 1e-6)
    np.testing.assert_array_equal(params.means, fresh.means)
    for name in ("weights", "center", "log_weights", "log_det", "log_norm"):  # K floats
        assert_close(getattr(params, name), getattr(fresh, name), rtol=1e-15)
    assert_close(params.covariances[0], fresh.covariances[0], rtol=1e-15)
    # the factor is that of the covariance kept, bit for bit (as loading computes it)
    np.testing.assert_array_equal(params.precisions_chol[0],
                                  kind.precision_cholesky(params.covariances[:1])[0])
    np.testing.assert_array_equal(params.covariances[1:], before.covariances[1:])
    np.testing.assert_array_equal(params.precisions_chol[1:], before.precisions_chol[1:])
    unchanged = refresh_params(stats, kind, 1e-6, before, np.array([], dtype=np.intp))
    np.testing.assert_array_equal(unchanged.precisions_chol, before.precisions_chol)


def whitened_change(kind_name: str, before, after, k: int) -> float:
    """‖P_kᵀ (F'_k − F_k) P_k‖₂: component k's covariance change relative to itself."""
    kind, d = KINDS[kind_name], before.means.shape[1]
    P = kind.to_full(before.precisions_chol, d)[k]
    change = kind.to_full(after.covariances, d)[k] - kind.to_full(before.covariances, d)[k]
    return float(np.abs(np.linalg.eigvalsh(P.T @ change @ P)).max())


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_the_reach_bounds_how_far_one_point_moves_each_covariance(
    kind_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound ``blend`` accumulates holds, for weights above and below TINY, points near
    and far, a light component (where a weight below TINY still moves it)."""
    monkeypatch.setattr(point, "STALE_LIMIT", np.inf)  # no row renewed: the drift is f·reach
    kind = KINDS[kind_name]
    rng = np.random.default_rng(5)
    checked = 0
    for trial in range(40):
        stats = stats_of(kind_name, seed=trial)
        stats.nk = np.array([0.3, 0.3, 0.4 - 1e-9, 1e-9])
        before = params_from_statistics(stats, kind, 1e-6)
        x = before.means[trial % 4] + rng.normal(size=3) * 10.0 ** (trial % 3)
        found = point.answer(kind, before, x)
        assert found is not None
        resp, _, dist, D = found
        w = 10.0 ** rng.uniform(-6, -1)
        r = [v * w for v in resp]
        r[3] = 0.5 * TINY if trial % 2 else r[3]
        stats, rows, bounds = point.blend(kind, stats, D, r, 1.0 - w, dist, None)
        assert rows == []
        after = params_from_statistics(stats, kind, 1e-6)
        for k in range(4):
            bound = bounds[k]
            assert whitened_change(kind_name, before, after, k) <= bound * (1 + 1e-9) + 1e-13
            checked += bound > 1e-6
    assert checked > 40  # the bound was put to work, not only met by tiny changes


def test_blend_accumulates_the_drift_and_renews_light_components() -> None:
    """Each step adds f·reach to a component's drift; past ``STALE_LIMIT`` (or not a number)
    its factor is renewed and the drift starts over, as it is for a component without mass.
    The reach of a weight above ``TINY`` does not depend on the distance to the center."""
    stats = SufficientStatistics(np.array([0.5, 0.5, 0.0]), np.zeros((3, 2)),
                                 np.stack([0.5 * np.eye(2), 0.5 * np.eye(2), np.zeros((2, 2))]))
    D, r, decay = np.ones((3, 2, 2)), [0.45 * TINY, 1.05 * TINY, 0.0], 1.0 - 1.5 * TINY
    frac = [b / (decay * v + b) for v, b in zip([0.5, 0.5], r[:2], strict=True)]
    dist = [[0.0, 0.0], [0.0, 5.0], [1.0, 1.0]]  # reach 2 + 4a + 6b = 2, and 2 + 2a = 2
    kind = KINDS["full"]
    _, rows, drift = point.blend(kind, stats, D, r, decay, dist, None)
    assert rows == [2] and drift[2] == 0.0
    assert drift[:2] == pytest.approx([2.0 * frac[0], 2.0 * frac[1]], rel=1e-12)
    assert 0.3e-14 < drift[0] < 0.5e-14 < 0.9e-14 < drift[1] < STALE_LIMIT
    _, rows, drift = point.blend(kind, stats, D, r, decay, dist, drift)  # the same f·reach
    assert rows == [1, 2]  # past STALE_LIMIT: factorised again, drift from 0
    assert drift[0] == pytest.approx(4.0 * frac[0], rel=1e-12) and drift[1] == 0.0
    _, rows, drift = point.blend(kind, stats, D, r, decay, dist, drift)
    assert rows == [0, 2] and drift[0] == 0.0
    _, rows, _ = point.blend(kind, stats, D, r, decay, [[np.nan, 0.0]] + dist[1:], None)
    assert rows == [0, 2]
    assert STALE_LIMIT == 1e-14


@pytest.fixture(params=["numpy", "compiled"])
def one_point(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one-point path ``OnlineGMM._learn_point`` takes: numpy, or the compiled kernel."""
    monkeypatch.setattr(kernel, "ENABLED", request.param == "compiled")
    if request.param == "compiled":
        assert kernel.compiled() is not None, kernel.why_not
    return str(request.param)


def force_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer and learn one point with the general batch code (E-step, schedule, statistics
    and a full M-step): without ``point.answer`` and the compiled kernel, neither
    ``OnlineGMM._learn_point`` nor ``_online_step`` takes a one-point kernel."""
    monkeypatch.setattr(point, "answer", lambda kind, params, x: None)
    monkeypatch.setattr(kernel, "ENABLED", False)


def stream_one_by_one(config: dict, X: np.ndarray) -> tuple[OnlineGMM, list]:
    gmm = OnlineGMM(4, warmup=200, random_state=0, anomaly_rate=0.01, **config)
    return gmm, [gmm.partial_fit(X[i : i + 1]) for i in range(len(X))]


@pytest.mark.parametrize("config", [
    dict(covariance_type="full"), dict(covariance_type="diag"),
    dict(covariance_type="spherical"), dict(covariance_type="full", assignment="hard"),
], ids=["full", "diag", "spherical", "full-hard"])
def test_a_stream_of_single_points_follows_the_batch_path(
    config: dict, one_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3000 points one by one, far from the origin, through two collapse checks."""
    X, _ = Mixture.random(4, 3, random_state=3).sample(3000, random_state=4)
    X = X * 10.0 + 1e4
    fast, fast_results = stream_one_by_one(config, X)
    with monkeypatch.context() as patched:
        force_batch_path(patched)
        slow, slow_results = stream_one_by_one(config, X)
    for a, b in zip(fast_results, slow_results, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.anomaly, b.anomaly)
        assert a.model_version == b.model_version
        assert_close(a.responsibilities, b.responsibilities)
        assert_close(a.log_likelihood, b.log_likelihood)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-11)
    assert fast.anomaly_threshold_ == pytest.approx(slow.anomaly_threshold_, rel=RTOL)
    assert fast.n_seen_ == slow.n_seen_ and fast.resets_ == slow.resets_


def test_a_drifting_stream_with_outliers_follows_the_batch_path(
    one_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flagged points kept out of the update, a drift refit in the middle of a step, resets:
    one point at a time still gives the batch path's answers."""
    before, after = Mixture.random(4, 3, random_state=3), Mixture.random(4, 3, random_state=9)
    X, _ = Stream(before, outlier_share=0.03, after=after, drift_at=2500).take(9000, 4)

    def stream() -> tuple[OnlineGMM, list]:
        gmm = OnlineGMM(4, warmup=300, random_state=0, anomaly_rate=0.01)
        return gmm, [gmm.partial_fit(X[i : i + 1]) for i in range(len(X))]

    fast, fast_results = stream()
    with monkeypatch.context() as patched:
        force_batch_path(patched)
        slow, slow_results = stream()
    assert fast.resets_["drift"] == slow.resets_["drift"] == 1 and fast.resets_ == slow.resets_
    assert sum(int(r.anomaly[0]) for r in fast_results) > 100
    for a, b in zip(fast_results, slow_results, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.anomaly, b.anomaly)
        assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-11)
    assert_close(fast.covariances_, slow.covariances_, rtol=1e-11)


@pytest.mark.parametrize("how", ["to_bytes", "pickle"])
def test_a_copy_after_single_points_continues_bit_for_bit(how: str, one_point: str) -> None:
    """Factors kept lazily (and the compiled kernel's) are settled before saving, as loading
    computes them; a pickle carries them as they are."""
    X, _ = Mixture.random(4, 3, random_state=3).sample(1500, random_state=4)
    gmm, _ = stream_one_by_one({}, X[:700])
    if how == "to_bytes":
        copy = OnlineGMM.from_bytes(gmm.to_bytes())
    else:
        copy = pickle.loads(pickle.dumps(gmm))
    for i in range(700, 1500):
        a, b = gmm.partial_fit(X[i : i + 1]), copy.partial_fit(X[i : i + 1])
        np.testing.assert_array_equal(a.responsibilities, b.responsibilities)
    np.testing.assert_array_equal(gmm.precisions_cholesky_, copy.precisions_cholesky_)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples"])
def test_answering_one_point_is_answering_it_in_a_batch(method: str) -> None:
    X, _ = Mixture.random(4, 3, random_state=3).sample(600, random_state=4)
    gmm = OnlineGMM(4, warmup=200, random_state=0).fit(X[:400])
    batch = getattr(gmm, method)(X[400:])
    for i, x in enumerate(X[400:]):
        one = getattr(gmm, method)(x[None])
        assert one.shape == batch[i : i + 1].shape
        assert_close(one, batch[i : i + 1])


def test_the_common_case_skips_the_snapshot_and_gives_the_general_path_bit_for_bit(
    one_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_learn_point`` learns most points without a snapshot (the others: warm-up, flagged
    points, collapse checks), and exactly as ``_online_step``'s one-point path would: bit for
    bit with numpy, to 1e-12 relative with the compiled kernel (its sums run in another order,
    and its Cholesky factors are not LAPACK's to the last bit)."""
    before, after = Mixture.random(4, 3, random_state=3), Mixture.random(4, 3, random_state=9)
    X, _ = Stream(before, outlier_share=0.02, after=after, drift_at=2500).take(5000, 4)
    snapshots = []
    real = OnlineGMM._snapshot

    def counted(self, *args):
        snapshots.append(self.n_seen_)
        return real(self, *args)

    def stream() -> tuple[OnlineGMM, list]:
        gmm = OnlineGMM(4, warmup=300, random_state=0, anomaly_rate=0.01)
        return gmm, [gmm.partial_fit(X[i : i + 1]) for i in range(len(X))]

    with monkeypatch.context() as patched:
        patched.setattr(OnlineGMM, "_snapshot", counted)
        fast, fast_results = stream()
    flagged = sum(int(r.anomaly[0]) for r in fast_results)
    # the warm-up, flagged points, the refit's warm-up after the drift, collapse checks
    assert len(snapshots) <= 300 + flagged + fast.warmup_ + len(X) // 2048
    assert len(snapshots) < len(X) / 4
    with monkeypatch.context() as patched:
        patched.setattr(OnlineGMM, "_learn_point", lambda self, X: None)
        slow, slow_results = stream()
    assert fast.resets_ == slow.resets_ and fast.resets_["drift"] == 1
    if one_point == "numpy":
        for a, b in zip(fast_results, slow_results, strict=True):
            for name in ("labels", "probabilities", "responsibilities", "log_likelihood",
                         "anomaly"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(fast.precisions_cholesky_, slow.precisions_cholesky_)
        assert_unchanged(snapshot(slow), fast)  # the whole saved state, trackers included
        return
    # Rounding differences grow through the drift refit, as between the numpy and the batch
    # path (up to 7.7e-11 for responsibilities, 6.6e-12 for log p(x) on this stream).
    for a, b in zip(fast_results, slow_results, strict=True):
        for name in ("labels", "anomaly"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        for name in ("probabilities", "responsibilities"):
            assert_close(getattr(a, name), getattr(b, name), rtol=1e-10)
        assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-11)
    assert_close(fast.precisions_cholesky_, slow.precisions_cholesky_)
    assert_state_close(snapshot(slow), snapshot(fast))


def assert_state_close(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Two saved states (``snapshot``) equal to ``RTOL`` relative to each array's scale: every
    array and every number of the header; the rest exactly."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        if name == "header":
            assert_json_close(json.loads(str(got[name])), json.loads(str(value)), name)
        elif value.dtype.kind == "f":
            assert_close(got[name], value)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def assert_json_close(got: object, want: object, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_json_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_json_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=RTOL, abs=0.0), where
    else:
        assert got == want, where


@pytest.mark.parametrize("bad", [np.nan, np.inf, "beyond", "beyond, data at that scale"])
def test_a_bad_single_point_is_refused_as_a_batch_would_be(bad: object, one_point: str) -> None:
    """Refused with the batch's error, and nothing learned: also a point just beyond the input
    bound that the model, fitted to data at that scale, would not even flag."""
    limit = max_abs_value(3)
    X, _ = Mixture.random(4, 3, random_state=3).sample(600, random_state=4)
    if bad == "beyond, data at that scale":
        X = np.random.default_rng(5).uniform(-0.9, 0.9, size=(600, 3)) * limit
    gmm = OnlineGMM(4, warmup=200, random_state=0)
    gmm.partial_fit(X[:500])
    x = X[500:501].copy()
    x[0, 1] = bad if isinstance(bad, float) else 1.01 * limit
    before = snapshot(gmm)
    with pytest.raises(ValueError, match=r"in 1 row\(s\): 0") as err:
        gmm.partial_fit(x)
    assert not isinstance(err.value, ModelRejected)
    assert_unchanged(before, gmm)
