"""A poison corpus through ``streamem run`` on the real broker, across a restart from checkpoint.

The issue's poison pill (1e200 among the first points) used to stop the daemon and, being in
the checkpointed warm-up buffer, every restart; a first message of 100 000 features raised a
596 GiB MemoryError and came back forever. Now each poison message is dead-lettered once with
its reason, every good point is answered, and the daemon keeps running.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import produce
from model_helpers import assert_positive_definite

from streamem.formats.headers import parse_ranges
from streamem.io.checkpoint import FileCheckpointStore
from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

MIX = Mixture.random(4, 8, random_state=9)
D = 8


def single(i: int, x: np.ndarray) -> bytes:
    return json.dumps({"id": i, "x": x.tolist()}).encode()


def corpus(X: np.ndarray, first_id: int, *, wide_first: bool) -> tuple[list[bytes], dict]:
    """Good single points with poison mixed in; the expected dead letters by position."""
    values = [single(first_id + i, x) for i, x in enumerate(X)]
    poison: dict[int, tuple[bytes, str, list[int] | None]] = {}

    def insert(at: int, value: bytes, reason: str, bad: list[int] | None = None) -> None:
        values.insert(at, value)
        poison[at] = (value, reason, bad)

    if wide_first:  # n_features is null: this must not fix the width (nor allocate d² arrays)
        insert(0, b"[" + b"0.5," * 99_999 + b"0.5]", "too_many_features")
    insert(7, json.dumps({"id": "pill", "x": [1e200] + [0.0] * (D - 1)}).encode(), "out_of_range")
    insert(15, json.dumps({"id": "huge", "x": [1e20] * D}).encode(), "out_of_range")
    insert(30, b'{"id": "nan", "x": [NaN, 0, 0, 0, 0, 0, 0, 0]}', "non_finite")
    insert(45, b'{"x": [1, 2', "bad_json")
    insert(60, json.dumps({"id": "ts", "x": [0.0] * D, "ts": -1e307}).encode(), "bad_schema")
    insert(75, b"", "empty")
    insert(90, b"[" + b"1," * 2000 + b"1]", "too_many_features")
    multi = [{"id": f"m{j}", "x": X[j].tolist()} for j in range(6)]
    multi[2]["x"] = [1e200] * D
    multi[4]["x"] = [float("nan")] * D
    insert(120, json.dumps({"points": multi}).encode(), "out_of_range", [2, 4])
    return values, poison


def wait_for(reader: Reader, count, want: int) -> list:
    return reader.read_until(lambda rs: count(rs) >= want)


@pytest.mark.kafka
def test_a_poison_corpus_is_dead_lettered_once_and_survives_a_restart(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = MIX.sample(3_000, random_state=1)
    topics = make_topics(topic_factory, partitions=1)
    # The first daemon stops mid warm-up: its checkpoint holds the warm-up buffer, where the
    # poison pill used to sit and crash every restart.
    # The instance's own model holds the warm-up buffer (shared, the stats topic holds it:
    # tests/sharing/test_leader.py).
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=4,
                               model__warmup=2_000, sharing__enabled="false")
    first, poison_1 = corpus(X[:1_500], 0, wide_first=True)
    second, poison_2 = corpus(X[1_500:], 1_500, wide_first=False)
    outputs = Reader(kafka_bootstrap, topics["output"])
    dead = Reader(kafka_bootstrap, topics["dead"])

    def n_points(records):
        return sum(1 for p in points_of(records))

    produce(kafka_bootstrap, topics["input"], first)
    daemon = start_daemon(tmp_path, "first", settings)
    try:
        wait_for(outputs, n_points, 1_500 + 4)  # + the multi-point message's four good points
        wait_for(dead, len, len(poison_1))
        assert daemon.proc.poll() is None, daemon.log_tail()
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
    checkpoint = FileCheckpointStore(tmp_path / "checkpoint.npz").load()
    assert checkpoint is not None and checkpoint.n_features == D
    warming = OnlineGMM.from_bytes(checkpoint.model)
    assert not warming.initialized_ and warming.n_seen_ == 1_504
    assert np.isfinite(warming.covariances_).all()

    produce(kafka_bootstrap, topics["input"], second)
    daemon = start_daemon(tmp_path, "second", settings)
    try:
        answered = wait_for(outputs, n_points, 3_000 + 8)
        dead_letters = wait_for(dead, len, len(poison_1) + len(poison_2))
        assert daemon.proc.poll() is None, daemon.log_tail()  # still running
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        outputs.close()
        dead.close()

    records = points_of(answered)
    ids = Counter(r["id"] for r in records)
    assert ids == Counter(list(range(3_000)) + [f"m{j}" for j in (0, 1, 3, 5)] * 2)
    for r in records:
        assert np.isfinite(r["log_likelihood"]) and np.isfinite(r["probability"])

    expected = {(0, at): (value, reason, bad) for at, (value, reason, bad) in poison_1.items()}
    expected.update({(1, at): item for at, item in poison_2.items()})
    got = []
    for rec in dead_letters:
        h = dict(rec.headers)
        bad = h.get("streamem.bad_points")
        got.append((rec.value, h["streamem.reason"].decode(),
                    None if bad is None else parse_ranges(bad.decode())))
    want = list(expected.values())
    assert sorted(got, key=repr) == sorted(want, key=repr)  # each once, with its reason
    assert daemon.events("runtime_stopped")
    final = FileCheckpointStore(tmp_path / "checkpoint.npz").load()
    model = OnlineGMM.from_bytes(final.model)
    assert model.initialized_ and model.n_seen_ == 3_000 + 8
    assert_positive_definite(model.covariances_)
