"""``streamem run`` as a subprocess against the real broker: the delivery guarantee end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from daemon_helpers import (
    WAIT_S,
    Reader,
    daemon_settings,
    make_topics,
    points_of,
    start_daemon,
)
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import committed_offsets, free_port, produce
from sklearn.metrics import adjusted_rand_score

from streamem import formats
from streamem.formats.block import decode_result_block, encode_block
from streamem.io.checkpoint import FileCheckpointStore
from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

MIX = Mixture.random(8, 8, random_state=7)


def block_messages(X: np.ndarray, size: int) -> list[bytes]:
    """Block messages of ``size`` points whose ids are their row numbers in ``X``."""
    return [encode_block(X[s:s + size], ids=list(range(s, min(s + size, len(X)))))
            for s in range(0, len(X), size)]


def answered_inputs(records: list) -> Counter:
    """How many output messages answer each input ``(partition, offset)``."""
    return Counter((p["partition"], p["offset"]) for p in points_of(records) if p["index"] == 0)


def input_coordinates(bootstrap: str, topic: str) -> set[tuple[int, int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    end = consumer.end_offsets(tps)
    consumer.close()
    return {(tp.partition, o) for tp in tps for o in range(end[tp])}


@pytest.mark.kafka
def test_clean_run_answers_every_block_once_and_stops_on_sigterm(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, y = MIX.sample(100_000, random_state=1)
    topics = make_topics(topic_factory)
    values = block_messages(X, 250)
    produce(kafka_bootstrap, topics["input"], values, keys=[b"k%d" % i for i in range(len(values))])
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                               metrics__enabled="true", metrics__port=0)
    daemon = start_daemon(tmp_path, "clean", settings)
    reader = Reader(kafka_bootstrap, topics["output"])
    try:
        records = reader.read_until(lambda rs: len(rs) >= len(values))
        assert len(records) == len(values), daemon.log_tail()
        [serving] = daemon.events("metrics_serving")
        # The batch's metrics are recorded just after its commit: poll until they are in.
        done = 'streamem_points_total{outcome="ok"} 100000.0'
        deadline = time.monotonic() + 30
        scrape = ""
        while done not in scrape and time.monotonic() < deadline:
            scrape = urllib.request.urlopen(serving["url"] + "/metrics").read().decode()
            time.sleep(0.1)
        ready = urllib.request.urlopen(serving["url"] + "/readyz").status
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        reader.close()

    assert set(answered_inputs(records).values()) == {1}
    assert set(answered_inputs(records)) == input_coordinates(kafka_bootstrap, topics["input"])
    assert {r.key for r in records} == {b"k%d" % i for i in range(len(values))}
    points = points_of(records)
    ids = np.array([p["id"] for p in points])
    assert np.array_equal(np.sort(ids), np.arange(len(X)))
    assert adjusted_rand_score(y[ids], [p["cluster"] for p in points]) >= 0.95
    assert 'streamem_points_total{outcome="ok"} 100000.0' in scrape
    assert ready == 200

    checkpoint = FileCheckpointStore(tmp_path / "checkpoint.npz").load()
    committed = committed_offsets(kafka_bootstrap, settings["kafka.group_id"], topics["input"])
    assert checkpoint is not None
    assert {p: o for (_, p), o in checkpoint.offsets.items()} == committed
    assert sum(committed.values()) == len(values)
    assert OnlineGMM.from_bytes(checkpoint.model).n_seen_ == len(X)


@pytest.mark.kafka
def test_single_point_messages_with_bad_ones_mixed_in(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = MIX.sample(4_000, random_state=2)
    topics = make_topics(topic_factory)
    bad = [b"{oops", b"[1, 2, 3]", b'{"x": "nope"}', b"", b'{"x": [1e999, 0, 0, 0, 0, 0, 0, 0]}']
    reasons = {b"{oops": "bad_json", b"[1, 2, 3]": "wrong_dimension",
               b'{"x": "nope"}': "bad_schema", b"": "empty",
               b'{"x": [1e999, 0, 0, 0, 0, 0, 0, 0]}': "non_finite"}
    values = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(len(X))]
    for i, value in enumerate(bad * 4):
        values.insert(500 + 173 * i, value)
    produce(kafka_bootstrap, topics["input"], values)
    daemon = start_daemon(tmp_path, "mixed", daemon_settings(kafka_bootstrap, tmp_path, topics))
    outputs = Reader(kafka_bootstrap, topics["output"])
    dead = Reader(kafka_bootstrap, topics["dead"])
    try:
        answered = outputs.read_until(lambda rs: len(rs) >= len(X))
        dead_letters = dead.read_until(lambda rs: len(rs) >= len(bad) * 4)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        outputs.close()
        dead.close()

    assert sorted(p["id"] for p in points_of(answered)) == list(range(len(X)))
    assert len(dead_letters) == len(bad) * 4
    for record in dead_letters:
        headers = dict(record.headers)
        assert headers["streamem.reason"].decode() == reasons[record.value]
        assert headers["streamem.source.topic"].decode() == topics["input"]
    coords = {(p["partition"], p["offset"]) for p in points_of(answered)}
    coords |= {(int(dict(r.headers)["streamem.source.partition"]),
                int(dict(r.headers)["streamem.source.offset"])) for r in dead_letters}
    assert coords == input_coordinates(kafka_bootstrap, topics["input"])


@pytest.mark.kafka
def test_kill_9_mid_stream_then_restart_answers_everything_and_resumes_the_model(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = MIX.sample(48_000, random_state=3)
    topics = make_topics(topic_factory)
    values = block_messages(X, 200)
    # The per-instance model's arithmetic (checkpoint + what followed its offsets); with a
    # shared model: tests/sharing/test_single_instance.py.
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                               checkpoint__interval_s=0.3, kafka__max_poll_records=10,
                               sharing__enabled="false")

    def trickle() -> None:
        for s in range(0, len(values), 8):
            produce(kafka_bootstrap, topics["input"], values[s:s + 8])
            time.sleep(0.1)

    producer = threading.Thread(target=trickle)
    producer.start()
    first = start_daemon(tmp_path, "first", settings)
    store = FileCheckpointStore(tmp_path / "checkpoint.npz")
    reader = Reader(kafka_bootstrap, topics["output"])
    try:
        reader.read_until(lambda rs: len(rs) >= 40 and store.path.exists())
        first.proc.kill()
        first.proc.wait(30)
        answered_before_kill = len(answered_inputs(reader.records))
        producer.join()
        assert answered_before_kill < len(values), "the kill came after the stream ended"

        checkpoint = store.load()
        assert checkpoint is not None
        n_checkpointed = OnlineGMM.from_bytes(checkpoint.model).n_seen_
        assert n_checkpointed > 0
        committed = committed_offsets(kafka_bootstrap, settings["kafka.group_id"],
                                      topics["input"])
        second = start_daemon(tmp_path, "second", settings)
        everything = input_coordinates(kafka_bootstrap, topics["input"])
        reader.read_until(lambda rs: set(answered_inputs(rs)) >= everything)
        assert second.stop() == 0, second.log_tail()
    finally:
        first.proc.kill()
        reader.close()
        producer.join()

    assert set(answered_inputs(reader.records)) == everything
    [restored] = second.events("model_restored")
    assert restored["n_seen"] == n_checkpointed
    # The restarted daemon read from the committed offsets and fitted exactly what followed them.
    n_after = sum(len(points_of_message(v)) for v in values_from(kafka_bootstrap, topics["input"],
                                                                 committed))
    final = OnlineGMM.from_bytes(store.load().model)
    assert final.n_seen_ == n_checkpointed + n_after


def points_of_message(value: bytes) -> np.ndarray:
    return formats.decode(value, "block", None).X


def values_from(bootstrap: str, topic: str, start: dict[int, int]) -> list[bytes]:
    """Values of ``topic`` from offset ``start[partition]`` (0 when absent) to its end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    end = consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    values: list[bytes] = []
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for batch in consumer.poll(timeout_ms=200).values():
            values.extend(r.value for r in batch)
    consumer.close()
    return values


