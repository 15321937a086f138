"""The provisional input width (``streamem.width``) and the model's warm-up restart it uses."""

from __future__ import annotations

import numpy as np
import pytest

from streamem.model import OnlineGMM
from streamem.width import MIN_VOTES, InputWidth, model_width


def test_a_configured_width_never_changes() -> None:
    width = InputWidth(configured=4)
    assert not width.count([3] * 100) and width.value == 4
    assert not width.provisional(OnlineGMM(2))


def test_another_width_takes_over_once_it_outvotes_the_first() -> None:
    width = InputWidth(configured=None)
    assert not width.count([3, 3]) and width.value == 3
    assert not width.count([4] * (MIN_VOTES - 1)) and width.value == 3  # too few votes
    assert width.count([4]) and width.value == 4
    assert not width.count({3: 3}) and width.value == 4  # 5 against 5: a tie keeps it
    assert width.count({3: 1}) and width.value == 3


def test_the_width_follows_an_initialised_model_only() -> None:
    model, width = OnlineGMM(2, warmup=50, random_state=0), InputWidth(None, resumed=3)
    model.partial_fit(np.zeros((10, 4)) + np.arange(10)[:, None])
    assert width.provisional(model) and not width.follow(model) and width.value == 3
    model.partial_fit(np.random.default_rng(0).normal(size=(60, 4)))
    assert not width.provisional(model)
    assert width.follow(model) and width.value == 4 and model_width(model) == 4


def test_a_warm_up_restarted_on_another_width_learns_it() -> None:
    rng = np.random.default_rng(1)
    model = OnlineGMM(2, warmup=100, random_state=0)
    model.partial_fit(rng.normal(size=(2, 3)))
    model.restart_warm_up()
    assert model_width(model) is None
    X = rng.normal(size=(150, 4))
    result = model.partial_fit(X)
    assert model.initialized_ and model.n_features_in_ == 4
    assert result.warmup[:100].all() and not result.warmup[100:].any()
    reference = OnlineGMM(2, warmup=100, random_state=0)
    reference.partial_fit(X)
    np.testing.assert_allclose(model.means_, reference.means_)
    with pytest.raises(ValueError, match="initialised"):
        model.restart_warm_up()


def test_a_worker_copy_in_warm_up_answers_another_width_as_its_leader_will_learn_it() -> None:
    rng = np.random.default_rng(2)
    shared = OnlineGMM(2, warmup=100, random_state=0)
    shared.partial_fit(rng.normal(size=(2, 3)))
    X = rng.normal(size=(20, 4))
    result, delta = shared.delta(X)
    assert delta.n_features == 4 and len(delta.points) == 20 and result.warmup.all()
    assert model_width(shared) == 3, "the worker's copy of the shared model is left unchanged"
