"""Two daemons in one consumer group split the partitions, and one takes over when the other
stops; every input is answered."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from daemon_helpers import WAIT_S, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import committed_offsets, consume_all, produce

from streamem.formats.block import encode_block
from streamem.synthetic import Mixture

MIX = Mixture.random(8, 8, random_state=5)
PARTITIONS, WAVE_MESSAGES, POINTS_PER_MESSAGE = 4, 40, 250


def wave(start: int, n_messages: int) -> tuple[list[bytes], list[bytes]]:
    """Block messages whose ids continue from ``start``; keys spread them over partitions."""
    X, _ = MIX.sample(n_messages * POINTS_PER_MESSAGE, random_state=start)
    values = [encode_block(X[i * POINTS_PER_MESSAGE:(i + 1) * POINTS_PER_MESSAGE],
                                 ids=range(start + i * POINTS_PER_MESSAGE,
                                           start + (i + 1) * POINTS_PER_MESSAGE))
              for i in range(n_messages)]
    return values, [b"key-%d" % (start + i) for i in range(n_messages)]


def assigned_partitions(daemon) -> list[set[str]]:
    return [set(e["partitions"]) for e in daemon.events("partitions_assigned")]


@pytest.mark.kafka
def test_two_instances_split_partitions_and_hand_over(kafka_bootstrap, topic_factory,
                                                       tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=PARTITIONS)
    common = dict(input__format="block", kafka__session_timeout_ms=6000,
                  kafka__max_poll_interval_ms=20000)
    a = start_daemon(tmp_path, "a", daemon_settings(
        kafka_bootstrap, tmp_path, topics, checkpoint__path=tmp_path / "a.npz", **common))
    b = start_daemon(tmp_path, "b", daemon_settings(
        kafka_bootstrap, tmp_path, topics, checkpoint__path=tmp_path / "b.npz", **common))
    group = f"group-{topics['input']}"
    total = 0
    try:
        # Wait until the group has settled with both members holding partitions.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last_a, last_b = assigned_partitions(a)[-1:], assigned_partitions(b)[-1:]
            if last_a and last_b and last_a[0] and last_b[0] and not last_a[0] & last_b[0]:
                break
            time.sleep(0.5)
        assert assigned_partitions(a) and assigned_partitions(b), a.log_tail() + b.log_tail()
        split = assigned_partitions(a)[-1], assigned_partitions(b)[-1]
        assert split[0] and split[1] and not split[0] & split[1]
        assert len(split[0] | split[1]) == PARTITIONS

        values, keys = wave(0, WAVE_MESSAGES)
        produce(kafka_bootstrap, topics["input"], values, keys=keys)
        total += len(values)
        wait_for_commits(kafka_bootstrap, group, topics["input"], total)

        assert b.stop() == 0, b.log_tail()  # a rebalance hands b's partitions to a
        values, keys = wave(10**6, WAVE_MESSAGES)
        produce(kafka_bootstrap, topics["input"], values, keys=keys)
        total += len(values)
        # Offsets are committed only after their outputs are acknowledged.
        wait_for_commits(kafka_bootstrap, group, topics["input"], total)
        assert a.stop() == 0, a.log_tail()
    finally:
        for d in (a, b):
            d.proc.kill()

    records = consume_all(kafka_bootstrap, topics["output"], total, timeout_s=60)
    counts = answered(records)
    assert len(counts) == total, "every input message has an output"
    assert max(counts.values()) <= 2, "duplicates only from a batch in flight at the handover"
    assert assigned_partitions(a)[-1] == split[0] | split[1], "a took over every partition"
    assert sum(committed_offsets(kafka_bootstrap, group, topics["input"]).values()) == total


def wait_for_commits(bootstrap: str, group: str, topic: str, total: int) -> None:
    """Wait until the group has committed ``total`` messages of ``topic``."""
    deadline = time.monotonic() + WAIT_S
    while sum(committed_offsets(bootstrap, group, topic).values()) < total:
        assert time.monotonic() < deadline, f"the group committed fewer than {total} messages"
        time.sleep(0.2)


def answered(records: list) -> Counter:
    """How many outputs answer each input message ``(partition, offset)``."""
    return Counter((p["partition"], p["offset"]) for p in points_of(records) if p["index"] == 0)