@pytest.mark.kafka
def test_daemon_survives_a_broker_restart_and_catches_up(
        kafka_broker, kafka_bootstrap, topic_factory, tmp_path) -> None:
    if kafka_broker.external:
        pytest.skip("an external broker (STREAMEM_KAFKA_BOOTSTRAP) cannot be restarted")
    X, _ = MIX.sample(20_000, random_state=4)
    topics = make_topics(topic_factory)
    values = block_messages(X, 200)
    produce(kafka_bootstrap, topics["input"], values[:50])
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block")
    daemon = start_daemon(tmp_path, "restart", settings)
    reader = Reader(kafka_bootstrap, topics["output"])
    try:
        reader.read_until(lambda rs: len(answered_inputs(rs)) >= 50)
        reader.close()
        kafka_broker.stop()
        time.sleep(3)
        kafka_broker.start()
        assert daemon.proc.poll() is None, daemon.log_tail()
        produce(kafka_bootstrap, topics["input"], values[50:])
        reader = Reader(kafka_bootstrap, topics["output"])
        everything = input_coordinates(kafka_bootstrap, topics["input"])
        reader.read_until(lambda rs: set(answered_inputs(rs)) >= everything)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        reader.close()
    assert set(answered_inputs(reader.records)) == everything


def test_stdin_to_stdout_pipe(tmp_path) -> None:
    X, _ = MIX.sample(1_000, random_state=5)
    lines = [json.dumps({"id": i, "x": X[i].tolist()}) for i in range(len(X))]
    lines[10:10] = ["not json", "[1, 2]"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMEM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streamem", "run", "--source", "stdin",
         "--set", "checkpoint.path=null", "--set", "metrics.enabled=false",
         "--set", "kafka.model_topic=null", "--set", "kafka.sasl_plain_password=hunter2"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["id"] for a in answers] == list(range(len(X)))
    assert [a["offset"] for a in answers[9:11]] == [9, 12]  # offsets are line numbers
    side = [doc for doc in map(json.loads, proc.stderr.splitlines()) if "event" not in doc]
    assert [(s["topic"], s["reason"], s["value"]) for s in side] == [
        ("streamem.dead-letter", "bad_json", "not json"),
        ("streamem.dead-letter", "wrong_dimension", "[1, 2]")]
    assert "hunter2" not in proc.stderr


