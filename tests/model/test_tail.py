"""``Tail``, the model's anomaly bookkeeping: its counts, and its part in a refused step."""

from __future__ import annotations

import copy
import math
from unittest import mock

import numpy as np
import pytest

from streamem import OnlineGMM
from streamem.model.anomaly import tail_keep
from streamem.model.gmm import RECENT_KEEP
from streamem.model.results import ModelRejected
from streamem.model.tail import Tail


def fields(tail: Tail) -> dict[str, object]:
    return {name: getattr(tail, name) for name in Tail.__slots__}


def counting(flag_share: float = 0.01) -> Tail:
    tail = Tail()
    tail.flag_share, tail.window = flag_share, (-12.0, -9.0)
    tail.window_share, tail.window_mass = 0.03, 0.4
    return tail


@pytest.mark.parametrize("log_lik", [-20.0, -12.0, -10.5, -9.0, -3.0])
def test_one_inlier_counts_as_a_batch_of_one_to_the_last_bit(log_lik: float) -> None:
    """The one-point path (``count_inlier``) and the batch path agree exactly."""
    one, batch = counting(), counting()
    one.count_inlier(log_lik, 1e-3, RECENT_KEEP)
    batch.count_flags(RECENT_KEEP, 0, 1)
    batch.count_window(np.array([log_lik]), batch.counted_window(1e-3))
    assert fields(one) == fields(batch)
    assert one.window_mass > 0.4 and one.flag_share < 0.01


def test_no_point_is_counted_in_the_window_while_flags_are_excessive() -> None:
    tail = counting(flag_share=0.5)
    assert tail.excessive(1e-3) and tail.drifting
    assert tail.counted_window(1e-3) == (-math.inf, -math.inf)
    tail.count_window(np.array([-10.5, -10.0]), tail.counted_window(1e-3))
    assert tail.window_share == 0.03 * tail_keep(2)  # decays: nothing counted
    assert tail.window_mass == tail_keep(2) * 0.4 + (1.0 - tail_keep(2))
    assert counting().counted_window(1e-3) == (-12.0, -9.0)


def test_flags_are_reported_below_the_early_floor_only_while_there_is_one() -> None:
    tail = Tail()
    anomaly, log_lik = np.array([True, True, False]), np.array([-50.0, -5.0, -60.0])
    assert tail.early_floor is None
    np.testing.assert_array_equal(tail.reported(anomaly, log_lik), anomaly)
    tail.early = -20.0
    assert tail.early_floor == -20.0
    np.testing.assert_array_equal(tail.reported(anomaly, log_lik), [True, False, False])
    tail.restart()
    assert tail.early_floor is None and tail.window_mass == tail.window_share == 0.0


def test_a_refused_batch_leaves_the_tail_as_it_was() -> None:
    """The tail has counted the batch when its M-step fails: the rollback restores it."""
    X = np.random.default_rng(0).standard_t(3, size=(3000, 2))
    model = OnlineGMM(2, warmup=500, anomaly_rate=0.01, random_state=0)
    model.partial_fit(X[:2500])
    batch = X[2500:]
    learned = copy.deepcopy(model)
    learned.partial_fit(batch)
    before = fields(model._tail)
    assert fields(learned._tail) != before  # the batch changes the tail when it is learned
    with mock.patch.object(OnlineGMM, "_refresh", side_effect=FloatingPointError), \
            pytest.raises(ModelRejected):
        model.partial_fit(batch)
    assert fields(model._tail) == before
    model.partial_fit(batch)
    assert fields(model._tail) == fields(learned._tail)
