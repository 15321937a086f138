"""The consumer re-joins its group when left without partitions and out of the group; a member
that simply has none (more members than partitions) stays put."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from streamem.config import load_config
from streamem.io.kafka import KafkaSource
from streamem.metrics import Metrics

REJOIN_AFTER_S = 2.0


def source(bootstrap: str, topic: str, group: str, metrics: Metrics) -> KafkaSource:
    cfg = load_config(None, [f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
                             f"kafka.input_topic={topic}", "kafka.session_timeout_ms=6000",
                             "kafka.heartbeat_interval_ms=1000",
                             f"kafka.unassigned_rejoin_s={REJOIN_AFTER_S}"], environ={})
    return KafkaSource.create(cfg, metrics)


def poll_until(sources: list[KafkaSource], done, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for s in sources:
            s.poll(0.1)
        if done():
            return True
    return False


@pytest.mark.kafka
def test_a_member_left_out_of_its_group_rejoins_and_gets_its_partitions(
        kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory("rejoin", partitions=2)
    metrics = Metrics(CollectorRegistry())
    src = source(kafka_bootstrap, topic, f"group-{topic}", metrics)
    try:
        assert poll_until([src], lambda: bool(src.assignment()), 20)
        # Leave the group behind the daemon's back: no partitions, not a member any more.
        src._consumer.unsubscribe()
        assert not src.assignment()
        assert poll_until([src], lambda: bool(src.assignment()), REJOIN_AFTER_S + 15)
        assert src.rejoins >= 1
        assert metrics.registry.get_sample_value("streamem_kafka_group_rejoins_total") >= 1
        assert metrics.unhealthy is None
    finally:
        src.close()


@pytest.mark.kafka
def test_a_healthy_member_without_partitions_does_not_rejoin(kafka_bootstrap,
                                                             topic_factory) -> None:
    topic = topic_factory("idle-member", partitions=1)
    metrics = Metrics(CollectorRegistry())
    a = source(kafka_bootstrap, topic, f"group-{topic}", metrics)
    b = source(kafka_bootstrap, topic, f"group-{topic}", metrics)
    try:
        assert poll_until([a, b], lambda: len(a.assignment() | b.assignment()) == 1
                          and a._consumer._coordinator.stable()
                          and b._consumer._coordinator.stable(), 30)
        settled = a.rejoins, b.rejoins
        poll_until([a, b], lambda: False, 3 * REJOIN_AFTER_S)
        assert (a.rejoins, b.rejoins) == settled, "the idle member stays in the group"
        assert len(a.assignment() | b.assignment()) == 1
        assert metrics.unhealthy is None
    finally:
        a.close()
        b.close()
