"""A worker against the real broker: ready once the state topic is read to its end, answers
with the newest state there, and splits deltas too large for one record."""

from __future__ import annotations

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamem.clients import kafka_python
from streamem.config import load_config
from streamem.formats.block import encode_block
from streamem.io.kafka import KafkaSink
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.model.delta import StatsDelta
from streamem.sharing.records import state_headers
from streamem.sharing.worker import Worker
from streamem.synthetic import Mixture

MIX = Mixture.random(3, 4, random_state=2)


@pytest.fixture
def parts(kafka_bootstrap, topic_factory):
    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_bootstrap}"])
    stats, state = topic_factory("stats"), topic_factory("state", compacted=True)
    sink = KafkaSink.create(kafka_python.producer_settings(cfg), max_message_bytes=20_000)
    yield cfg, stats, state, sink
    sink.close()


def make_worker(cfg, stats, state, sink) -> Worker:
    return Worker(OnlineGMM(n_components=3, warmup=300, random_state=0), sink,
                  kafka_python.consumer_settings(cfg), stats, state, "w-1",
                  Metrics(CollectorRegistry()), delta_interval_s=3600)


@pytest.mark.kafka
def test_worker_ready_after_reading_the_state_and_answers_with_the_newest(
        parts, kafka_bootstrap) -> None:
    cfg, stats, state, sink = parts
    worker = make_worker(cfg, stats, state, sink)
    try:
        assert not worker.has_parameters
        worker.before_batch({("points", 0)})
        assert worker.has_parameters, "an empty state topic read to its end: ready"
        assert not worker.model.initialized_

        leader = OnlineGMM(n_components=3, warmup=300, random_state=0)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for seed in range(3):
            leader.partial_fit(MIX.sample(400, random_state=seed)[0])
            producer.send(state, key=b"g", value=leader.to_bytes(),
                          headers=state_headers("leader-1", int(leader.version_)))
        producer.flush()
        producer.close()
        worker.before_batch({("points", 0), ("points", 1)})  # a new partition: read to the end
        assert worker.model.version_ == leader.version_ and worker.staleness == 0
        X = MIX.sample(50, random_state=9)[0]
        result = worker.answer(X)
        np.testing.assert_array_equal(result.labels, leader.predict(X))
        assert result.model_version == leader.version_
        assert worker.model.version_ == leader.version_, "answering leaves the model as it is"
    finally:
        worker.close()


@pytest.mark.kafka
def test_between_batches_the_state_topic_is_polled_at_most_every_interval(
        parts, monkeypatch) -> None:
    """A poll costs kafka-python a round trip to its network thread: batches in quick
    succession poll the state topic once per ``POLL_INTERVAL_S``, while a newly assigned
    partition still reads it to its end at once."""
    from streamem.sharing import worker as worker_module

    cfg, stats, state, sink = parts
    worker = make_worker(cfg, stats, state, sink)
    try:
        worker.before_batch({("points", 0)})  # reads to the end: ready
        polls: list[dict] = []
        real_poll = worker._consumer.poll
        monkeypatch.setattr(worker._consumer, "poll",
                            lambda **kw: polls.append(kw) or real_poll(**kw))
        monkeypatch.setattr(worker_module, "POLL_INTERVAL_S", 3600.0)
        for _ in range(3):
            worker.before_batch({("points", 0)})
        assert polls == [], "polled within the interval"
        worker.before_batch({("points", 0), ("points", 1)})
        assert polls and polls[0]["timeout_ms"] > 0, "a new partition reads to the end"
        monkeypatch.setattr(worker_module, "POLL_INTERVAL_S", 0.0)
        polls.clear()
        worker.before_batch({("points", 0), ("points", 1)})
        assert polls == [{"timeout_ms": 0}], "once the interval is over, one idle poll"
    finally:
        worker.close()


@pytest.mark.kafka
def test_too_large_deltas_are_sent_in_halves_and_lose_no_point(parts, kafka_bootstrap) -> None:
    from kafka_helpers import consume_all

    cfg, stats, state, sink = parts
    worker = make_worker(cfg, stats, state, sink)
    try:
        for seed in range(4):  # warm-up deltas carry their points: 4 x 200 x 4 float64
            worker.answer(MIX.sample(200, random_state=seed)[0])
        worker.send()
        sink.flush(30)
    finally:
        worker.close()
    records = consume_all(kafka_bootstrap, stats, 2, timeout_s=10)
    deltas = [StatsDelta.from_bytes(r.value) for r in records]
    assert len(deltas) >= 2 and all(len(r.value) <= 20_000 for r in records)
    assert {r.key for r in records} == {b"w-1"}
    assert sum(d.n_points for d in deltas) == 800
    assert sum(len(d.points) for d in deltas) == 800


