"""A worker against the real broker: ready once the state topic is read to its end, answers
with the newest state there, and splits deltas too large for one record."""

from __future__ import annotations

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamem.clients import kafka_python
from streamem.config import load_config
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
