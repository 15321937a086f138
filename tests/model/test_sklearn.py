"""``OnlineGMM`` as a scikit-learn estimator: its own checks and the tools built on them.

scikit-learn is a development dependency only; the model never imports it at import time.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamem.errors import NotFittedError
from streamem.model import OnlineGMM
from streamem.model.covariance import KINDS
from streamem.model.estimator import sklearn_tags
from streamem.synthetic import Mixture

COVARIANCE_TYPES = ("full", "diag", "spherical")
#: Checks that are allowed to fail, with the reason. None: every check passes.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def expected_failed_checks(estimator: OnlineGMM) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks(
    [OnlineGMM(covariance_type=c, random_state=0) for c in COVARIANCE_TYPES],
    expected_failed_checks=expected_failed_checks, xfail_strict=True,
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scikit_learn_estimator_checks(estimator: OnlineGMM, check) -> None:
    if "check_array_api_input" in str(check) and not os.environ.get("SCIPY_ARRAY_API"):
        # scipy reads SCIPY_ARRAY_API once, at import: run this check in a fresh interpreter
        # rather than letting it skip itself.
        _check_array_api_in_subprocess(estimator.covariance_type)
        return
    check(estimator)


def _check_array_api_in_subprocess(covariance_type: str) -> None:
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from streamem.model import OnlineGMM\n"
        f"est = OnlineGMM(covariance_type={covariance_type!r}, random_state=0)\n"
        "check_array_api_input('OnlineGMM', est, array_namespace='numpy')\n"
        "print('checked')\n"
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr[-2000:]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Three clusters on very different feature scales, and held-out points."""
    mix = Mixture.random(3, 4, random_state=0)
    X, _ = mix.sample(1500, random_state=1)
    held_out, _ = mix.sample(500, random_state=2)
    scale = np.array([1.0, 100.0, 0.01, 1e4])
    return X * scale, held_out * scale


# ---------------------------------------------------------------- parameters and clone
def test_get_params_and_set_params_round_trip() -> None:
    gmm = OnlineGMM(3, covariance_type="diag", halflife=None)
    params = gmm.get_params(deep=True)
    assert params == gmm.get_params(deep=False)
    assert params["n_components"] == 3 and params["halflife"] is None
    assert gmm.set_params(n_components=5, tol=0.1) is gmm
    assert gmm.get_params()["n_components"] == 5 and gmm.tol == 0.1
    with pytest.raises(ValueError, match="Invalid parameter 'n_clusters'"):
        gmm.set_params(n_clusters=2)


def test_clone_is_an_unfitted_copy_with_the_same_parameters(data) -> None:
    X, _ = data
    gmm = OnlineGMM(3, warmup=200, random_state=0).fit(X)
    copy = clone(gmm)
    assert copy.get_params() == gmm.get_params()
    assert not hasattr(copy, "n_features_in_") and copy.n_seen_ == 0
    with pytest.raises(SklearnNotFittedError):
        copy.predict(X)


@pytest.mark.parametrize(("name", "value"), [("max_iter", 0), ("max_iter", 2.5), ("tol", -1.0),
                                              ("tol", np.inf), ("n_components", "3")])
def test_bad_parameters_fail_at_fit_not_before(name: str, value: object, data) -> None:
    gmm = OnlineGMM(**{name: value})
    gmm.set_params(**{name: value})
    with pytest.raises(ValueError, match=name):
        gmm.fit(data[0])


def test_changing_the_structure_of_a_learning_model_asks_for_fit(data) -> None:
    X, _ = data
    gmm = OnlineGMM(3, warmup=200, random_state=0)
    gmm.partial_fit(X[:300])
    gmm.set_params(n_components=4)
    with pytest.raises(ValueError, match="call fit"):
        gmm.partial_fit(X[300:400])
    gmm.fit(X)
    assert gmm.weights_.shape == (4,)
    gmm.set_params(anomaly_rate=0.01)  # not structural: learning goes on
    gmm.partial_fit(X[:10])