@pytest.mark.kafka
def test_readyz_waits_while_the_worker_has_no_parameters(parts, kafka_bootstrap) -> None:
    """A state topic that cannot be read to its end in time (its fetches paused here) keeps
    ``/readyz`` at 503 while the loop answers with what it has; ready once it is read."""
    from streamem.io.memory import MemorySink, MemorySource
    from streamem.runtime import Runtime

    cfg, stats, state, sink = parts
    leader = OnlineGMM(n_components=3, warmup=300, random_state=0)
    leader.partial_fit(MIX.sample(400, random_state=1)[0])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(state, key=b"g", value=leader.to_bytes(),
                  headers=state_headers("leader-1", int(leader.version_)))
    producer.flush()
    producer.close()
    worker = Worker(OnlineGMM(n_components=3, warmup=300, random_state=0), sink,
                    kafka_python.consumer_settings(cfg), stats, state, "w-1",
                    Metrics(CollectorRegistry()), delta_interval_s=3600, read_timeout_s=0.5)
    worker._consumer.pause(worker._tp)
    values = [encode_block(MIX.sample(20, random_state=s)[0]) for s in range(20)]
    metrics = Metrics(CollectorRegistry())
    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_bootstrap}", "input.format=block"])
    runtime = Runtime(cfg, MemorySource(values, batch_size=2), MemorySink(), worker.model,
                      metrics, share=worker)
    try:
        for _ in range(3):
            runtime.step()
            assert not metrics.ready and metrics.registry.get_sample_value("streamem_ready") == 0
        assert worker.model.version_ == 0, "not read: the fresh model answers"
        worker._consumer.resume(worker._tp)
        runtime.step()
        assert metrics.ready and metrics.registry.get_sample_value("streamem_ready") == 1
        assert worker.model.version_ == leader.version_
    finally:
        worker.close()


@pytest.mark.kafka
def test_before_the_first_state_answers_are_those_of_one_model(parts) -> None:
    """Until a state arrives, a worker answers as one unshared model fed the same batches
    would (so ids agree from batch to batch), stamped with the version read (none: 0, so that
    a partition's versions never go back when the first state arrives); its deltas carry every
    point, and its own model (what the checkpoint holds) stays as it started."""
    cfg, stats, state, sink = parts
    worker = make_worker(cfg, stats, state, sink)
    alone = OnlineGMM(n_components=3, warmup=300, random_state=0)
    try:
        worker.before_batch({("points", 0)})
        for seed in range(4):
            X = MIX.sample(200, random_state=seed)[0]
            got, want = worker.answer(X), alone.partial_fit(X)
            np.testing.assert_array_equal(got.labels, want.labels)
            assert got.model_version == 0, "stamped with the version read: none yet"
        assert alone.initialized_ and not worker.model.initialized_
        assert worker.model.n_seen_ == 0
        assert sum(d.n_points for d in worker._pending) == 800
        assert all(d.warmup and len(d.points) == d.n_points for d in worker._pending)
    finally:
        worker.close()


@pytest.mark.kafka
def test_a_clean_stop_before_the_first_state_leaves_its_deltas_to_the_warm_up(
        parts, kafka_bootstrap, caplog) -> None:
    """A standby instance stopped while the leader still warms up (it commits nothing before
    its first state) does not wait out the whole fold timeout: its deltas are on the stats
    topic, uncommitted, for the leader to learn."""
    import logging
    import time

    from kafka_helpers import consume_all
    from sharing_helpers import wait_for

    from streamem.sharing.leader import Leader
    from streamem.sharing.worker import WARMUP_WAIT_S

    cfg, stats, state, sink = parts

    def leader(name: str) -> Leader:
        return Leader(lambda: OnlineGMM(n_components=3, warmup=100_000, random_state=0),
                      kafka_python.consumer_settings(cfg), kafka_python.producer_settings(cfg),
                      f"g-{stats}", stats, state, name, Metrics(CollectorRegistry()),
                      publish_interval_s=0.2)

    a, b = leader("inst-a"), leader("w-1")
    a.start()
    wait_for(lambda: a.leading, 60, lambda: "no instance leads")
    b.start()
    roles: list[tuple[bool, float]] = []  # who leads once both are in, since when

    def settled() -> bool:  # the same one leads for 2 s in a stable group of both
        now = (a.leading, time.monotonic())
        if _members(kafka_bootstrap, f"g-{stats}.leader") != 2 or a.leading == b.leading:
            roles.clear()
        elif not roles or roles[0][0] != now[0]:
            roles[:] = [now]
        return bool(roles) and now[1] - roles[0][1] >= 2.0

    wait_for(settled, 60, lambda: "the second leader thread did not join, or none leads")
    leading, standby = (a, b) if a.leading else (b, a)
    worker = Worker(OnlineGMM(n_components=3, warmup=100_000, random_state=0), sink,
                    kafka_python.consumer_settings(cfg), stats, state, "w-1",
                    Metrics(CollectorRegistry()), delta_interval_s=3600, leader=standby)
    try:
        worker.before_batch({("points", 0)})
        worker.answer(MIX.sample(200, random_state=1)[0])
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="streamem.sharing.worker"):
            worker.settle(timeout_s=30)
        waited = time.monotonic() - start
        events = [r.getMessage() for r in caplog.records]
        assert "deltas_left_to_warm_up" in events and "deltas_not_folded" not in events
        assert waited < 30 - WARMUP_WAIT_S, f"waited {waited:.1f} s for a fold that cannot come"
        wait_for(lambda: leading.model is not None and leading.model.n_seen_ == 200, 30,
                 lambda: "the leader did not learn the stopped worker's warm-up points")
    finally:
        worker.close()
        for thread in (a, b):
            thread.stop.set()
            thread.join(30)
    assert sum(StatsDelta.from_bytes(r.value).n_points
               for r in consume_all(kafka_bootstrap, stats, 1, timeout_s=10)) == 200


def _members(bootstrap: str, group: str) -> int:
    """Members of a stable consumer group (0 while it rebalances)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        description = admin.describe_groups([group])[group]
    finally:
        admin.close()
    return len(description["members"]) if description["group_state"] == "Stable" else 0
