"""Kafka as source and sink, with kafka-python 3.x.

:class:`KafkaSource` reads the input topic in a consumer group with auto-commit off; the runtime
commits ``offset + 1`` synchronously after each batch's outputs are acknowledged.
:class:`KafkaSink` produces with ``acks=all`` and idempotence, and checks every send's future at
:meth:`KafkaSink.flush`. :func:`connect` builds either, backing off exponentially while no
broker answers.

kafka-python runs rebalance callbacks on its I/O thread, where a blocking ``commit()`` raises,
so the listener here only records what was revoked; the runtime drops in-flight records of
partitions no longer in :meth:`KafkaSource.assignment`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from streamem.errors import TransportError
from streamem.io import crc32c
from streamem.io.base import Backoff, CommitFailed, Headers, Record, RecordTooLarge

if TYPE_CHECKING:
    from streamem.config import Config
    from streamem.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
TP = tuple[str, int]
_REBALANCED = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
               UnknownMemberIdError)


class _Listener(ConsumerRebalanceListener):
    """Logs rebalances. Called on kafka-python's I/O thread, where a blocking commit() raises:
    the loop commits after every batch instead, so there is nothing to do here but tell."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions_revoked", extra={"partitions": sorted(map(str, revoked))})

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", extra={"partitions": sorted(map(str, assigned))})


