"""The test broker itself: a produce/consume round trip; a restart keeps data and offsets."""

from __future__ import annotations

import socket
from collections import defaultdict

import pytest
from kafka_helpers import committed_offsets, consume_all, produce


def test_round_trip_keeps_keys_headers_and_partitioning(kafka_bootstrap, topic_factory):
    topic = topic_factory("broker-roundtrip", partitions=3)
    n = 60
    values = [f"value-{i}".encode() for i in range(n)]
    keys = [f"key-{i % 7}".encode() for i in range(n)]
    headers = [[("index", str(i).encode()), ("source", b"test")] for i in range(n)]
    produce(kafka_bootstrap, topic, values, keys=keys, headers=headers)
    produce(kafka_bootstrap, topic, [b"pinned"], partition=2)

    records = consume_all(kafka_bootstrap, topic, n + 1)

    assert len(records) == n + 1
    by_value = {r.value: r for r in records}
    for i in range(n):
        record = by_value[values[i]]
        assert record.key == keys[i]
        assert list(record.headers) == headers[i]
    assert by_value[b"pinned"].partition == 2
    partitions_of_key = defaultdict(set)
    offsets = defaultdict(list)
    for r in records:
        offsets[r.partition].append(r.offset)
        if r.key is not None:
            partitions_of_key[r.key].add(r.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1
    assert all(o == list(range(len(o))) for o in offsets.values())


def _accepts_connections(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def test_restart_keeps_topics_and_committed_offsets(kafka_broker, topic_factory):
    if kafka_broker.external:
        pytest.skip("an external broker (STREAMEM_KAFKA_BOOTSTRAP) cannot be restarted")
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory("broker-restart", partitions=2)
    group = f"{topic}-group"
    first = [f"first-{i}".encode() for i in range(20)]
    produce(bootstrap, topic, first, keys=[str(i).encode() for i in range(20)])
    assert len(consume_all(bootstrap, topic, len(first), group_id=group)) == len(first)
    before = committed_offsets(bootstrap, group, topic)
    assert sum(before.values()) == len(first)

    kafka_broker.stop()
    try:
        assert not _accepts_connections(bootstrap)
    finally:
        kafka_broker.start()

    assert committed_offsets(bootstrap, group, topic) == before
    assert sorted(r.value for r in consume_all(bootstrap, topic, len(first))) == sorted(first)
    second = [f"second-{i}".encode() for i in range(5)]
    produce(bootstrap, topic, second)
    resumed = consume_all(bootstrap, topic, len(second), timeout_s=90, group_id=group)
    assert sorted(r.value for r in resumed) == sorted(second)
