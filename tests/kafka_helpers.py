"""Test helpers for the real Kafka broker: the broker handle, produce, consume, committed offsets.

The fixtures in ``tests/conftest.py`` hand out a :class:`KafkaBroker`; tests import the rest with
``from kafka_helpers import produce, consume_all, committed_offsets``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from streamem.io.kafka_admin import BrokerError, LocalBroker, free_port

__all__ = ["BrokerError", "KafkaBroker", "committed_offsets", "consume_all", "free_port",
           "produce"]

Headers = Sequence[tuple[str, bytes]]


@dataclass
class KafkaBroker:
    """A broker for the test session: private (a :class:`~streamem.io.kafka_admin.LocalBroker`
    run by ``kafka-local.sh``) or external.

    Attributes
    ----------
    bootstrap : str
        ``host:port`` for clients.
    external : bool
        True for the broker named by ``STREAMEM_KAFKA_BOOTSTRAP``: it cannot be stopped or started.
    data_dir : Path or None
        The private broker's storage, config and logs (``server.log``, ``kafka.out``).
    """

    bootstrap: str
    external: bool
    data_dir: Path | None = None
    _local: LocalBroker | None = field(default=None, repr=False)

    @classmethod
    def private(cls, data_dir: Path) -> KafkaBroker:
        """Describe (not start) a private broker on free loopback ports storing into `data_dir`."""
        local = LocalBroker(data_dir)
        return cls(local.bootstrap, external=False, data_dir=data_dir, _local=local)

    def start(self) -> None:
        """Start the broker (same port and data dir as before) and block until it serves clients."""
        self._private("start").start()

    def stop(self) -> None:
        """Stop the broker; its topics and committed offsets survive a later :meth:`start`."""
        self._private("stop").stop()

    def log_tail(self, n_lines: int = 40) -> str:
        """The last `n_lines` of the broker's logs, for failure messages."""
        return "" if self._local is None else self._local.log_tail(n_lines)

    def _private(self, command: str) -> LocalBroker:
        if self._local is None:
            raise BrokerError(
                f"cannot {command} the external broker {self.bootstrap} "
                "(STREAMEM_KAFKA_BOOTSTRAP); unset it to let the tests run their own broker"
            )
        return self._local


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[Headers] | None = None,
    partition: int | None = None,
    timestamps: Sequence[int] | None = None,
) -> None:
    """Send `values` (with the i-th key, header list and timestamp) and raise unless every send
    was acked."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futures = [
            producer.send(
                topic,
                value=value,
                key=None if keys is None else keys[i],
                headers=None if headers is None else list(headers[i]),
                partition=partition,
                timestamp_ms=None if timestamps is None else timestamps[i],
            )
            for i, value in enumerate(values)
        ]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close(timeout=10)


def consume_all(
    bootstrap: str,
    topic: str,
    n_expected: int,
    timeout_s: float = 60,
    group_id: str | None = None,
) -> list[ConsumerRecord]:
    """Read `topic` with a fresh consumer until `n_expected` records arrived or `timeout_s` passed.

    Without `group_id` the consumer is assigned every partition and reads from the beginning.
    With `group_id` it joins that group, starts at the group's committed offsets (earliest when
    there are none) and commits what it read before closing.

    Returns
    -------
    list of ConsumerRecord
        What arrived, in arrival order (order within a partition is kept); may be longer or
        shorter than `n_expected`: the caller asserts.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
    )
    deadline = time.monotonic() + timeout_s
    records: list[ConsumerRecord] = []
    try:
        if group_id is None:
            partitions = _wait_for_partitions(consumer, topic, deadline)
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.subscribe([topic])
        while len(records) < n_expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        if group_id is not None and records:
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return records


def _wait_for_partitions(
    consumer: KafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions in the broker's metadata")
        time.sleep(0.2)


def committed_offsets(
    bootstrap: str, group_id: str, topic: str, timeout_s: float = 30
) -> dict[int, int]:
    """The offsets `group_id` committed on `topic`, by partition (the next offset to read).

    Retries while the group coordinator is loading, e.g. just after a broker restart.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                offsets = admin.list_group_offsets(group_id).get(group_id, {})
                break
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
