"""The runtime loop over in-memory transports: answers, dead letters, retries, checkpoints."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.metrics import adjusted_rand_score

from streamem.config import Config, load_config
from streamem.errors import CheckpointError, ConfigError
from streamem.formats.block import decode_result_block, encode_block
from streamem.io.base import RecordTooLarge
from streamem.io.checkpoint import FileCheckpointStore
from streamem.io.memory import MemorySink, MemorySource
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.runtime import Runtime, restore_model
from streamem.synthetic import Mixture

MIX = Mixture.random(4, 3, random_state=11)


def make_config(*overrides: str) -> Config:
    return load_config(None, ["model.n_components=4", "model.random_state=0",
                              "checkpoint.path=null", *overrides], environ={})


def json_messages(X: np.ndarray, per_message: int) -> list[bytes]:
    """Multi-point JSON messages whose point ids are the row numbers of ``X``."""
    return [json.dumps({"points": [{"id": i, "x": X[i].tolist()}
                                   for i in range(s, min(s + per_message, len(X)))]}).encode()
            for s in range(0, len(X), per_message)]


def run_loop(cfg: Config, values: list[bytes], sink: MemorySink | None = None,
             stores: tuple = (), batch_size: int = 10) -> tuple[Runtime, MemorySource, MemorySink]:
    source = MemorySource(values, batch_size=batch_size)
    sink = sink or MemorySink()
    model, resume = restore_model(cfg, stores)
    runtime = Runtime(cfg, source, sink, model, Metrics(CollectorRegistry()), stores,
                      resume=resume)
    assert runtime.run() == 0
    return runtime, source, sink


def answers(sink: MemorySink, topic: str) -> list[dict]:
    out = []
    for _, _, value, _ in sink.on(topic):
        doc = json.loads(value)
        out.extend(doc if isinstance(doc, list) else [doc])
    return out


def test_every_point_is_answered_once_and_clustered_well() -> None:
    X, y = MIX.sample(20_000, random_state=1)
    cfg = make_config()
    runtime, source, sink = run_loop(cfg, json_messages(X, 200))
    records = answers(sink, cfg.kafka.output_topic)
    ids = [r["id"] for r in records]
    assert sorted(ids) == list(range(len(X)))
    assert adjusted_rand_score(y[ids], [r["cluster"] for r in records]) >= 0.95
    assert source.commits[-1] == {("memory", 0): 100}
    assert runtime.model.n_seen_ == len(X)


def test_bad_messages_go_to_the_dead_letters_with_their_reason() -> None:
    X, _ = MIX.sample(300, random_state=2)
    good = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(len(X))]
    bad = {5: (b"{not json", "bad_json"), 17: (b"[1.0, 2.0]", "wrong_dimension"),
           40: (b'{"x": [1, "a", 3]}', "bad_schema"), 41: (b"", "empty"),
           99: (b'{"x": [1e999, 0, 0]}', "non_finite")}
    values = list(good)
    for offset in sorted(bad):
        values.insert(offset, bad[offset][0])
    cfg = make_config()
    _, source, sink = run_loop(cfg, values)

    dead = sink.on(cfg.kafka.dead_letter_topic)
    got = {int(dict(h)["streamem.source.offset"]): (v, dict(h)["streamem.reason"].decode())
           for _, _, v, h in dead}
    assert got == bad
    assert sorted(r["id"] for r in answers(sink, cfg.kafka.output_topic)) == list(range(len(X)))
    assert source.commits[-1] == {("memory", 0): len(values)}


def test_a_failed_flush_commits_nothing_and_the_batch_is_answered_on_retry() -> None:
    X, _ = MIX.sample(2_000, random_state=3)
    cfg = make_config("runtime.retry_initial_s=0.01")
    sink = MemorySink(fail_flushes=2)
    runtime, source, sink = run_loop(cfg, json_messages(X, 100), sink=sink)
    assert sorted(r["id"] for r in answers(sink, cfg.kafka.output_topic)) == list(range(len(X)))
    # The first two attempts of batch one failed: the first commit covers batch one only.
    assert source.commits[0] == {("memory", 0): 10}
    # Documented cost of a retry: the model saw the retried batch again.
    assert runtime.model.n_seen_ == len(X) + 2 * 1_000


def test_checkpoint_holds_the_committed_offsets_and_resumes_the_model(tmp_path) -> None:
    X, _ = MIX.sample(5_000, random_state=4)
    path = tmp_path / "ckpt.npz"
    cfg = make_config(f"checkpoint.path={path}", "checkpoint.interval_s=0.001")
    store = FileCheckpointStore(path)
    first, source, _ = run_loop(cfg, json_messages(X[:3000], 100), stores=(store,))
    ckpt = store.load()
    assert ckpt is not None and ckpt.offsets == source.commits[-1] == {("memory", 0): 30}
    assert ckpt.n_features == 3

    model, resume = restore_model(cfg, [store])
    assert model.n_seen_ == first.model.n_seen_ == 3000
    np.testing.assert_array_equal(model.means_, first.model.means_)
    assert resume is not None and resume.offsets == ckpt.offsets

    second, _, _ = run_loop(cfg, json_messages(X[3000:], 100), stores=(store,))
    assert second.model.n_seen_ == 5000


def test_a_corrupt_checkpoint_refuses_to_start_unless_ignored(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    cfg = make_config(f"checkpoint.path={path}")
    with pytest.raises(CheckpointError, match="--ignore-checkpoint"):
        restore_model(cfg, [FileCheckpointStore(path)])
    model, resume = restore_model(cfg, [FileCheckpointStore(path)], ignore=True)
    assert resume is None and model.n_seen_ == 0


def test_n_features_contradicting_the_checkpoint_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    cfg = make_config(f"checkpoint.path={path}", "checkpoint.interval_s=0.001")
    X, _ = MIX.sample(500, random_state=5)
    run_loop(cfg, json_messages(X, 100), stores=(FileCheckpointStore(path),))
    with pytest.raises(ConfigError, match="n_features"):
        restore_model(make_config("input.n_features=7"), [FileCheckpointStore(path)])


def test_anomalies_are_copied_to_the_anomaly_topic() -> None:
    X, _ = MIX.sample(4_000, random_state=6)
    X[3500:3510] = 1e3  # far from every component, after warm-up
    cfg = make_config("kafka.anomaly_topic=anomalies")
    _, _, sink = run_loop(cfg, json_messages(X, 100))
    flagged = {r["id"] for r in answers(sink, cfg.kafka.output_topic) if r["anomaly"]}
    copied = answers(sink, "anomalies")
    assert set(range(3500, 3510)) <= flagged
    assert sorted(r["id"] for r in copied) == sorted(flagged)
    assert all(r["anomaly"] for r in copied)


def test_block_messages_and_a_stop_request_from_another_thread() -> None:
    X, _ = MIX.sample(1_000, random_state=7)
    cfg = make_config("input.format=block")
    stop = threading.Event()

    def endless():
        i = 0
        while True:
            if i == 50:
                stop.set()
            yield encode_block(X[i % 10 * 100:(i % 10 + 1) * 100])
            i += 1

    source, sink = MemorySource(endless(), batch_size=5), MemorySink()
    runtime = Runtime(cfg, source, sink, OnlineGMM(**cfg.model_kwargs()),
                      Metrics(CollectorRegistry()), stop=stop)
    assert runtime.run() == 0
    n_answered = len(sink.on(cfg.kafka.output_topic))
    assert source.commits[-1] == {("memory", 0): n_answered}
    assert sink.closed


def test_block_output_answers_every_message_with_one_decodable_block() -> None:
    X, y = MIX.sample(6_000, random_state=8)
    singles = [json.dumps({"id": f"s{i}", "x": X[i].tolist()}).encode() for i in range(5_000)]
    values = singles + json_messages(X[5_000:], 100)  # then multi-point messages, int ids
    values.insert(17, b"{not json}")
    cfg = make_config("output.format=block", "output.top_k=2", "kafka.anomaly_topic=anomalies")
    _, source, sink = run_loop(cfg, values, batch_size=500)

    out = sink.on(cfg.kafka.output_topic)
    docs = [decode_result_block(value) for _, _, value, _ in out]
    assert [d["offset"] for d in docs] == [o for o in range(len(values)) if o != 17]
    assert [len(d["cluster"]) for d in docs] == [1] * 5_000 + [100] * 10
    assert all(d["id"] is None for d in docs[:5_000])  # string ids are left out
    ids = np.concatenate([d["id"] for d in docs[5_000:]])
    assert ids.tolist() == list(range(1_000))  # row numbers within X[5000:]
    clusters = np.concatenate([d["cluster"] for d in docs])
    assert adjusted_rand_score(y[3_000:], clusters[3_000:]) >= 0.95  # past the warm-up
    assert all(d["top_k_component"].shape[1] == 2 for d in docs)
    flagged = sum(int(d["anomaly"].sum()) for d in docs)
    copied = [decode_result_block(v) for _, _, v, _ in sink.on("anomalies")]
    assert sum(len(d["cluster"]) for d in copied) == flagged
    assert all(d["anomaly"].all() for d in copied)
    assert source.commits[-1] == {("memory", 0): len(values)}
    assert len(sink.on(cfg.kafka.dead_letter_topic)) == 1


def test_exactly_once_without_kafka_says_it_runs_at_least_once(caplog) -> None:
    X, _ = MIX.sample(200, random_state=2)
    cfg = make_config("delivery.guarantee=exactly_once")
    with caplog.at_level("WARNING", logger="streamem.runtime"):
        runtime, _, sink = run_loop(cfg, json_messages(X, 20))
    assert runtime._txn_sink is None
    assert [r for r in caplog.records if r.getMessage() == "exactly_once_unavailable"]
    assert len(answers(sink, cfg.kafka.output_topic)) == 200


class _SmallSink(MemorySink):
    """A MemorySink that refuses answers over 1000 bytes, as a Kafka sink would."""

    def send(self, topic, key, value, headers=(), timestamp_ms=None) -> None:
        if topic == "streamem.assignments" and len(value) > 1000:
            raise RecordTooLarge(f"a {len(value)}-byte message exceeds 1000 bytes")
        super().send(topic, key, value, headers, timestamp_ms)


def test_an_answer_too_large_to_send_dead_letters_its_message_and_the_rest_go_out() -> None:
    X, _ = MIX.sample(1200, random_state=3)
    singles = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(1100)]
    big = json_messages(X[1100:], 100)  # one message of 100 points: a ~20 kB answer
    values = singles[:500] + big + singles[500:]
    cfg = make_config()
    _, source, sink = run_loop(cfg, values, sink=_SmallSink(), batch_size=2000)
    assert sorted(r["id"] for r in answers(sink, cfg.kafka.output_topic)) == list(range(1100))
    dead = sink.on(cfg.kafka.dead_letter_topic)
    assert [(value, dict(headers)["streamem.reason"]) for _, _, value, headers in dead] == \
        [(big[0], b"too_large")]
    assert source.commits[-1] == {("memory", 0): len(values)}


def test_freeze_heap_exempts_the_start_up_heap_and_collects_young_objects_less_often() -> None:
    import gc

    from streamem.runtime import GC_THRESHOLDS, freeze_heap

    before = gc.get_threshold()
    gc.unfreeze()  # as a fresh process starts (an earlier bench test froze this one's heap)
    gc.set_threshold(700, 10, 10)  # Python's defaults
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
