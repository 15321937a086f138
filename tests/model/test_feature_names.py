"""Data frames, as a scikit-learn pipeline passes them: ``feature_names_in_`` and its checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamem import OnlineGMM
from streamem.synthetic import Mixture

pd = pytest.importorskip("pandas")  # a dev dependency: CI installs it, so this never skips there

MIX = Mixture.random(3, 4, random_state=0)
X, _ = MIX.sample(1500, random_state=1)
FRAME = pd.DataFrame(X, columns=["a", "b", "c", "d"])


@pytest.mark.parametrize("learn", ["fit", "partial_fit"])
def test_a_data_frame_fixes_the_feature_names(learn: str) -> None:
    model = OnlineGMM(3, random_state=0)
    getattr(model, learn)(FRAME)
    assert model.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same names: no warning
        model.predict(FRAME)
        model.partial_fit(FRAME.iloc[:5])
        model.partial_fit(FRAME.iloc[:1])


def test_other_names_are_refused_and_missing_ones_warned() -> None:
    model = OnlineGMM(3, random_state=0).fit(FRAME)
    renamed = FRAME.rename(columns={"a": "z"})
    for call in (model.predict, model.score_samples, model.partial_fit):
        with pytest.raises(ValueError, match="unseen at fit time: z"):
            call(renamed)
    with pytest.raises(ValueError, match="same order"):
        model.predict(FRAME[["b", "a", "c", "d"]])
    for points in (X[:3], X[:1]):  # an array after a data frame: a warning, as scikit-learn
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            model.partial_fit(points)
    unnamed = OnlineGMM(3, random_state=0).fit(X)
    assert not hasattr(unnamed, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        unnamed.predict(FRAME)


def test_numbered_columns_are_no_names_and_a_refit_forgets_them() -> None:
    model = OnlineGMM(3, random_state=0).fit(pd.DataFrame(X))  # integer columns: no names
    assert not hasattr(model, "feature_names_in_")
    model.fit(FRAME)
    assert hasattr(model, "feature_names_in_")
    model.fit(X)
    assert not hasattr(model, "feature_names_in_")


def test_a_refused_first_batch_fixes_no_names() -> None:
    model = OnlineGMM(3, random_state=0)
    bad = FRAME.iloc[:10].copy()
    bad.iloc[3, 1] = np.nan
    with pytest.raises(ValueError):
        model.partial_fit(bad)
    assert not hasattr(model, "feature_names_in_")
    model.partial_fit(pd.DataFrame(X, columns=["p", "q", "r", "s"]))
    assert model.feature_names_in_.tolist() == ["p", "q", "r", "s"]


def test_names_survive_pickling() -> None:
    import pickle

    model = OnlineGMM(3, random_state=0).fit(FRAME)
    again = pickle.loads(pickle.dumps(model))
    assert again.feature_names_in_.tolist() == model.feature_names_in_.tolist()
    with pytest.raises(ValueError):
        again.predict(FRAME.rename(columns={"d": "e"}))
