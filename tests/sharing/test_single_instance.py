"""One instance with sharing on, as by default: killed with -9 mid-stream and restarted, it
answers everything, restores its own file checkpoint, and the group's model learns every
delta on the stats topic exactly once across the leader's death."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import committed_offsets, produce
from sharing_helpers import collapsed, delta_points, instance, state_log

from streamem.formats.block import encode_block
from streamem.io.checkpoint import FileCheckpointStore
from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

MIX = Mixture.random(8, 8, random_state=7)


def points_after(bootstrap: str, topic: str, start: dict[int, int]) -> int:
    """How many points the messages of ``topic`` from offsets ``start`` on hold."""
    from streamem import formats

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    end = consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    n = 0
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for batch in consumer.poll(timeout_ms=200).values():
            n += sum(len(formats.decode(r.value, "block", None).X) for r in batch)
    consumer.close()
    return n


@pytest.mark.kafka
def test_kill_9_then_restart_learns_every_delta_once_and_restores_its_file(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = MIX.sample(48_000, random_state=3)
    values = [encode_block(X[s:s + 200], ids=range(s, s + 200)) for s in range(0, len(X), 200)]
    topics = make_topics(topic_factory)
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                               checkpoint__interval_s=0.3, kafka__max_poll_records=10)
    group = settings["kafka.group_id"]
    stats_topic, state_topic = f"streamem.{group}.stats", f"streamem.{group}.state"

    def trickle() -> None:
        for s in range(0, len(values), 4):
            produce(kafka_bootstrap, topics["input"], values[s:s + 4])
            time.sleep(0.1)

    producer = threading.Thread(target=trickle)
    producer.start()
    first = start_daemon(tmp_path, "first", settings)
    store = FileCheckpointStore(tmp_path / "checkpoint.npz")
    reader = Reader(kafka_bootstrap, topics["output"])
    try:
        deadline = time.monotonic() + 60
        while not [e for e in first.events("checkpoint_saved") if e["n_seen"] > 0]:
            assert time.monotonic() < deadline, "no shared state checkpointed\n" + \
                first.log_tail()
            time.sleep(0.1)
        first.proc.kill()
        first.proc.wait(30)
        assert producer.is_alive(), "the kill came after the stream ended"
        producer.join()
        n_checkpointed = OnlineGMM.from_bytes(store.load().model).n_seen_
        committed = committed_offsets(kafka_bootstrap, group, topics["input"])
        second = start_daemon(tmp_path, "second", settings)
        reader.read_until(lambda rs: {int(a["id"]) for a in points_of(rs)} >= set(range(len(X))))
        assert second.stop() == 0, second.log_tail()
    finally:
        first.proc.kill()
        reader.close()
        producer.join()

    assert {int(a["id"]) for a in points_of(reader.records)} == set(range(len(X)))
    [restored] = second.events("model_restored")
    assert restored["n_seen"] == n_checkpointed, "the instance's own file checkpoint"
    learned = delta_points(kafka_bootstrap, stats_topic)
    assert learned[instance(second)] == points_after(kafka_bootstrap, topics["input"],
                                                     committed)
    final = OnlineGMM.from_bytes(store.load().model)
    assert final.n_seen_ == sum(learned.values()), \
        f"each delta folded once across the leader's kill -9: {final.n_seen_} vs {learned}"
    log = state_log(kafka_bootstrap, state_topic)
    versions = [v for _, v in log]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert collapsed([w for w, _ in log]) == [instance(first), instance(second)]
    assert np.isfinite(final.means_).all()
