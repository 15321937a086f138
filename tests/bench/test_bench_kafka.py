"""``streamem bench kafka`` end to end on the test broker, small: it measures both sides."""

from __future__ import annotations

import math

import pytest

from streamem.bench import kafka as bench


@pytest.mark.kafka
def test_bench_measures_both_sides_and_their_latencies(kafka_bootstrap, kafka_client,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(bench, "REPEATS", 1)
    monkeypatch.setattr(bench, "LATENCY_SECONDS", 1.0)
    [result] = bench.run(kafka_bootstrap, n_points=8_000, points_per_message=1,
                         client=kafka_client)
    assert result["row"] == "1 pt/msg, json in, json out"
    for side in ("pass_through", "daemon"):
        r = result[side]
        assert 0 < r["points"] <= 8_000 and r["points_per_s"] > 0
        assert 0 < r["batch_latency_p50_s"] <= r["batch_latency_p99_s"]
        assert 0 < r["e2e_latency_p50_s"] <= r["e2e_latency_p99_s"]
    assert math.isclose(result["ratio"], result["daemon"]["points_per_s"]
                        / result["pass_through"]["points_per_s"])
    linger = "linger_ms=5" if kafka_client == "kafka-python" else "linger.ms=5"
    assert "acks=all" in result["settings"] and linger in result["settings"]
    text = bench.report([result])
    assert kafka_client in text
    assert "daemon / pass-through" in text and "end-to-end p50/p99" in text


@pytest.mark.kafka
def test_bench_measures_exactly_once_beside_at_least_once(kafka_bootstrap, monkeypatch) -> None:
    monkeypatch.setattr(bench, "REPEATS", 1)
    monkeypatch.setattr(bench, "LATENCY_SECONDS", 1.0)
    result = bench.run_delivery(kafka_bootstrap, n_points=8_000, points_per_message=1)
    for side in ("at_least_once", "exactly_once"):
        r = result[side]
        assert 0 < r["points"] <= 8_000 and r["points_per_s"] > 0
        assert 0 < r["batch_latency_p50_s"] <= r["batch_latency_p99_s"]
        assert 0 < r["e2e_latency_p50_s"] <= r["e2e_latency_p99_s"]
    assert math.isclose(result["ratio"], result["exactly_once"]["points_per_s"]
                        / result["at_least_once"]["points_per_s"])
    assert "exactly / at least once" in bench.report_delivery(result)


def test_latencies_are_recorded_at_the_commit_that_covers_each_poll() -> None:
    """A pipelined loop commits a batch after polling the next: each poll's latencies wait
    for the commit that acknowledges it, not the next flush."""
    from streamem.io.memory import MemorySource

    class Timed(bench._Timed, MemorySource):
        pass

    side = bench.Side()
    source = Timed([b"a", b"b", b"c", b"d", b"e"], batch_size=2)
    source.side, source.points_per_message = side, 3
    source.poll(0.0)
    source.poll(0.0)  # the next batch, before the first commits
    source.commit({("memory", 0): 2})
    assert [len(lat) for lat in side.batch_latencies] == [2 * 3]
    source.commit({("memory", 0): 4})
    assert [len(lat) for lat in side.batch_latencies] == [6, 6]
    assert source.commits == [{("memory", 0): 2}, {("memory", 0): 4}]
