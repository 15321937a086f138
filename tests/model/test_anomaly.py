"""The anomaly threshold: calibrated on the model itself, independent of the stream's outliers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from streamem import OnlineGMM
from streamem.model.anomaly import (
    TAIL_HALFLIFE,
    _newton,
    anomaly_threshold,
    calibrated_threshold,
    early_floor,
    inlier_flag_rate,
    window_levels,
)
from streamem.model.covariance import LOG_2PI
from streamem.synthetic import Mixture, Stream

N_SAMPLES = 200_000


@pytest.fixture(scope="module")
def separated() -> Mixture:
    return Mixture.random(3, 2, separation=12.0, random_state=0)


def model_of(mix: Mixture, **kwargs) -> OnlineGMM:
    return OnlineGMM.from_params(mix.weights, mix.means, mix.covariances, random_state=0,
                                 **kwargs)


@pytest.mark.parametrize("d", [1, 3, 8])
@pytest.mark.parametrize("rate", [1e-3, 0.05])
def test_single_gaussian_threshold_is_the_chi2_quantile(d: int, rate: float) -> None:
    """One component: t = log peak − ½ χ²_d.isf(rate)."""
    log_det_prec = np.array([-0.3 * d])
    t = anomaly_threshold(np.array([1.0]), log_det_prec, d, rate)
    log_peak = -0.5 * d * LOG_2PI + log_det_prec[0]
    assert t == pytest.approx(log_peak - 0.5 * chi2.isf(rate, d), abs=1e-5)


@pytest.mark.parametrize("rate", [1e-3, 1e-2, 0.05])
def test_flags_own_samples_at_the_anomaly_rate(separated: Mixture, rate: float) -> None:
    gmm = model_of(separated, anomaly_rate=rate)
    X, _ = gmm.sample(N_SAMPLES, random_state=1)
    share = float(np.mean(gmm.score_samples(X) < gmm.anomaly_threshold_))
    tolerance = 4.0 * np.sqrt(rate * (1.0 - rate) / N_SAMPLES)
    assert abs(share - rate) < tolerance


def test_overlapping_components_flag_at_most_the_rate() -> None:
    """Where components overlap, the threshold is a bound: inliers flagged at most at the rate."""
    rate = 0.01
    covs = np.stack([np.eye(2), np.diag([4.0, 0.5])])
    gmm = OnlineGMM.from_params([0.5, 0.5], [[0.0, 0.0], [0.5, 0.0]], covs, anomaly_rate=rate)
    X, _ = gmm.sample(N_SAMPLES, random_state=2)
    share = float(np.mean(gmm.score_samples(X) < gmm.anomaly_threshold_))
    assert share < rate + 4.0 * np.sqrt(rate * (1.0 - rate) / N_SAMPLES)
    assert share > 0.0


def test_threshold_is_monotone_in_the_rate(separated: Mixture) -> None:
    rates = [1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    thresholds = [model_of(separated, anomaly_rate=r).anomaly_threshold_ for r in rates]
    assert np.all(np.diff(thresholds) > 0)


def test_threshold_depends_on_parameters_only(separated: Mixture) -> None:
    """Two models from the same parameters have the same threshold, whatever their seed."""
    a = model_of(separated, anomaly_rate=1e-3)
    b = OnlineGMM.from_params(separated.weights, separated.means, separated.covariances,
                              anomaly_rate=1e-3, random_state=7)
    assert a.anomaly_threshold_ == b.anomaly_threshold_
    assert np.isfinite(a.anomaly_threshold_)


def test_threshold_does_not_move_with_the_outlier_share(separated: Mixture) -> None:
    """From a converged start, streams with 0 % and 5 % outliers end with close thresholds.

    ``anomaly_rate`` = 0.5 % keeps 5 % of flagged points within the share the model treats as
    scattered anomalies (see ``OnlineGMM.protecting_``), so the outliers stay out of the fit.
    """
    thresholds, flagged = [], []
    for share in (0.0, 0.05):
        gmm = model_of(separated, anomaly_rate=5e-3, warmup=2000)
        n_flagged = 0
        for i, (X, _) in enumerate(Stream(separated, outlier_share=share).batches(500, 3)):
            n_flagged += int(gmm.partial_fit(X).anomaly.sum())
            if i == 39:
                break
        thresholds.append(gmm.anomaly_threshold_)
        flagged.append(n_flagged / 20_000)
    assert abs(thresholds[0] - thresholds[1]) < 0.15
    assert abs(thresholds[0] - model_of(separated, anomaly_rate=5e-3).anomaly_threshold_) < 0.15
    assert flagged[1] > flagged[0] + 0.03, "the outliers must actually be flagged"


def test_newton_from_a_nearby_threshold_finds_the_bracketed_root() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        k, d = int(rng.integers(1, 20)), int(rng.integers(1, 40))
        weights = rng.dirichlet(np.full(k, rng.uniform(0.1, 3.0)))
        log_det, rate = rng.normal(0.0, 3.0, k), 10 ** rng.uniform(-5, -1)
        bracketed = anomaly_threshold(weights, log_det, d, rate)
        nearby = bracketed + rng.normal(0.0, 2.0)
        for start in (nearby, bracketed - 50.0, bracketed + 50.0):
            assert anomaly_threshold(weights, log_det, d, rate, start=start) == pytest.approx(
                bracketed, abs=2e-6)
        # from a nearby start Newton itself settles there (not the bracketing fallback)
        log_peak = np.log(weights) - 0.5 * d * LOG_2PI + log_det
        found = _newton(nearby, float(log_peak.max()), log_peak, weights, d, np.log(rate))
        assert found == pytest.approx(bracketed, abs=2e-6)


def window_share(log_lik: np.ndarray, p, rate: float) -> float:
    lo, hi = (anomaly_threshold(p.weights, p.log_det, 2, level) for level in window_levels(rate))
    return float(np.mean((log_lik >= lo) & (log_lik < hi)))


def test_the_models_own_samples_show_no_tail_inflation(separated: Mixture) -> None:
    gmm = model_of(separated, anomaly_rate=1e-3)
    p = gmm._fitted()
    log_lik = gmm.score_samples(gmm.sample(100_000, random_state=4)[0])
    t, f = calibrated_threshold(window_share(log_lik, p, 1e-3), 1.0, p.weights, p.log_det, 2,
                                1e-3, gmm.anomaly_threshold_)
    assert 1.0 <= f < 1.15
    assert t == pytest.approx(gmm.anomaly_threshold_, abs=0.15)


def test_an_inflated_tail_lowers_the_threshold_to_rate_over_inflation(separated: Mixture) -> None:
    """Three times the predicted share in the window: the bound is solved for rate / 3."""
    rate = 1e-3
    gmm = model_of(separated, anomaly_rate=rate)
    p = gmm._fitted()
    log_lik = gmm.score_samples(gmm.sample(100_000, random_state=5)[0])
    share = 3.0 * window_share(log_lik, p, rate)
    t, f = calibrated_threshold(share, 1.0, p.weights, p.log_det, 2, rate,
                                gmm.anomaly_threshold_)
    assert f == pytest.approx(3.0, rel=0.15)  # less 3 standard errors of the observed share
    assert t < gmm.anomaly_threshold_
    log_peak = np.log(p.weights) - LOG_2PI + p.log_det
    assert inlier_flag_rate(t, log_peak, p.weights, 2) == pytest.approx(rate / f, rel=1e-4)
    # the average is normalised by its mass; fewer points leave more of the excess as noise,
    # too few to tell none of it
    assert 1.5 < calibrated_threshold(0.5 * share, 0.5, p.weights, p.log_det, 2, rate,
                                      gmm.anomaly_threshold_)[1] < f
    assert calibrated_threshold(share * 1e-3, 1e-3, p.weights, p.log_det, 2, rate,
                                gmm.anomaly_threshold_)[1] == 1.0
    assert TAIL_HALFLIFE * 1e-3 < 100


def test_flags_far_above_the_rate_tell_the_fit_is_poor() -> None:
    """Student-t data (2 degrees of freedom): the Gaussian tail is far too light."""
    rng = np.random.default_rng(6)
    heavy = OnlineGMM(3, random_state=0)
    for _ in range(40):
        heavy.partial_fit(rng.standard_t(2, size=(1000, 3)))
    assert heavy.fit_poor_ and heavy.flag_excess_ > 5
    gaussian = OnlineGMM(3, random_state=0)
    for _ in range(40):
        gaussian.partial_fit(rng.normal(size=(1000, 3)))
    assert not gaussian.fit_poor_ and gaussian.flag_excess_ < 3


def heavy_stream(n: int, seed: int) -> np.ndarray:
    """Two clusters of Student-t points (3 degrees of freedom) in 4 dimensions, (n, 4)."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(3, size=(n, 4)) + np.where(rng.random((n, 1)) < 0.5, 0.0, 12.0)