class KafkaSource:
    """The input topic, read in the consumer group ``cfg.kafka.group_id``.

    Parameters
    ----------
    consumer : KafkaConsumer
        Built by :meth:`create`; auto-commit must be off.
    topics : list of str
        Topics to subscribe to.
    commit_timeout_s : float
        Longest wait for one synchronous commit.
    """

    def __init__(self, consumer: KafkaConsumer, topics: list[str],
                 commit_timeout_s: float = 30.0, auto_offset_reset: str = "earliest") -> None:
        self._consumer = consumer
        self._listener = _Listener()
        self._commit_timeout_ms = int(commit_timeout_s * 1000)
        self._reset = auto_offset_reset
        self._next: dict[TP, int] = {}
        consumer.subscribe(topics=topics, listener=self._listener)

    @staticmethod
    def settings(cfg: Config) -> dict[str, Any]:
        """The KafkaConsumer keyword arguments :meth:`create` uses.

        Fetches of up to 8 MiB per partition (kafka-python's default is 1 MiB) keep a backlog
        of multi-point messages flowing in few round trips; ``kafka.client_options`` can
        override them, not the group and commit settings.
        """
        k = cfg.kafka
        return {
            "bootstrap_timeout_ms": min(k.request_timeout_ms, 10_000),
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "fetch_max_bytes": 64 * 1024 * 1024,
            **k.client_kwargs(),
            "group_id": k.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": k.auto_offset_reset,
            "max_poll_records": k.max_poll_records,
            "session_timeout_ms": k.session_timeout_ms,
            "heartbeat_interval_ms": k.heartbeat_interval_ms,
            "max_poll_interval_ms": k.max_poll_interval_ms,
        }

    @classmethod
    def create(cls, cfg: Config) -> KafkaSource:
        """Connect once; raises kafka-python's KafkaTimeoutError if no broker answers."""
        crc32c.install()
        k = cfg.kafka
        return cls(KafkaConsumer(**cls.settings(cfg)), [k.input_topic],
                   commit_timeout_s=k.request_timeout_ms / 1000,
                   auto_offset_reset=k.auto_offset_reset)

    def poll(self, timeout_s: float) -> list[Record]:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise TransportError(f"poll failed: {exc}") from exc
        records: list[Record] = []
        for tp, batch in polled.items():
            records.extend(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                  tuple(r.headers or ()), r.timestamp) for r in batch)
            if batch:
                self._next[(tp.topic, tp.partition)] = batch[-1].offset + 1
        return records

    def commit(self, offsets: Mapping[TP, int]) -> None:
        request = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in offsets.items()}
        if not request:
            return
        try:
            self._consumer.commit(request, timeout_ms=self._commit_timeout_ms)
        except _REBALANCED as exc:
            raise CommitFailed(f"commit refused after a rebalance: {exc}") from exc
        except KafkaError as exc:
            raise TransportError(f"commit failed: {exc}") from exc

    def assignment(self) -> set[TP]:
        """The partitions this consumer holds now.

        A record polled for a partition that has since moved to another member is not ours to
        answer: its new owner reads it from the committed offset. A record of a partition that
        was revoked and handed straight back IS ours: the consumer's position has moved past it,
        so dropping it would lose it (answering it twice is the at-least-once price instead).
        """
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lags(self) -> dict[TP, int]:
        lags = {}
        for tp in self._consumer.assignment():
            key = (tp.topic, tp.partition)
            high = self._consumer.highwater(tp)
            if high is not None and key in self._next:
                lags[key] = max(high - self._next[key], 0)
        return lags

    def seek_to_committed(self) -> None:
        try:
            for tp in self._consumer.assignment():
                offset = self._consumer.committed(tp, timeout_ms=self._commit_timeout_ms)
                if offset is not None:
                    self._consumer.seek(tp, offset)
                elif self._reset == "earliest":
                    self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek_to_end(tp)
                self._next.pop((tp.topic, tp.partition), None)
        except (KafkaError, AssertionError) as exc:
            raise TransportError(f"cannot rewind to the committed offsets: {exc}") from exc

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaSink:
    """Produces with ``acks=all`` and idempotence; :meth:`flush` checks every send since the last.

    ``linger_ms=5`` and 256 KiB batches let a poll batch's outputs leave in few requests.
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self._futures: list[Any] = []
        self._errors: list[Exception] = []

    @staticmethod
    def settings(cfg: Config) -> dict[str, Any]:
        """The KafkaProducer keyword arguments :meth:`create` uses.

        ``linger_ms``, ``batch_size`` and ``compression_type`` are defaults that
        ``kafka.client_options`` may override; acks, idempotence and the delivery timeout are not.
        """
        k = cfg.kafka
        delivery_ms = int(k.delivery_timeout_s * 1000)
        settings = {
            "bootstrap_timeout_ms": min(k.request_timeout_ms, 10_000),
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "compression_type": None,
            **k.client_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            "delivery_timeout_ms": delivery_ms,
            "max_block_ms": delivery_ms,
        }
        settings["request_timeout_ms"] = min(settings.get("request_timeout_ms", 30_000),
                                             delivery_ms - settings["linger_ms"])
        return settings

    @classmethod
    def create(cls, cfg: Config) -> KafkaSink:
        """Connect once; raises kafka-python's KafkaTimeoutError if no broker answers."""
        crc32c.install()
        return cls(KafkaProducer(**cls.settings(cfg)))

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> None:
        try:
            self._futures.append(self._producer.send(topic, value=value, key=key,
                                                     headers=list(headers)))
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(str(exc)) from exc
        except KafkaError as exc:
            self._errors.append(exc)

    def flush(self, timeout_s: float) -> None:
        futures, errors = self._futures, self._errors
        self._futures, self._errors = [], []
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            errors.append(exc)
        errors.extend(f.exception for f in futures if not f.is_done or f.failed())
        if errors:
            first = errors[0] if errors[0] is not None else "not acknowledged in time"
            raise TransportError(f"{len(errors)} of {len(futures)} sends failed; first: {first}")

    def close(self) -> None:
        self._producer.close(timeout=5)


def connect(build: Callable[[], T], *, what: str, backoff: Backoff, stop: threading.Event,
            metrics: Metrics | None = None) -> T | None:
    """Call ``build`` until it succeeds, backing off while no broker answers.

    Returns None if ``stop`` is set before a connection is made. Each failure is logged and
    counted (``kafka_errors_total{kind="connect"}``, ``kafka_up=0``, ``kafka_reconnects_total``).
    """
    first = True
    while not stop.is_set():
        try:
            client = build()
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            delay = backoff.next_delay()
            log.warning("kafka_unavailable", extra={"client": what, "error": str(exc),
                                                    "retry_in_s": round(delay, 2)})
            if metrics is not None:
                metrics.kafka_error("connect")
                metrics.set_kafka_up(False)
            if stop.wait(delay):
                return None
            first = False
            continue
        if metrics is not None:
            metrics.set_kafka_up(True)
            if not first:
                metrics.reconnect()
        backoff.reset()
        log.info("kafka_connected", extra={"client": what})
        return client
    return None
