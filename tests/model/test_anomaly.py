"""The anomaly threshold: calibrated on the model itself, independent of the stream's outliers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from streamem import OnlineGMM
from streamem.model.anomaly import _newton, anomaly_threshold
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