def test_early_reports_wait_for_the_tail_to_be_measured() -> None:
    """Right after warm-up the bound flags heavy-tailed inliers far above the rate; until the
    tail is measured only points below the warm-up's out-of-sample floor too are reported."""
    rate = 1e-3
    gmm = OnlineGMM(2, anomaly_rate=rate, warmup=1000, random_state=0)
    gmm.partial_fit(heavy_stream(1000, 1))
    threshold, floor = gmm.anomaly_threshold_, gmm.early_floor_
    assert floor is not None and floor < threshold
    res = gmm.partial_fit(heavy_stream(1500, 2))  # too few points to measure the tail
    below = res.log_likelihood < threshold
    assert below.mean() > 5 * rate, "the unchecked bound flags inliers far above the rate"
    assert res.anomaly.mean() <= 2 * rate
    np.testing.assert_array_equal(res.anomaly, below & (res.log_likelihood < floor))
    assert OnlineGMM.from_bytes(gmm.to_bytes()).early_floor_ == gmm.early_floor_
    for seed in range(3, 8):  # 5 000 points later the floor is over: the threshold alone
        gmm.partial_fit(heavy_stream(1000, seed))
    assert gmm.early_floor_ is None
    threshold = gmm.anomaly_threshold_
    res = gmm.partial_fit(heavy_stream(1000, 8))
    np.testing.assert_array_equal(res.anomaly, res.log_likelihood < threshold)


