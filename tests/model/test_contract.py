"""The contract every ``OnlineGMM`` configuration keeps, whatever the stream.

Run over covariance types × soft/hard assignment × k-means++/random seeding: valid
responsibilities and parameters, no mutation of the input, seeding, persistence that continues
the same trajectory, chunking invariance, scikit-learn shapes, and no NaN on degenerate streams.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from model_helpers import assert_positive_definite

from streamem.model import BatchResult, OnlineGMM
from streamem.model.covariance import KINDS
from streamem.model.gmm import CHECK_EVERY, HISTORY_LENGTH
from streamem.synthetic import Mixture

CONFIGS = [
    dict(covariance_type=c, assignment=a, init=i)
    for c in ("full", "diag", "spherical")
    for a in ("soft", "hard")
    for i in ("kmeans++", "random")
]
IDS = [f"{c['covariance_type']}-{c['assignment']}-{c['init']}" for c in CONFIGS]
K, D, WARMUP = 3, 2, 60
FIELDS = ("labels", "probabilities", "responsibilities", "log_likelihood", "anomaly", "warmup")


@pytest.fixture(params=CONFIGS, ids=IDS)
def config(request: pytest.FixtureRequest) -> dict:
    return request.param


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    X, _ = Mixture.random(K, D, random_state=0).sample(1200, random_state=1)
    return X


def make(config: dict, **kwargs) -> OnlineGMM:
    return OnlineGMM(K, warmup=WARMUP, random_state=0, **{**config, **kwargs})


def feed(model: OnlineGMM, X: np.ndarray, batch: int) -> list[BatchResult]:
    return [model.partial_fit(X[i : i + batch]) for i in range(0, len(X), batch)]


def joined(results: list[BatchResult]) -> dict[str, np.ndarray]:
    return {f: np.concatenate([getattr(r, f) for r in results]) for f in FIELDS}


def snapshot(model: OnlineGMM) -> dict[str, np.ndarray]:
    """Every saved array and the JSON header of a model: its whole learning state."""
    with np.load(io.BytesIO(model.to_bytes()), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def assert_same_state(a: OnlineGMM, b: OnlineGMM, ignore: tuple[str, ...] = ()) -> None:
    """Same arrays and header, except the header fields in ``ignore``."""
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    ha, hb = (json.loads(str(s.pop("header"))) for s in (sa, sb))
    assert {k: v for k, v in ha.items() if k not in ignore} == {
        k: v for k, v in hb.items() if k not in ignore
    }
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


def assert_same_results(a: list[BatchResult], b: list[BatchResult]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(ra, f), getattr(rb, f), err_msg=f)
        assert ra.model_version == rb.model_version


def assert_valid_result(result: BatchResult, n: int, n_components: int) -> None:
    R = result.responsibilities
    assert len(result) == n and R.shape == (n, n_components)
    assert np.all((R >= 0.0) & (R <= 1.0))
    np.testing.assert_allclose(R.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(result.labels, R.argmax(axis=1))
    np.testing.assert_array_equal(result.probabilities, R[np.arange(n), result.labels])
    assert np.isfinite(result.log_likelihood).all()
    assert result.anomaly.dtype == bool and result.warmup.dtype == bool
    assert not (result.anomaly & result.warmup).any(), "a warm-up point was flagged"


def assert_valid_parameters(model: OnlineGMM) -> None:
    d = model.n_features_in_
    assert d is not None
    assert model.weights_.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(model.weights_ >= 0.0)
    assert np.isfinite(model.means_).all()
    full = KINDS[model.covariance_type].to_full(model.covariances_, d)
    assert np.isfinite(full).all()
    assert_positive_definite(full)
    assert np.all(model.condition_numbers_ >= 1.0)


# ---------------------------------------------------------------- valid outputs and parameters
def test_results_and_parameters_are_valid_along_a_stream(config: dict, data: np.ndarray) -> None:
    gmm = make(config)
    for i in range(0, 900, 75):
        result = gmm.partial_fit(data[i : i + 75])
        assert_valid_result(result, 75, K)
        assert_valid_parameters(gmm)
    assert gmm.n_seen_ == 900


@st.composite
def streams(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray]]:
    """A finite stream with duplicated rows and values up to ±1e6, cut into batches."""
    d = draw(st.integers(1, 3))
    elements = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0, -1e6, 1e6]))
    pool = draw(hnp.arrays(np.float64, (draw(st.integers(1, 8)), d), elements=elements))
    rows = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=200))
    noise = draw(st.sampled_from([0.0, 1e-3, 1.0]))
    X = pool[rows] + noise * np.random.default_rng(len(rows)).normal(size=(len(rows), d))
    cuts = sorted(draw(st.lists(st.integers(0, len(X)), max_size=5)))
    return X, np.split(X, cuts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), config=st.sampled_from(CONFIGS), n_components=st.integers(1, 4),
       warmup=st.integers(1, 40))
def test_arbitrary_finite_streams_keep_the_model_valid(
    stream: tuple[np.ndarray, list[np.ndarray]], config: dict, n_components: int, warmup: int
) -> None:
    X, batches = stream
    gmm = OnlineGMM(n_components, warmup=warmup, random_state=0, **config)
    for batch in batches:
        assert_valid_result(gmm.partial_fit(batch), len(batch), n_components)
    assert gmm.n_seen_ == len(X)
    assert_valid_parameters(gmm)


# ---------------------------------------------------------------- input, seeding, persistence
def test_partial_fit_does_not_mutate_its_input(config: dict, data: np.ndarray) -> None:
    gmm = make(config)
    for chunk in np.array_split(data[:400], 5):
        before = chunk.copy()
        gmm.partial_fit(chunk)
        np.testing.assert_array_equal(chunk, before)
        gmm.predict_proba(chunk)
        np.testing.assert_array_equal(chunk, before)


def test_the_model_keeps_no_reference_to_its_input(data: np.ndarray) -> None:
    """A caller that refills one array for every poll must not change the warm-up buffer."""
    reused = np.empty((20, D))
    borrowed, own = OnlineGMM(K, warmup=WARMUP, random_state=0), make({})
    for i in range(0, 120, 20):
        reused[:] = data[i : i + 20]
        borrowed.partial_fit(reused)
        own.partial_fit(data[i : i + 20].copy())
    assert_same_state(borrowed, own)


def test_same_seed_and_data_give_the_same_model(config: dict, data: np.ndarray) -> None:
    a, b = make(config), make(config)
    assert_same_results(feed(a, data[:600], 80), feed(b, data[:600], 80))
    assert_same_state(a, b)


def test_different_seeds_can_differ() -> None:
    """The seed is used at all: seeds give different warm-up fits on ambiguous data."""
    X = np.random.default_rng(3).normal(size=(200, D))
    means = []
    for seed in range(3):
        gmm = OnlineGMM(4, warmup=100, init="random", random_state=seed)
        gmm.partial_fit(X)
        means.append(np.sort(gmm.means_, axis=0))
    assert not all(np.array_equal(means[0], m) for m in means[1:])


@pytest.mark.parametrize("saved_after", [0, 30, WARMUP, 300, 700])
def test_round_trip_predicts_and_continues_identically(
    config: dict, data: np.ndarray, tmp_path: Path, saved_after: int
) -> None:
    """Saved before, during or after warm-up, the copies then follow the same trajectory."""
    original = make(config)
    if saved_after:
        feed(original, data[:saved_after], 40)
    from_bytes = OnlineGMM.from_bytes(original.to_bytes())
    path = tmp_path / "model.npz"
    original.save(str(path))
    loaded = OnlineGMM.load(str(path))
    assert not list(tmp_path.glob(".model.npz.tmp-*")), "the temporary file was left behind"
    for copy in (from_bytes, loaded):
        assert copy.get_params() == original.get_params()
        assert_same_state(copy, original)
        if original.n_seen_:
            probe = data[-50:]
            np.testing.assert_array_equal(copy.predict_proba(probe), original.predict_proba(probe))
            np.testing.assert_array_equal(copy.score_samples(probe), original.score_samples(probe))
            assert copy.anomaly_threshold_ == original.anomaly_threshold_
    rest = data[saved_after : saved_after + 500]
    expected = feed(original, rest, 45)
    for copy in (from_bytes, loaded):
        assert_same_results(feed(copy, rest, 45), expected)
        assert_same_state(copy, original)


def test_round_trip_keeps_an_unseeded_model_reproducible(data: np.ndarray) -> None:
    """``random_state=None`` draws a seed once; the copy keeps it."""
    original = OnlineGMM(K, warmup=WARMUP)
    feed(original, data[:30], 30)
    copy = OnlineGMM.from_bytes(original.to_bytes())
    assert_same_results(feed(copy, data[30:300], 50), feed(original, data[30:300], 50))


def test_from_bytes_rejects_other_bytes() -> None:
    with pytest.raises(ValueError, match="not a streamem model file"):
        OnlineGMM.from_bytes(b"definitely not a model")
    buffer = io.BytesIO()
    np.savez(buffer, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a streamem model file"):
        OnlineGMM.from_bytes(buffer.getvalue())


# ---------------------------------------------------------------- chunking
def test_chunking_during_warm_up_gives_the_same_model(config: dict, data: np.ndarray) -> None:
    """However the warm-up points are cut, the model that ends the warm-up is the same.

    Only the size of the last provisional fit (which answered the warm-up points) may differ.
    """
    whole, chunked = make(config), make(config)
    whole.partial_fit(data[:WARMUP])
    for piece in np.array_split(data[:WARMUP], [7, 8, 30, 59]):
        chunked.partial_fit(piece)
    assert_same_state(whole, chunked, ignore=("_provisional_size",))
    rest_whole = feed(whole, data[WARMUP:WARMUP + 40], 40)
    rest_chunked = feed(chunked, data[WARMUP:WARMUP + 40], 40)
    assert_same_results(rest_whole, rest_chunked)


def test_a_batch_straddling_the_warm_up_end_is_split_exactly(
    config: dict, data: np.ndarray
) -> None:
    whole, split = make(config), make(config)
    straddling = whole.partial_fit(data[:200])
    parts = [split.partial_fit(data[:WARMUP]), split.partial_fit(data[WARMUP:200])]
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(straddling, f),
                                      np.concatenate([getattr(p, f) for p in parts]), err_msg=f)
    assert_same_state(whole, split)


def test_chunking_after_warm_up_gives_a_near_identical_model(
    config: dict, data: np.ndarray
) -> None:
    """Batches of 100 vs 10 over 1140 points (unit-scale clusters about 4 apart)."""
    one, many = make(config), make(config)
    feed(one, data[:WARMUP], WARMUP)
    feed(many, data[:WARMUP], WARMUP)
    big, small = joined(feed(one, data[WARMUP:], 100)), joined(feed(many, data[WARMUP:], 10))
    assert one.n_seen_ == many.n_seen_ == len(data)
    np.testing.assert_allclose(one.weights_, many.weights_, atol=0.03)
    np.testing.assert_allclose(one.means_, many.means_, atol=0.2)
    np.testing.assert_allclose(one.covariances_, many.covariances_, atol=0.2)
    held_out = Mixture.random(K, D, random_state=0).sample(2000, random_state=9)[0]
    assert one.score(held_out) == pytest.approx(many.score(held_out), abs=0.02)
    assert one.learning_rate_ == pytest.approx(many.learning_rate_, rel=0.02)
    assert np.mean(big["labels"] == small["labels"]) > 0.97


# ---------------------------------------------------------------- scikit-learn surface
SHAPES = {"full": (K, D, D), "diag": (K, D), "spherical": (K,)}


def test_fitted_attribute_shapes(config: dict, data: np.ndarray) -> None:
    gmm = make(config)
    feed(gmm, data[:300], 100)
    assert gmm.weights_.shape == (K,)
    assert gmm.means_.shape == (K, D)
    assert gmm.covariances_.shape == SHAPES[config["covariance_type"]]
    assert gmm.precisions_cholesky_.shape == SHAPES[config["covariance_type"]]
    assert gmm.condition_numbers_.shape == (K,) and np.all(gmm.condition_numbers_ >= 1.0)
    assert gmm.n_features_in_ == D and gmm.initialized_


def test_predict_is_argmax_of_predict_proba(config: dict, data: np.ndarray) -> None:
    gmm = make(config)
    feed(gmm, data[:300], 100)
    proba = gmm.predict_proba(data[300:500])
    np.testing.assert_array_equal(gmm.predict(data[300:500]), proba.argmax(axis=1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    scores = gmm.score_samples(data[300:500])
    assert gmm.score(data[300:500]) == pytest.approx(scores.mean())
    weighted = gmm.log_prob_components(data[300:500])
    np.testing.assert_allclose(proba, np.exp(weighted - scores[:, None]), atol=1e-12)


def test_sample_shapes_and_labels(config: dict, data: np.ndarray) -> None:
    gmm = make(config)
    feed(gmm, data[:300], 100)
    X, labels = gmm.sample(500, random_state=0)
    assert X.shape == (500, D) and labels.shape == (500,)
    assert set(np.unique(labels)) <= set(range(K))
    again, _ = gmm.sample(500, random_state=0)
    np.testing.assert_array_equal(X, again)


@pytest.mark.parametrize("kind", ["full", "diag", "spherical"])
def test_from_params_round_trip(kind: str) -> None:
    """``from_params`` returns its parameters: covariances are taken floor included."""
    mix = Mixture.random(K, D, random_state=4)
    covs = KINDS[kind].from_full(mix.covariances)
    gmm = OnlineGMM.from_params(2.0 * mix.weights, mix.means, covs, covariance_type=kind,
                                reg_covar=1e-4)
    np.testing.assert_allclose(gmm.weights_, mix.weights, rtol=1e-12)
    np.testing.assert_allclose(gmm.means_, mix.means, rtol=1e-12)
    # Only the relative floor (RELATIVE_FLOOR of the largest variance) comes on top.
    np.testing.assert_allclose(gmm.covariances_, covs, rtol=1e-8)
    again = OnlineGMM.from_params(gmm.weights_, gmm.means_, gmm.covariances_,
                                  covariance_type=kind, reg_covar=1e-4)
    np.testing.assert_allclose(again.covariances_, gmm.covariances_, rtol=1e-8)
    assert gmm.initialized_ and gmm.n_seen_ == 0 and gmm.n_components == K
    assert np.isfinite(gmm.anomaly_threshold_)
    X, _ = mix.sample(10, random_state=0)
    assert not gmm.partial_fit(X).warmup.any()


# ---------------------------------------------------------------- warm-up flags and resets
@pytest.mark.parametrize("batch", [1, 7, 60, 250])
def test_exactly_the_warm_up_points_are_marked_and_never_flagged(
    data: np.ndarray, batch: int
) -> None:
    gmm = OnlineGMM(K, warmup=WARMUP, anomaly_rate=0.2, random_state=0)
    flags = joined(feed(gmm, data[:400], batch))
    np.testing.assert_array_equal(flags["warmup"], np.arange(400) < WARMUP)
    assert not flags["anomaly"][:WARMUP].any()
    assert flags["anomaly"][WARMUP:].any(), "anomaly_rate=0.2 must flag some points"


def test_default_warm_up_length() -> None:
    assert OnlineGMM(8).warmup_ == 1000
    gmm = OnlineGMM(8)
    gmm.partial_fit(np.zeros((1, 20)))
    assert gmm.warmup_ == 1600


def test_resets_and_history_are_consistent(config: dict) -> None:
    """A starved fourth component forces a reset; counts are non-negative ints, history bounded."""
    mix = Mixture.random(K, D, random_state=0)
    kind = KINDS[config["covariance_type"]]
    weights = np.append(mix.weights, 1e-4)
    means = np.vstack([mix.means, [[50.0, 50.0]]])
    covs = kind.from_full(np.concatenate([mix.covariances, np.eye(D)[None]]))
    gmm = OnlineGMM.from_params(weights, means, covs, warmup=100, random_state=0, **config)
    feed(gmm, mix.sample(CHECK_EVERY + 200, random_state=2)[0], 200)
    assert set(gmm.resets_) == {"weight", "singular", "stranded", "drift", "split", "merge",
                                "reseed"}
    assert all(isinstance(v, int) and v >= 0 for v in gmm.resets_.values())
    total = sum(gmm.resets_.values())
    assert total > 0, "this stream must force at least one reset"
    assert len(gmm.collapse_history_) == min(total, HISTORY_LENGTH)
    for n_seen, k, reason in gmm.collapse_history_:
        assert 0 < n_seen <= gmm.n_seen_ and -1 <= k < 4 and reason in gmm.resets_
    assert [h[0] for h in gmm.collapse_history_] == sorted(h[0] for h in gmm.collapse_history_)


# ---------------------------------------------------------------- degenerate streams
def degenerate_streams() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(6)
    repeated = np.tile([[1.0, 2.0, 3.0]], (3000, 1))
    constant = rng.normal(size=(3000, 3))
    constant[:, 1] = 7.0
    far = rng.normal(size=(3000, 3))
    far[1500] = [1e6, -1e6, 1e6]
    too_many, _ = Mixture.random(2, 3, random_state=1).sample(3000, random_state=2)
    return {"repeated point": (repeated, 4), "constant feature": (constant, 3),
            "one far point": (far, 3), "K larger than true": (too_many, 8)}


@pytest.mark.parametrize("name", list(degenerate_streams()))
def test_degenerate_streams_never_produce_nan(config: dict, name: str) -> None:
    X, n_components = degenerate_streams()[name]
    gmm = OnlineGMM(n_components, warmup=100, random_state=0, **config)
    for i in range(0, len(X), 100):
        assert_valid_result(gmm.partial_fit(X[i : i + 100]), 100, n_components)
    assert_valid_parameters(gmm)
    assert np.isfinite(gmm.anomaly_threshold_)


def test_after_a_stuck_sensor_a_far_point_still_gets_a_distribution() -> None:
    """After a run of one repeated point the components sit on it with covariance reg_covar;
    a point 1e6 away has log p ≈ −5e17, and its responsibilities must still sum to one."""
    gmm = OnlineGMM(2, warmup=100, random_state=0)
    gmm.partial_fit(np.tile([[1.0, 2.0]], (2000, 1)))
    far = np.array([[1.0 + 1e6, 2.0], [1.0 + 1e3, 2.0]])
    np.testing.assert_allclose(gmm.predict_proba(far).sum(axis=1), 1.0, atol=1e-9)
    assert_valid_result(gmm.partial_fit(far), 2, 2)


def test_a_duplicated_feature_at_large_scale_keeps_covariances_definite() -> None:
    """Two identical features of scale 1e5: every covariance is singular before the floor."""
    x = np.random.default_rng(7).normal(0.0, 1e5, size=(2000, 1))
    gmm = OnlineGMM(2, warmup=500, random_state=0)
    for i in range(0, 2000, 100):
        assert_valid_result(gmm.partial_fit(np.hstack([x, x])[i : i + 100]), 100, 2)
    assert_valid_parameters(gmm)
