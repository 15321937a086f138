"""``delivery.guarantee: exactly_once`` with the shared model: killed with -9 twice mid-stream,
then stopped, one instance answers each input once and the group's model learns each point
once — a worker's deltas commit in its batches' transaction, the leader folds committed deltas
only, and its stats offsets commit in its state-publishing transaction."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from daemon_helpers import daemon_settings, make_topics, points_of, start_daemon
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka_helpers import produce
from sharing_helpers import CommittedReader, _read, delta_points

from streamem.formats.block import encode_block
from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

MIX = Mixture.random(4, 4, random_state=11)


@pytest.mark.kafka
def test_kill_9_twice_then_sigterm_learns_and_answers_each_point_once(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    X, _ = MIX.sample(30_000, random_state=3)
    values = [encode_block(X[s:s + 100], ids=range(s, s + 100)) for s in range(0, len(X), 100)]
    topics = make_topics(topic_factory)
    settings = daemon_settings(
        kafka_bootstrap, tmp_path, topics, input__format="block", kafka__max_poll_records=10,
        delivery__guarantee="exactly_once", delivery__transaction_timeout_s=5,
        delivery__transaction_min_s=1, checkpoint__path="null")
    group = settings["kafka.group_id"]
    stats_topic, state_topic = f"streamem.{group}.stats", f"streamem.{group}.state"
    rest = threading.Event()

    def trickle() -> None:
        for s in range(0, len(values), 5):
            produce(kafka_bootstrap, topics["input"], values[s:s + 5])
            rest.wait(0.15)

    producer = threading.Thread(target=trickle)
    producer.start()
    reader = CommittedReader(kafka_bootstrap, topics["output"])
    daemon = None
    try:
        for i in range(2):
            daemon = start_daemon(tmp_path, f"run{i}", settings)
            seen = len(reader.records)
            reader.read_until(lambda rs, seen=seen: len(rs) >= seen + 30)
            time.sleep(0.5)  # just after a commit: into the next transaction
            daemon.proc.kill()
            daemon.proc.wait(30)
        assert producer.is_alive(), "the kills came after the stream ended"
        rest.set()
        producer.join()
        daemon = start_daemon(tmp_path, "last", settings)
        reader.read_until(lambda rs: {int(a["id"]) for a in points_of(rs)}
                          >= set(range(len(X))))
        assert daemon.stop() == 0, daemon.log_tail()
        reader.read_until(lambda rs: False, 2.0)
    finally:
        if daemon is not None:
            daemon.proc.kill()
        rest.set()
        producer.join()
        reader.close()

    counts = Counter(int(a["id"]) for a in points_of(reader.records))
    assert set(counts) == set(range(len(X))) and set(counts.values()) == {1}
    assert sum(delta_points(kafka_bootstrap, stats_topic).values()) == len(X), \
        "the committed deltas stand for each point once"
    final = OnlineGMM.from_bytes(_read(kafka_bootstrap, state_topic, committed=True)[-1].value)
    assert final.n_seen_ == len(X), "the shared model learned each point once"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        committed = admin.list_group_offsets(f"{group}.leader")[f"{group}.leader"]
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed")
    stats = TopicPartition(stats_topic, 0)
    end = consumer.end_offsets([stats])[stats]
    consumer.close()
    assert committed[stats].offset == end, "the last publication committed its stats offsets"