# ---------------------------------------------------------------- fit
def test_fit_starts_over_and_is_reproducible(data) -> None:
    X, held_out = data
    fresh = OnlineGMM(3, warmup=200, random_state=0).fit(X)
    used = OnlineGMM(3, warmup=200, random_state=0)
    used.partial_fit(X[::-1][:700])
    used.fit(X)
    np.testing.assert_array_equal(used.predict_proba(held_out), fresh.predict_proba(held_out))
    assert used.n_iter_ == fresh.n_iter_ and 1 <= fresh.n_iter_ <= fresh.max_iter
    assert fresh.n_features_in_ == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_reaches_batch_em_quality(seed: int) -> None:
    """Passes of online EM end near scikit-learn's batch EM on held-out points."""
    mix = Mixture.random(3, 4, random_state=seed)
    X, held_out = mix.sample(3000, random_state=1)[0], mix.sample(1000, random_state=2)[0]
    ours = OnlineGMM(3, warmup=200, random_state=0, max_iter=20).fit(X)
    theirs = GaussianMixture(3, random_state=0).fit(X)
    assert ours.converged_
    assert ours.score(held_out) > theirs.score(held_out) - 0.01


def test_fit_on_fewer_points_than_the_warm_up_initialises_on_all_of_them(data) -> None:
    X, _ = data
    gmm = OnlineGMM(3, random_state=0).fit(X[:300])  # default warm-up: 1000 points
    assert gmm.initialized_ and not gmm.partial_fit(X[300:310]).warmup.any()


