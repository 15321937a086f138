"""``streamem produce`` against the real broker: counts, keys, formats, drift, pacing, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from kafka_helpers import consume_all, free_port

from streamem import cli, formats
from streamem.commands.produce import (
    KafkaSender,
    ProduceSettings,
    TokenBucket,
    encode_messages,
    produce,
)

COMPOSE_FLAGS = ["--rate", "2000", "--drift-every", "60", "--outlier-share", "0.01"]


def run_produce(capsys, bootstrap: str, topic: str, *flags: str) -> str:
    assert cli.main(["produce", "--bootstrap-servers", bootstrap, "--topic", topic,
                     *flags]) == 0
    return capsys.readouterr().out


def test_json_points_one_per_message_keyed_by_id(kafka_bootstrap, topic_factory, capsys) -> None:
    topic = topic_factory("produce-json")
    before_ms = time.time() * 1000
    out = run_produce(capsys, kafka_bootstrap, topic, "--points", "300", "--features", "3",
                      "--seed", "7")
    assert f"produced 300 points in 300 messages to {topic}" in out and "seed 7" in out
    records = consume_all(kafka_bootstrap, topic, 300)
    assert len(records) == 300
    assert [r.key for r in records] == [str(i).encode() for i in range(300)]
    for i, rec in enumerate(records):
        points = formats.decode(rec.value, "json", 3)
        assert points.ids == [i] and not points.multi
        assert points.ts_ms is not None and points.ts_ms[0] == rec.timestamp
        assert before_ms - 1000 <= rec.timestamp <= time.time() * 1000 + 1000


def test_block_messages_carry_several_points(kafka_bootstrap, topic_factory, capsys) -> None:
    topic = topic_factory("produce-block")
    out = run_produce(capsys, kafka_bootstrap, topic, "--points", "1000", "--format", "block",
                      "--points-per-message", "100", "--features", "2")
    assert "produced 1,000 points in 10 messages" in out
    records = consume_all(kafka_bootstrap, topic, 10)
    assert [r.key for r in records] == [str(i).encode() for i in range(0, 1000, 100)]
    ids = []
    for rec in records:
        points = formats.decode(rec.value, "block", 2)
        assert points.multi and points.X.shape == (100, 2)
        ids += points.ids
    assert ids == list(range(1000))


@pytest.mark.parametrize("fmt", ["f32", "f64"])
def test_raw_vectors_without_keys(kafka_bootstrap, topic_factory, capsys, fmt: str) -> None:
    topic = topic_factory(f"produce-{fmt}")
    run_produce(capsys, kafka_bootstrap, topic, "--points", "50", "--format", fmt,
                "--features", "6", "--key-by", "none")
    records = consume_all(kafka_bootstrap, topic, 50)
    assert len(records) == 50 and all(r.key is None for r in records)
    X = np.concatenate([formats.decode(r.value, fmt, 6).X for r in records])
    assert X.shape == (50, 6) and np.isfinite(X).all() and X.std() > 0


def test_drift_switches_to_a_new_mixture_and_the_rate_is_honoured(kafka_bootstrap,
                                                                  topic_factory) -> None:
    topic = topic_factory("produce-drift")
    settings = ProduceSettings(topic, seconds=2.6, rate=2000, drift_every=1.0,
                               outlier_share=0.0, seed=3, format="json",
                               points_per_message=10)
    sender = KafkaSender({"bootstrap_servers": [kafka_bootstrap]}, topic)
    try:
        report = produce(settings, sender)
    finally:
        sender.close()
    assert len(report.regimes) == 3
    assert [r.first_point for r in report.regimes][0] == 0
    # Not grossly faster than asked: 2.6 s at 2000 points/s.
    assert report.points <= 2000 * 2.6 + 200
    records = consume_all(kafka_bootstrap, topic, report.messages)
    X = np.concatenate([formats.decode(r.value, "json", 4).X for r in records])
    assert len(X) == report.points
    span_s = (records[-1].timestamp - records[0].timestamp) / 1000
    assert span_s >= 0.8 * report.points / 2000
    bounds = [r.first_point for r in report.regimes] + [len(X)]
    for i, regime in enumerate(report.regimes):
        own = X[bounds[i]:bounds[i + 1]]
        assert len(own) > 100
        score = regime.mixture.score_samples(own).mean()
        for j, other in enumerate(report.regimes):
            if j != i:
                assert score > other.mixture.score_samples(own).mean() + 5


def test_pacing_of_the_command(kafka_bootstrap, topic_factory, capsys) -> None:
    topic = topic_factory("produce-rate")
    started = time.monotonic()
    out = run_produce(capsys, kafka_bootstrap, topic, "--points", "3000", "--rate", "1500",
                      "--points-per-message", "5")
    assert time.monotonic() - started >= 1.5  # 2 s of points, less a burst
    assert "produced 3,000 points in 600 messages" in out


def test_sigterm_stops_cleanly_after_every_send_is_acknowledged(kafka_bootstrap,
                                                                topic_factory) -> None:
    topic = topic_factory("produce-endless")
    proc = subprocess.Popen([sys.executable, "-m", "streamem", "produce", "--bootstrap-servers",
                             kafka_bootstrap, "--topic", topic, *COMPOSE_FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = consume_all(kafka_bootstrap, topic, 2000, timeout_s=60)
    assert len(records) >= 2000  # it is running and writing
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    produced = int(out.split("produced ")[1].split(" points")[0].replace(",", ""))
    assert produced >= 2000
    assert len(consume_all(kafka_bootstrap, topic, produced, timeout_s=60)) == produced


def test_bad_usage_and_unreachable_broker(capsys, monkeypatch) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["produce", "--bootstrap-servers", "kafka:9092", "--topic",
                              "streamem.points", *COMPOSE_FLAGS])
    assert (args.rate, args.drift_every, args.outlier_share) == (2000.0, 60.0, 0.01)
    assert args.points is None and args.seconds is None and args.format == "json"
    assert cli.main(["produce", "--topic", "t", "--format", "f32",
                     "--points-per-message", "3"]) == 2
    assert "one point per message" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["produce", "--topic", "t", "--points", "5", "--seconds", "1"])
    assert exc.value.code == 2
    port = free_port()
    # STREAMEM_KAFKA__* settings apply as for `streamem run`; here: give up after 2 s.
    monkeypatch.setenv("STREAMEM_KAFKA__CLIENT_OPTIONS", "{bootstrap_timeout_ms: 2000}")
    assert cli.main(["produce", "--bootstrap-servers", f"127.0.0.1:{port}", "--topic", "t",
                     "--points", "1"]) == 1
    assert f"Kafka at 127.0.0.1:{port} failed" in capsys.readouterr().err


def test_token_bucket_paces_to_the_rate() -> None:
    now = [0.0]
    waited = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waited.append(timeout)
            now[0] += timeout or 0.0
            return False

    bucket = TokenBucket(1000, burst_s=0.1, clock=lambda: now[0])
    stop = Stop()
    for _ in range(20):
        assert bucket.take(100, stop)
    assert now[0] == pytest.approx(2.0)  # 2000 units at 1000/s
    assert TokenBucket(0).take(10**9, stop) and len(waited) == 20
    stop.set()
    assert not TokenBucket(0).take(1, stop)


def test_encode_messages_shapes() -> None:
    X, ids = np.arange(12.0).reshape(6, 2), np.arange(10, 16)
    single = list(encode_messages(X, ids, "json", 1, ts_ms=5))
    assert [first for first, _ in single] == list(range(10, 16))
    assert single[0][1] == b'{"id":10,"x":[0.0,1.0],"ts":5}'
    multi = list(encode_messages(X, ids, "json", 4))
    assert [first for first, _ in multi] == [10, 14]
    assert formats.decode(multi[1][1], "json", 2).ids == [14, 15]
    with pytest.raises(ValueError, match="one point per message"):
        list(encode_messages(X, ids, "f64", 2))
