"""``delivery.guarantee: exactly_once`` against the real broker; a ``read_committed`` consumer
is the judge: every input message is answered exactly once, on the output topic or on the
dead-letter topic."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import WAIT_S, daemon_settings, make_topics, points_of, start_daemon
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import produce

from streamem import assemble
from streamem.config import load_config
from streamem.formats.block import encode_block
from streamem.io.base import NO_EVENTS, GroupMember, TransactionalSink
from streamem.metrics import Metrics
from streamem.synthetic import Mixture

MIX = Mixture.random(4, 4, random_state=11)
EO = {"delivery__guarantee": "exactly_once", "delivery__transaction_timeout_s": 5,
      "kafka__session_timeout_ms": 6000, "kafka__heartbeat_interval_ms": 1000}


class CommittedReader:
    """Reads topics from the beginning with ``isolation_level=read_committed``."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      isolation_level="read_committed")
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(self.consumer.partitions_for_topic(t))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list = []

    def read_until(self, done, timeout_s: float = WAIT_S) -> list:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)
        return self.records

    def settle(self, quiet_s: float = 2.0) -> list:
        """Read until nothing new arrives for ``quiet_s``."""
        while True:
            before = len(self.records)
            self.read_until(lambda rs: False, quiet_s)
            if len(self.records) == before:
                return self.records

    def close(self) -> None:
        self.consumer.close()


def answers(records: list, output_topic: str) -> Counter:
    """How many answers each input ``(partition, offset)`` got: output messages (their first
    point) and dead letters."""
    out = Counter((p["partition"], p["offset"]) for p in
                  points_of([r for r in records if r.topic == output_topic])
                  if p["index"] == 0)
    for r in records:
        if r.topic != output_topic:
            h = dict(r.headers)
            out[(int(h["streamem.source.partition"]), int(h["streamem.source.offset"]))] += 1
    return out