def test_bad_config_exits_2_with_the_key_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamem", "run", "--set", "kafka.nope=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "kafka.nope" in proc.stderr


def test_unreachable_broker_is_retried_until_sigterm(tmp_path) -> None:
    topics = {"input": "in", "output": "out", "dead": "dead"}
    settings = daemon_settings(f"127.0.0.1:{free_port()}", tmp_path, topics,
                               runtime__retry_initial_s=0.1, runtime__retry_max_s=0.4,
                               kafka__request_timeout_ms=1000)
    daemon = start_daemon(tmp_path, "unreachable", settings)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(daemon.events("kafka_unavailable")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
    retries = [e["retry_in_s"] for e in daemon.events("kafka_unavailable")]
    assert len(retries) >= 3 and retries[1] > retries[0]
    assert daemon.events("stopped_before_connecting")


@pytest.mark.kafka
def test_block_output_answers_every_message_with_one_decodable_block(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, y = MIX.sample(30_000, random_state=6)
    topics = make_topics(topic_factory)
    values = block_messages(X[:20_000], 500)
    values += [json.dumps({"id": f"p{i}", "x": X[i].tolist()}).encode()  # not block input:
               for i in range(20_000, 20_010)]                           # dead letters
    values += block_messages(X[20_000:], 1_000)
    stamps = [1_600_000_000_000 + 7 * i for i in range(len(values))]  # event times, not "now"
    traces = [[("traceparent", b"00-%032x-01" % i), ("streamem.model_version", b"spoofed")]
              for i in range(len(values))]
    produce(kafka_bootstrap, topics["input"], values, keys=[b"k%d" % i for i in range(len(values))],
            headers=traces, timestamps=stamps)
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                               output__format="block", output__top_k=3)
    daemon = start_daemon(tmp_path, "block-out", settings)
    outputs = Reader(kafka_bootstrap, topics["output"])
    dead = Reader(kafka_bootstrap, topics["dead"])
    try:
        answered = outputs.read_until(lambda rs: len(rs) >= len(values) - 10)
        dead_letters = dead.read_until(lambda rs: len(rs) >= 10)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        outputs.close()
        dead.close()

    docs = [decode_result_block(r.value) for r in answered]
    coords = Counter((d["partition"], d["offset"]) for d in docs)
    coords.update((int(dict(r.headers)["streamem.source.partition"]),
                   int(dict(r.headers)["streamem.source.offset"])) for r in dead_letters)
    assert set(coords.values()) == {1}
    assert set(coords) == input_coordinates(kafka_bootstrap, topics["input"])
    by_key = {int(r.key[1:]): d for r, d in zip(answered, docs, strict=True)}
    assert sorted(by_key) == list(range(40)) + list(range(50, 60))
    for i, d in by_key.items():  # block_messages numbers ids by row within the X it is given
        first = 500 * i if i < 40 else 1_000 * (i - 50)
        assert d["id"].tolist() == list(range(first, first + (500 if i < 40 else 1_000)))
        assert d["top_k_component"].shape == (len(d["id"]), 3)
        assert (d["top_k_component"][:, 0] == d["cluster"]).all()
    for r, d in zip(answered, docs, strict=True):  # input headers and event time travel
        i = int(r.key[1:])
        assert r.headers == [("traceparent", b"00-%032x-01" % i),
                             ("streamem.model_version", str(d["model_version"]).encode())]
        assert r.timestamp == stamps[i]
    for r in dead_letters:
        i = int(r.key[1:])
        assert r.headers[0] == ("traceparent", b"00-%032x-01" % i)
        assert dict(r.headers)["streamem.model_version"] == b"spoofed"  # not ours to replace
        assert r.timestamp == stamps[i]
    # Each answer carries the version that answered it: the update after the last batch made a
    # version no answer can carry.
    final = OnlineGMM.from_bytes(FileCheckpointStore(tmp_path / "checkpoint.npz").load().model)
    assert max(d["model_version"] for d in docs) < final.version_
    late = range(50, 60)  # past the warm-up
    clusters = np.concatenate([by_key[i]["cluster"] for i in late])
    truth = np.concatenate([y[20_000 + 1_000 * (i - 50):][:1_000] for i in late])
    assert adjusted_rand_score(truth, clusters) >= 0.95