def test_fit_predict_is_fit_then_predict(data) -> None:
    X, _ = data
    labels = OnlineGMM(3, warmup=200, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(labels,
                                  OnlineGMM(3, warmup=200, random_state=0).fit(X).predict(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_and_aic_count_parameters_as_scikit_learn(covariance_type: str, data) -> None:
    X, held_out = data
    ours = OnlineGMM(3, covariance_type, warmup=200, random_state=0).fit(X)
    theirs = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    n, p = len(held_out), theirs._n_parameters()
    assert ours.bic(held_out) == pytest.approx(-2 * ours.score(held_out) * n + p * np.log(n))
    assert ours.aic(held_out) == pytest.approx(-2 * ours.score(held_out) * n + 2 * p)


def test_bic_prefers_the_true_number_of_components(data) -> None:
    X, held_out = data
    bic = {k: OnlineGMM(k, warmup=200, random_state=0).fit(X).bic(held_out) for k in (1, 3)}
    assert bic[3] < bic[1]


# ---------------------------------------------------------------- partial_fit
def test_partial_fit_ignores_y_and_takes_the_learning_rate_by_keyword_only(data) -> None:
    X, _ = data
    a, b = OnlineGMM(3, warmup=200, random_state=0), OnlineGMM(3, warmup=200, random_state=0)
    for i in range(0, 600, 100):
        ra, rb = a.partial_fit(X[i : i + 100]), b.partial_fit(X[i : i + 100], np.ones(100))
        np.testing.assert_array_equal(ra.responsibilities, rb.responsibilities)
    with pytest.raises(TypeError):
        a.partial_fit(X[:10], None, 0.5)  # type: ignore[misc]
    a.partial_fit(X[:10], learning_rate=0.5)
    assert a.learning_rate_ == 0.5


# ---------------------------------------------------------------- in scikit-learn's tools
def test_in_a_pipeline_after_a_scaler(data) -> None:
    X, held_out = data
    pipe = make_pipeline(StandardScaler(), OnlineGMM(3, warmup=200, random_state=0)).fit(X)
    gmm = pipe[-1]
    scaled = pipe[0].transform(held_out)
    np.testing.assert_array_equal(pipe.predict(held_out), gmm.predict(scaled))
    assert pipe.score(held_out) == pytest.approx(gmm.score(scaled))
    assert gmm.n_features_in_ == 4


def test_grid_search_picks_by_held_out_log_likelihood(data) -> None:
    X, _ = data
    search = GridSearchCV(
        make_pipeline(StandardScaler(), OnlineGMM(warmup=200, random_state=0)),
        {"onlinegmm__n_components": [1, 3], "onlinegmm__covariance_type": ["full", "spherical"]},
        cv=3,
    ).fit(X)
    assert search.best_params_ == {"onlinegmm__n_components": 3,
                                   "onlinegmm__covariance_type": "full"}
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and scores.max() == search.best_score_


# ---------------------------------------------------------------- pickle and joblib
def _continuation(model: OnlineGMM, X: np.ndarray) -> list[np.ndarray]:
    """Everything the model answers and becomes while it learns from X."""
    out = [model.predict_proba(X[:50])]
    for i in range(0, 400, 40):
        r = model.partial_fit(X[i : i + 40])
        out += [r.responsibilities, r.log_likelihood, r.anomaly, r.warmup]
    return out + [model.means_, model.covariances_, np.array([model.n_seen_, model.version_])]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("seen", [100, 700])  # during and after the warm-up
def test_pickle_and_joblib_continue_the_same_trajectory(covariance_type: str, seen: int,
                                                        data) -> None:
    X, held_out = data
    original = OnlineGMM(3, covariance_type, warmup=200)  # a seed drawn when learning starts
    original.partial_fit(X[:seen])
    buffer = io.BytesIO()
    joblib.dump(original, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(original)), joblib.load(buffer)]
    rest = np.concatenate([X[seen:], held_out])
    expected = _continuation(original, rest)
    for copy in copies:
        assert copy.get_params() == original.get_params()
        for got, want in zip(_continuation(copy, rest), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_the_covariance_kinds_pickle() -> None:
    """Every function in the table is module-level: a kind pickles by reference."""
    for name, kind in KINDS.items():
        assert pickle.loads(pickle.dumps(kind)) == kind, name


# ---------------------------------------------------------------- before fitting, bad input
def test_before_fitting() -> None:
    gmm = OnlineGMM(2)
    assert not hasattr(gmm, "n_features_in_") and not hasattr(gmm, "means_")
    assert gmm.n_seen_ == 0 and gmm.version_ == 0 and not gmm.initialized_
    assert vars(gmm).keys() == set(gmm.get_params())
    for method in (gmm.predict, gmm.predict_proba, gmm.score_samples, gmm.score, gmm.bic):
        with pytest.raises(NotFittedError, match="not fitted"):
            method(np.zeros((3, 2)))


@pytest.mark.parametrize(("X", "error", "message"), [
    (np.ones((5, 2)) + 1j, ValueError, "Complex data not supported"),
    (np.zeros((0, 2)), ValueError, r"0 point\(s\)"),
    (np.zeros((5, 0)), ValueError, r"0 feature\(s\)"),
    (sparse.csr_array(np.ones((5, 2))), TypeError, "sparse input is not supported"),
    (np.array([[1.0, {}]], dtype=object), TypeError, "must be a string or a real number"),
])
def test_bad_input_is_refused_by_fit_and_by_prediction(X, error, message, data) -> None:
    with pytest.raises(error, match=message):
        OnlineGMM(2).fit(X)
    fitted = OnlineGMM(2, warmup=50, random_state=0).fit(data[0][:100, :2])
    with pytest.raises(error, match=message):
        fitted.predict(X)


def test_tags_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(OnlineGMM().__sklearn_tags__(), Tags)
    monkeypatch.setitem(sys.modules, "sklearn.utils", None)  # import fails as if absent
    tags = sklearn_tags("density_estimator")
    assert not isinstance(tags, Tags)
    assert tags.estimator_type == "density_estimator" and tags.requires_fit
    assert tags.target_tags.required is False and tags.input_tags.allow_nan is False


def test_importing_the_model_does_not_import_scikit_learn() -> None:
    code = ("import sys, numpy as np; from streamem.model import OnlineGMM; "
            "g = OnlineGMM(2, warmup=20, random_state=0); g.partial_fit(np.random.rand(50, 2)); "
            "g.get_params(); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