def input_coordinates(bootstrap: str, topic: str) -> set[tuple[int, int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    end = consumer.end_offsets(tps)
    consumer.close()
    return {(tp.partition, o) for tp in tps for o in range(end[tp])}


def block_messages(X: np.ndarray, size: int) -> list[bytes]:
    return [encode_block(X[s:s + size]) for s in range(0, len(X), size)]


def assert_each_once(reader: CommittedReader, topics: dict[str, str], bootstrap: str) -> None:
    everything = input_coordinates(bootstrap, topics["input"])
    reader.read_until(lambda rs: set(answers(rs, topics["output"])) >= everything)
    counts = answers(reader.settle(), topics["output"])
    assert set(counts) == everything
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not twice, f"answered more than once: {sorted(twice.items())[:10]}"


# -- in process: an aborted transaction -----------------------------------------------------

@pytest.mark.kafka
def test_an_aborted_transaction_leaves_nothing_visible_and_restores_the_model(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=1)
    cfg = load_config(None, [f"{k.replace('__', '.')}={v}" for k, v in {
        **daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                          model__n_components=4, model__warmup=50, **EO),
        "sharing.enabled": "false",  # this instance's model rolls back (shared: tests/sharing)
        "delivery.transaction_min_s": 1000}.items()])
    X, _ = MIX.sample(2000, random_state=1)
    first, second = block_messages(X[:1000], 100), block_messages(X[1000:], 100)
    produce(kafka_bootstrap, topics["input"], first)
    stop = threading.Event()
    source = assemble.source(cfg, "kafka", NO_EVENTS, stop)
    sink = assemble.sink(cfg, "kafka", NO_EVENTS, stop)
    assert isinstance(sink, TransactionalSink) and isinstance(source, GroupMember)
    metrics = Metrics()
    runtime = assemble.runtime(cfg, source, sink, metrics, stores=[])
    reader = CommittedReader(kafka_bootstrap, topics["output"], topics["dead"])

    def counted() -> tuple[float | None, ...]:
        value = metrics.registry.get_sample_value
        return (value("streamem_points_total", {"outcome": "ok"}),
                value("streamem_messages_total", {"outcome": "dead_letter"}))

    def step_until_seen(n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while runtime.model.n_seen_ < n and time.monotonic() < deadline:
            runtime.step()
        assert runtime.model.n_seen_ == n

    try:
        step_until_seen(1000)
        runtime._txn_commit(force=True)
        assert runtime._txn is None
        before = runtime.model._snapshot()
        committed = len(reader.settle())
        assert committed == len(first)

        produce(kafka_bootstrap, topics["input"], [*second, b"not a block"])
        step_until_seen(2000)
        assert runtime._txn is not None and runtime._txn.offsets  # open: min_s is long
        assert counted() == (1000, 0)  # the open transaction's batches are not counted yet
        runtime._txn_abort("test", RuntimeError("aborted by the test"))
        assert runtime.model.n_seen_ == 1000
        for name in ("nk", "means", "scatter"):
            np.testing.assert_array_equal(getattr(runtime.model.stats_, name),
                                          getattr(before["stats_"], name))
        assert len(reader.settle()) == committed  # nothing of the aborted one is visible

        runtime.source.seek_to_committed()
        step_until_seen(2000)  # the rewound input, processed again, commits once
        runtime._txn_commit(force=True)
        assert runtime._txn is None
        assert_each_once(reader, topics, kafka_bootstrap)
        assert counted() == (2000, 1)  # the aborted batches counted once, when committed
    finally:
        reader.close()
        source.close()
        sink.close()


# -- daemons ----------------------------------------------------------------------------------

def _trickle(bootstrap: str, topic: str, values: list[bytes], rest: threading.Event,
             every_s: float = 0.1, chunk: int = 4) -> threading.Thread:
    """Produce ``values`` a chunk every ``every_s``; all the rest at once when ``rest`` is set
    (so that the test's interruptions fall mid-stream)."""
    def run() -> None:
        for s in range(0, len(values), chunk):
            if rest.is_set():
                produce(bootstrap, topic, values[s:])
                return
            produce(bootstrap, topic, values[s:s + chunk])
            time.sleep(every_s)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _with_poison(values: list[bytes], every: int = 25) -> list[bytes]:
    return [b"poison" if i % every == 7 else v for i, v in enumerate(values)]


@pytest.mark.kafka
def test_kill_9_three_times_then_sigterm_answers_each_input_exactly_once(
        kafka_bootstrap, topic_factory, tmp_path: Path) -> None:
    X, _ = MIX.sample(40_000, random_state=3)
    topics = make_topics(topic_factory)
    values = _with_poison(block_messages(X, 100))
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, input__format="block",
                               kafka__max_poll_records=10, delivery__transaction_min_s=1, **EO)
    rest = threading.Event()
    producer = _trickle(kafka_bootstrap, topics["input"], values, rest)
    reader = CommittedReader(kafka_bootstrap, topics["output"], topics["dead"])
    daemon = None
    try:
        for i in range(3):
            daemon = start_daemon(tmp_path, f"run{i}", settings)
            seen = len(reader.records)
            reader.read_until(lambda rs, seen=seen: len(rs) >= seen + 20)
            time.sleep(0.5)  # just after a commit: now into the next transaction
            daemon.proc.kill()
            daemon.proc.wait(30)
        assert producer.is_alive(), "the kills came after the stream ended"
        rest.set()
        producer.join()
        daemon = start_daemon(tmp_path, "last", settings)
        everything = input_coordinates(kafka_bootstrap, topics["input"])
        reader.read_until(lambda rs: set(answers(rs, topics["output"])) >= everything)
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
        assert_each_once(reader, topics, kafka_bootstrap)
    finally:
        if daemon is not None:
            daemon.proc.kill()
        rest.set()
        producer.join()
        reader.close()


def test_exactly_once_producer_settings_carry_a_stable_transactional_id() -> None:
    cfg = load_config(None, ["delivery.guarantee=exactly_once", "kafka.group_id=g",
                             "kafka.client_id=pod-3"])
    from streamem.clients import kafka_python

    assert kafka_python.transactional_producer_settings(cfg)["transactional_id"] == "g.pod-3"
    assert kafka_python.consumer_settings(cfg)["isolation_level"] == "read_committed"
    explicit = load_config(None, ["delivery.guarantee=exactly_once",
                                  "delivery.transactional_id=t-1"])
    assert kafka_python.transactional_producer_settings(explicit)["transactional_id"] == "t-1"
    assert kafka_python.consumer_settings(load_config(None))["isolation_level"] == \
        "read_uncommitted"


@pytest.mark.kafka
def test_two_instances_joining_and_leaving_answer_each_input_exactly_once(
        kafka_bootstrap, topic_factory, tmp_path: Path) -> None:
    X, _ = MIX.sample(40_000, random_state=5)
    topics = make_topics(topic_factory, partitions=4)
    values = _with_poison(block_messages(X, 100))
    base = dict(input__format="block", kafka__max_poll_records=10, **EO)
    a = daemon_settings(kafka_bootstrap, tmp_path / "a", topics, kafka__client_id="a", **base)
    b = daemon_settings(kafka_bootstrap, tmp_path / "b", topics, kafka__client_id="b", **base)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    rest = threading.Event()
    producer = _trickle(kafka_bootstrap, topics["input"], values, rest)
    reader = CommittedReader(kafka_bootstrap, topics["output"], topics["dead"])
    first = start_daemon(tmp_path, "a", a)
    second = None
    try:
        reader.read_until(lambda rs: len(rs) >= 20)
        second = start_daemon(tmp_path, "b", b)  # joins: the group rebalances
        reader.read_until(lambda rs: any(r.topic == topics["output"] for r in rs)
                          and len(second.events("partitions_assigned")) >= 1)
        seen = len(reader.records)
        reader.read_until(lambda rs: len(rs) >= seen + 20)
        assert first.stop() == 0, first.log_tail()  # leaves: the group rebalances again
        seen = len(reader.records)
        reader.read_until(lambda rs: len(rs) >= seen + 20)
        assert producer.is_alive(), "the rebalances came after the stream ended"
        rest.set()
        producer.join()
        assert_each_once(reader, topics, kafka_bootstrap)
        assert second.stop() == 0, second.log_tail()
    finally:
        first.proc.kill()
        if second is not None:
            second.proc.kill()
        rest.set()
        producer.join()
        reader.close()


@pytest.mark.kafka
def test_a_zombie_resumed_after_its_session_cannot_commit(
        kafka_bootstrap, topic_factory, tmp_path: Path) -> None:
    X, _ = MIX.sample(40_000, random_state=6)
    topics = make_topics(topic_factory, partitions=2)
    values = block_messages(X, 100)
    base = dict(input__format="block", kafka__max_poll_records=10,
                delivery__transaction_min_s=1, **EO)
    for d in ("z", "b"):
        (tmp_path / d).mkdir()
    z = daemon_settings(kafka_bootstrap, tmp_path / "z", topics, kafka__client_id="z", **base)
    b = daemon_settings(kafka_bootstrap, tmp_path / "b", topics, kafka__client_id="b", **base)
    rest = threading.Event()
    producer = _trickle(kafka_bootstrap, topics["input"], values, rest)
    reader = CommittedReader(kafka_bootstrap, topics["output"], topics["dead"])
    zombie = start_daemon(tmp_path, "zombie", z)
    other = None
    try:
        reader.read_until(lambda rs: len(rs) >= 20)
        time.sleep(0.5)  # into the next transaction, its outputs sent
        zombie.proc.send_signal(signal.SIGSTOP)
        other = start_daemon(tmp_path, "other", b)
        seen = len(reader.records)
        reader.read_until(lambda rs: len(rs) >= seen + 20)  # the other took over
        zombie.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + WAIT_S
        while not zombie.events("transaction_aborted") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert zombie.events("transaction_aborted"), zombie.log_tail()
        rest.set()
        producer.join()
        assert_each_once(reader, topics, kafka_bootstrap)
        assert zombie.stop() == 0, zombie.log_tail()
        assert other.stop() == 0, other.log_tail()
    finally:
        zombie.proc.send_signal(signal.SIGCONT)
        zombie.proc.kill()
        if other is not None:
            other.proc.kill()
        rest.set()
        producer.join()
        reader.close()
