"""``streamem bench engine``'s timing: each call's fastest round, summed (no timed assertion)."""

from __future__ import annotations

import dataclasses

import numpy as np

from streamem.bench import engine


def test_each_call_keeps_its_fastest_round_and_the_sides_take_turns() -> None:
    """A call preempted in one round is taken from another; one slow in every round stays."""
    order: list[str] = []
    rounds = iter([np.array([1.0, 9.0, 5.0]), np.array([2.0, 1.0, 5.0]), np.array([3.0, 3.0, 6.0])])

    def ours() -> np.ndarray:
        order.append("ours")
        return next(rounds)

    def theirs() -> np.ndarray:
        order.append("theirs")
        return np.array([4.0])

    assert engine.fastest_calls([ours, theirs], repeats=3) == [1.0 + 1.0 + 5.0, 4.0]
    assert order == ["ours", "theirs"] * 3


def test_timed_gives_one_duration_per_call_in_order() -> None:
    calls: list[int] = []
    times = engine.timed([lambda: calls.append(1), lambda: calls.append(2)])
    assert calls == [1, 2] and times.shape == (2,) and (times >= 0).all()


def test_a_small_run_reports_every_row() -> None:
    results = engine.run(sizes=[(3, 2)], n_points=3000, batch=1000, repeats=2)
    (r,) = results
    assert r.streamem_points_s > 0 and r.sklearn_point_iterations_s > 0
    assert r.point_fit_us > 0 and r.point_predict_us > 0
    assert r.point_fit_compiled_us is not None and r.point_fit_compiled_us > 0  # numba: dev
    text = engine.report(results, "1")
    assert "one point per call" in text and "   3    2" in text and "compiled" in text
    assert "n/a" not in text.split("one point per call")[1].split("\n", 1)[1]


def test_without_numba_the_compiled_column_says_why(monkeypatch) -> None:
    result = engine.EngineResult(8, 8, 1e5, 1e5, 10.0, (1, 1), 40.0, None, 10.0, 20.0)
    monkeypatch.setattr(engine.kernel, "why_not", "numba is not installed (pip install x)")
    text = engine.report([result], "1")
    assert "40.0 (2.00x)" in text and "n/a" in text and "numba is not installed" in text
    with_kernel = engine.report([dataclasses.replace(result, point_fit_compiled_us=10.0)], "1")
    assert "10.0 (0.50x)" in with_kernel and "numba is not installed" not in with_kernel
