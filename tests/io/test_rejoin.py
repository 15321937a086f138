"""The consumer re-joins its group when left without partitions and out of the group; a member
that simply has none (more members than partitions) stays put."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from prometheus_client import CollectorRegistry

from streamem import assemble
from streamem.config import load_config
from streamem.errors import TransportError
from streamem.io.kafka import KafkaSource
from streamem.metrics import Metrics

REJOIN_AFTER_S = 2.0


def source(bootstrap: str, topic: str, group: str, metrics: Metrics) -> KafkaSource:
    cfg = load_config(None, [f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
                             f"kafka.input_topic={topic}", "kafka.session_timeout_ms=6000",
                             "kafka.heartbeat_interval_ms=1000",
                             f"kafka.unassigned_rejoin_s={REJOIN_AFTER_S}"], environ={})
    return assemble.kafka_source(cfg, metrics)


def poll_until(sources: list, done, timeout_s: float) -> bool:
    """Poll every source (a KafkaSource, or a KafkaConsumer) until ``done()``; False on timeout.
    Poll errors are what the runtime would count and back off from: ignored here."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for s in sources:
            try:
                s.poll(100) if isinstance(s, KafkaConsumer) else s.poll(0.1)  # ms, s
            except TransportError:
                time.sleep(0.05)
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


def sticky_member(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    """A plain kafka-python consumer holding ``topic`` with the sticky protocol only; one that
    gets no partitions within 10 s (the kafka-python stall this module is about) is replaced."""
    for _ in range(3):
        member = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                               partition_assignment_strategy=[StickyPartitionAssignor],
                               session_timeout_ms=6000, heartbeat_interval_ms=1000)
        if poll_until([member], lambda m=member: bool(m.assignment()), 10):
            return member
        member.close()
    pytest.fail("a plain kafka-python consumer got no partitions in three tries")


@pytest.mark.kafka
def test_healthz_fails_while_re_joining_cannot_help_and_recovers_when_it_can(
        kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory("cannot-join", partitions=2)
    group = f"group-{topic}"
    # A member speaking no assignment protocol ours knows: the broker refuses us the group.
    other = sticky_member(kafka_bootstrap, topic, group)
    metrics = Metrics(CollectorRegistry())
    src = None
    try:
        src = source(kafka_bootstrap, topic, group, metrics)
        assert poll_until([other, src], lambda: metrics.unhealthy is not None,
                          4 * REJOIN_AFTER_S + 10)
        assert src.rejoins >= 3 and not src.assignment()
        other.close()
        assert poll_until([src], lambda: bool(src.assignment()), REJOIN_AFTER_S + 20)
        assert poll_until([src], lambda: metrics.unhealthy is None, 5)
    finally:
        other.close()
        if src is not None:
            src.close()
