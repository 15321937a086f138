"""Two leader threads of one group against the real broker: one leads at a time, the role is
visible (``streamem_leader``, ``leader_gained``/``leader_lost``, the writer header on every
state record) and the versions on the state topic strictly increase across the hand-over."""

from __future__ import annotations

import logging
import time

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from sharing_helpers import _read, collapsed

from streamem.clients import kafka_python
from streamem.config import load_config
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.model.delta import warmup_delta
from streamem.sharing.leader import Leader
from streamem.sharing.records import VERSION_HEADER, WRITER_HEADER, header
from streamem.synthetic import Mixture

MIX = Mixture.random(3, 4, random_state=4)


def until(what, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.kafka
def test_one_leader_at_a_time_visible_with_increasing_versions(
        kafka_bootstrap, topic_factory, caplog) -> None:
    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_bootstrap}",
                             "kafka.session_timeout_ms=6000", "kafka.heartbeat_interval_ms=500"])
    stats, state = topic_factory("stats"), topic_factory("state", compacted=True)
    params = topic_factory("model")
    group = f"g-{stats}"
    registries = [CollectorRegistry(), CollectorRegistry()]

    def leader(name: str, registry: CollectorRegistry) -> Leader:
        return Leader(lambda: OnlineGMM(n_components=3, warmup=300, random_state=0),
                      kafka_python.consumer_settings(cfg), kafka_python.producer_settings(cfg),
                      group, stats, state, name, Metrics(registry), model_topic=params,
                      publish_interval_s=0.2)

    def gauge(i: int) -> float | None:
        return registries[i].get_sample_value("streamem_leader")

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)

    def send_deltas(seed: int) -> None:
        for s in range(3):
            X = MIX.sample(200, random_state=100 * seed + s)[0]
            producer.send(stats, key=b"w", value=warmup_delta("full", 3, X).to_bytes())
        producer.flush()

    def writers() -> set[str]:
        return {header(r.headers, WRITER_HEADER) for r in _read(kafka_bootstrap, state,
                                                                committed=True)}

    caplog.set_level(logging.INFO, logger="streamem.sharing.leader")
    a, b = leader("inst-a", registries[0]), leader("inst-b", registries[1])
    try:
        a.start()
        until(lambda: a.leading)
        b.start()
        send_deltas(1)
        until(lambda: "inst-a" in writers())
        assert not b.leading and gauge(0) == 1 and gauge(1) == 0

        a.stop.set()
        a.join(30)
        until(lambda: b.leading)
        assert gauge(0) == 0 and gauge(1) == 1
        send_deltas(2)
        until(lambda: "inst-b" in writers())
    finally:
        for thread in (a, b):
            thread.stop.set()
            thread.join(30)
        producer.close()

    assert gauge(1) == 0
    records = _read(kafka_bootstrap, state, committed=True)
    assert all(r.key == group.encode() for r in records), "one key: the group's"
    log = [(header(r.headers, WRITER_HEADER), int(header(r.headers, VERSION_HEADER)))
           for r in records]
    versions = [v for _, v in log]
    assert versions == sorted(versions) and len(set(versions)) == len(versions), log
    assert all(OnlineGMM.from_bytes(r.value).version_ == v for r, (_, v) in
               zip(records, log, strict=True))
    assert collapsed([w for w, _ in log]) == ["inst-a", "inst-b"]
    events = [(r.msg, r.instance) for r in caplog.records
              if r.msg in ("leader_gained", "leader_lost")]
    assert events == [("leader_gained", "inst-a"), ("leader_lost", "inst-a"),
                      ("leader_gained", "inst-b"), ("leader_lost", "inst-b")]
    published = [(header(r.headers, WRITER_HEADER), int(header(r.headers, VERSION_HEADER)))
                 for r in _read(kafka_bootstrap, params, committed=True)]
    assert published == log, "the JSON parameters go with each state, named the same"
    final = OnlineGMM.from_bytes(records[-1].value)
    assert final.n_seen_ == 1200, "every delta folded once across the hand-over"


@pytest.mark.kafka
def test_a_warm_up_no_state_holds_yet_is_folded_again_by_the_next_leader(
        kafka_bootstrap, topic_factory) -> None:
    """A leader stopped while its model still warms up publishes nothing and commits no stats
    offset: the next one folds those deltas again, so their points are not lost."""
    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_bootstrap}",
                             "kafka.session_timeout_ms=6000", "kafka.heartbeat_interval_ms=500"])
    stats, state = topic_factory("stats"), topic_factory("state", compacted=True)
    group = f"g-{stats}"

    def leader(name: str) -> Leader:
        return Leader(lambda: OnlineGMM(n_components=3, warmup=1000, random_state=0),
                      kafka_python.consumer_settings(cfg), kafka_python.producer_settings(cfg),
                      group, stats, state, name, Metrics(CollectorRegistry()),
                      publish_interval_s=0.2)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)

    def send_deltas(seed: int, n: int) -> None:
        for s in range(n):
            X = MIX.sample(200, random_state=100 * seed + s)[0]
            producer.send(stats, key=b"w", value=warmup_delta("full", 3, X).to_bytes())
        producer.flush()

    a = leader("inst-a")
    try:
        a.start()
        until(lambda: a.leading)
        send_deltas(1, 3)
        until(lambda: a.model is not None and a.model.n_seen_ == 600)
    finally:
        a.stop.set()
        a.join(30)
    assert _read(kafka_bootstrap, state, committed=True) == [], "no state while warming up"
    b = leader("inst-b")
    try:
        b.start()
        until(lambda: b.leading)
        send_deltas(2, 3)
        until(lambda: _read(kafka_bootstrap, state, committed=True))
    finally:
        b.stop.set()
        b.join(30)
        producer.close()
    final = OnlineGMM.from_bytes(_read(kafka_bootstrap, state, committed=True)[-1].value)
    assert final.initialized_ and final.n_seen_ == 1200