def test_far_outliers_are_reported_from_the_first_batch_after_warm_up() -> None:
    X = heavy_stream(1300, 9)
    X[1100:1110] = 1e3
    gmm = OnlineGMM(2, warmup=1000, random_state=0)
    res = gmm.partial_fit(X)
    assert gmm.early_floor_ is not None
    assert res.anomaly[1100:1110].all()


def test_a_wild_point_in_the_warm_up_does_not_sink_the_early_floor() -> None:
    """A point at 1e15 among the warm-up is left out of the floor, as out of the fit: with it,
    the floor sat at its depth (~-1e30), and no far outlier was reported until the tail was
    measured."""
    X = heavy_stream(1300, 9)
    X[1100:1110] = 1e3
    X[500] = 1e15
    gmm = OnlineGMM(2, warmup=1000, random_state=0)
    res = gmm.partial_fit(X)
    assert gmm.early_floor_ is not None and gmm.early_floor_ > -1e3
    assert res.anomaly[1100:1110].all()


def test_a_model_without_warm_up_points_has_no_early_floor(separated: Mixture) -> None:
    assert model_of(separated).early_floor_ is None


def test_the_early_floor_is_the_rate_quantile_and_anomalies_only_lower_it() -> None:
    rng = np.random.default_rng(10)
    scores = rng.normal(size=1000)
    assert early_floor(scores, 1e-3) == scores.min()
    assert early_floor(scores, 1e-2) == np.sort(scores)[9]
    contaminated = np.concatenate([scores, np.full(20, -50.0)])
    assert early_floor(contaminated, 1e-3) == -50.0 < early_floor(scores, 1e-3)
    assert early_floor(np.array([np.nan, 0.0]), 1e-3) == -1e300
    assert early_floor(np.array([-np.inf, 0.0]), 1e-3) == -1e300
    assert early_floor(np.empty(0), 1e-3) == -np.inf
