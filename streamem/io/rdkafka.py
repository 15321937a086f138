"""Kafka as source and sink, with librdkafka through confluent-kafka (the ``rdkafka`` extra).

The same contract as :mod:`streamem.io.kafka`, for volume: librdkafka moves many times more
single-point messages per second than kafka-python, at a fraction of the CPU per message.

:class:`RdKafkaSource` reads in a consumer group with ``enable.auto.commit`` and
``enable.auto.offset.store`` off; the runtime commits explicit offsets synchronously. librdkafka
serves rebalance, error and statistics callbacks inside ``poll()``/``consume()``, on the loop's
thread: the assignment is tracked there, and the statistics (every second) tell whether a broker
connection is up and the group is joined. Two bad checks in a row set ``kafka_up`` to 0; a good
one after them sets 1 and counts a reconnect. A member without partitions of a topic that has
some, while its group state is not steady, re-joins with a fresh consumer after
``rejoin_after_s``; when that did not help twice, ``/healthz`` fails.

:class:`RdKafkaSink` produces with ``acks=all`` and idempotence; :meth:`RdKafkaSink.flush`
returns once every send since the last flush is acknowledged, and raises if one failed (the
producers report failed deliveries only, per batch: no Python call per acknowledged message).
A full local queue (``BufferError``) is
back-pressure: it serves delivery reports and retries. Dead letters go through a second,
non-idempotent producer whose ``message.max.bytes`` fits any message read; one the broker still
refuses is sent again without its value (header ``streamem.value_dropped``) and counted.

Nothing here reads the daemon's config: it takes librdkafka property dicts (built by
:mod:`streamem.clients.confluent`) and a :class:`~streamem.io.base.ClientEvents`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streamem.errors import ConfigError, TransportError
from streamem.io import base
from streamem.io.base import (
    NO_EVENTS,
    VALUE_DROPPED_HEADER,
    Backoff,
    ClientEvents,
    CommitFailed,
    Headers,
    Record,
    RecordTooLarge,
    RejoinGuard,
)
from streamem.io.base import Message as OutMessage

log = logging.getLogger(__name__)
T = TypeVar("T")
TP = tuple[str, int]
MiB = 1024 * 1024
FETCH_MAX_BYTES = 64 * MiB
"""The consumer's fetch limit, and so the largest message the daemon can read."""
DEAD_LETTER_MAX_BYTES = FETCH_MAX_BYTES + MiB
"""The dead-letter producer's ``message.max.bytes``: any message read fits with its headers."""
OUTPUT_MAX_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: the largest output unless options say otherwise."""
STATS_INTERVAL_MS = 1000
"""How often librdkafka reports its broker and group state (the outage checks)."""
DOWN_AFTER_CHECKS = 2
"""Failed checks in a row that mean the cluster is down (one may catch a reconnect)."""
_REBALANCED = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                         KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST,
                         KafkaError._STATE})
_SIZE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_BROKER_UP = "UP"
_GROUP_UP = "up"


@dataclass(frozen=True)
class GroupMetadata:
    """A member's group metadata for a transaction: librdkafka's (opaque) object and a local
    generation that changes with every assignment or revocation (the runtime's rebalance check)."""

    generation_id: int
    native: object


def check_properties(role: str, options: Mapping[str, Any]) -> str | None:
    """Why librdkafka refuses ``options`` for a ``role`` ("consumer"/"producer"), or None.

    Builds a client that connects nowhere (no bootstrap servers): librdkafka checks names and
    values when a client is made. The message names the property.
    """
    if not options:
        return None
    conf = {"bootstrap.servers": "", "log_level": 0, **options}
    if role == "consumer":
        conf.setdefault("group.id", "streamem-check")
    try:
        client = Consumer(conf) if role == "consumer" else Producer(conf)
    except (KafkaException, TypeError, ValueError) as exc:
        err = exc.args[0] if exc.args else exc
        return err.str() if isinstance(err, KafkaError) else str(err)
    if isinstance(client, Consumer):
        client.close()
    return None


def _error_kind(err: KafkaError, other: str) -> str:
    """The ``kafka_errors_total`` kind of a client error: "connect", else ``other``."""
    if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT,
                      KafkaError._RESOLVE, KafkaError._AUTHENTICATION, KafkaError._SSL):
        return "connect"
    return other


class RdKafkaSource:
    """The input topics, read in the consumer group of ``conf["group.id"]``.

    Parameters
    ----------
    conf : dict
        librdkafka consumer properties; auto-commit and the offset store must be off.
    topics : list of str
        Topics to subscribe to.
    max_records : int
        Most records one :meth:`poll` returns.
    commit_timeout_s : float
        Longest wait for committed offsets (:meth:`seek_to_committed`).
    events : ClientEvents
        Where outages, errors and re-joins are reported.
    rejoin_after_s : float
        How long a member may hold no partitions while its group state is not steady.
    max_batch_bytes : int
        A poll stops adding messages once their values reach this many bytes (like one fetch
        of kafka-python's): a backlog of large messages is answered in bounded batches.
    """

    def __init__(self, conf: Mapping[str, Any], topics: list[str], *, max_records: int = 2000,
                 commit_timeout_s: float = 30.0, events: ClientEvents = NO_EVENTS,
                 rejoin_after_s: float = 30.0, max_batch_bytes: int = 8 * MiB) -> None:
        self._conf = {"logger": log, **conf, "statistics.interval.ms": STATS_INTERVAL_MS,
                      "error_cb": self._on_error, "stats_cb": self._on_stats}
        self._reset = str(conf.get("auto.offset.reset", "earliest"))
        self._topics = topics
        self._max_records = max_records
        self._max_batch_bytes = max_batch_bytes
        self._commit_timeout_s = commit_timeout_s
        self._events = events
        self._assigned: set[TP] = set()
        self._generation = 0
        self._next: dict[TP, int] = {}
        self._failed_checks = 0
        self._up = True
        self._rejoin_guard = RejoinGuard(rejoin_after_s, events)
        self._consumer: Consumer | None = None
        self._pending_rejoin = False
        self.rejoins = 0
        self.before_revoke: Callable[[], None] | None = None
        """Called inside :meth:`poll` when partitions are revoked or lost, while they are still
        assigned (the runtime acknowledges and commits its batch in flight there)."""
        self._join()

    def _join(self) -> None:
        consumer = Consumer(self._conf)
        consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        self._consumer = consumer

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None
        return self._consumer

    def wait_for_metadata(self, timeout_s: float) -> None:
        """Raise :class:`TransportError` unless a broker answers within ``timeout_s``."""
        try:
            self.consumer.list_topics(self._topics[0], timeout=timeout_s)
        except KafkaException as exc:
            raise TransportError(f"no broker answered: {exc}") from exc

    # -- callbacks, run inside poll()/consume() on the caller's thread -----------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = {(p.topic, p.partition) for p in partitions}
        self._generation += 1
        log.info("partitions_assigned", extra={"partitions": sorted(map(str, self._assigned))})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.before_revoke is not None:
            self.before_revoke()
        gone = {(p.topic, p.partition) for p in partitions}
        self._assigned -= gone
        self._generation += 1
        for tp in gone:
            self._next.pop(tp, None)
        log.info("partitions_revoked", extra={"partitions": sorted(map(str, gone))})

    def _on_error(self, err: KafkaError) -> None:
        kind = _error_kind(err, "poll")
        self._events.kafka_error(kind)
        log.warning("kafka_error", extra={"kind": kind, "error": err.str()})

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        self._check(stats, time.monotonic())

    # -- the Source interface ---------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[Record]:
        """The first message within ``timeout_s``, then whatever else is ready, up to the
        record and byte limits."""
        if self._pending_rejoin:
            self._pending_rejoin = False
            self.rejoin()
        if self._consumer is None:
            self._rebuild()
        try:
            first = self.consumer.poll(timeout_s)
            if first is None:
                return []
            messages = [first]
            size = len(first.value() or b"")
            while len(messages) < self._max_records and size < self._max_batch_bytes:
                mean = max(size // len(messages), 1)  # take about what still fits
                want = min(self._max_records - len(messages),
                           max((self._max_batch_bytes - size) // mean, 1))
                more = self.consumer.consume(want, 0)
                if not more:
                    break
                messages += more
                size += sum(map(len, filter(None, map(Message.value, more))))
        except KafkaException as exc:
            raise TransportError(f"poll failed: {exc}") from exc
        except RuntimeError as exc:  # the consumer was closed
            raise TransportError(f"poll failed: {exc}") from exc
        errors = list(map(Message.error, messages))
        unreadable: list[Record] = []
        if any(errors):
            messages, unreadable = self._without_errors(messages, errors)
        records, last = _records(messages)
        self._next.update({tp: offset + 1 for tp, offset in last.items()})
        for rec in unreadable:
            self._next[(rec.topic, rec.partition)] = rec.offset + 1
        return records + unreadable

    def _without_errors(self, messages: list[Message], errors: list[KafkaError | None]
                        ) -> tuple[list[Message], list[Record]]:
        """The messages without the errors, and the records of those the client cannot read.
        Once a partition is moved past an unreadable message, the rest of its messages in
        this poll were fetched before the move (a repeat of the same error, or records read
        again after it): they are left out."""
        kept: list[Message] = []
        unreadable: list[Record] = []
        moved: set[TP] = set()
        read: Any = Message  # topic and partition are set on consumed messages and errors
        for message, err in zip(messages, errors, strict=True):
            key = (read.topic(message), read.partition(message))
            if key in moved:
                continue
            if err is None:
                kept.append(message)
            elif found := self._message_error(message, err):
                unreadable += found
                moved.add(key)
        return kept, unreadable

    def _message_error(self, message: Message, err: KafkaError) -> list[Record]:
        """A consumed error: nothing, or raised when fatal; or, for a message the client cannot
        read — its record batch does not decompress (corrupt, or larger decompressed than
        ``receive.message.max.bytes``: a few KB can expand to gigabytes) or fails its checksum —
        its record to dead-letter, the consumer moved past it. librdkafka reports the batch's
        first offset and, left there, fetches the batch again and again: the partition would
        stall. Each offset of such a batch gets its own record."""
        if err.code() == KafkaError._PARTITION_EOF:
            return []
        self._on_error(err)
        if err.fatal():
            raise TransportError(f"consumer failed: {err.str()}")
        if err.code() not in (KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG):
            return []
        read: Any = message
        key = (read.topic(), read.partition())
        offset = max(read.offset(), self._next.get(key, -1))
        try:
            self.consumer.seek(TopicPartition(*key, offset + 1))
        except (KafkaException, RuntimeError) as exc:  # revoked meanwhile: its next owner reads it
            log.warning("seek_failed", extra={"partition": str(key), "error": str(exc)})
            return []
        return [Record(*key, offset, None, b"", unreadable=err.str())]

    def commit(self, offsets: Mapping[TP, int]) -> None:
        request = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if not request:
            return
        try:
            result = self.consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() in _REBALANCED:
                raise CommitFailed(f"commit refused after a rebalance: {err.str()}") from exc
            raise TransportError(f"commit failed: {exc}") from exc
        except RuntimeError as exc:
            raise TransportError(f"commit failed: {exc}") from exc
        failed = [tp.error for tp in result or () if tp.error is not None]
        if failed:
            err = failed[0]
            if err.code() in _REBALANCED:
                raise CommitFailed(f"commit refused after a rebalance: {err.str()}")
            raise TransportError(f"commit failed for {len(failed)} partitions: {err.str()}")

    def assignment(self) -> set[TP]:
        """The partitions held now (as the rebalance callbacks left them)."""
        return set(self._assigned)

    def lags(self) -> dict[TP, int]:
        lags = {}
        for key in self._assigned:
            if key not in self._next:
                continue
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            except (KafkaException, RuntimeError):
                continue
            if high is not None and high >= 0:
                lags[key] = max(high - self._next[key], 0)
        return lags

    def group_metadata(self) -> GroupMetadata:
        """The membership now, for transactions (:class:`GroupMetadata`)."""
        try:
            native = self.consumer.consumer_group_metadata()
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(f"no group metadata: {exc}") from exc
        return GroupMetadata(self._generation, native)

    def seek_to_committed(self) -> None:
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not tps:
            return
        try:
            committed = self.consumer.committed(tps, timeout=self._commit_timeout_s)
            for tp in committed:
                if tp.offset < 0:
                    tp.offset = OFFSET_BEGINNING if self._reset == "earliest" else OFFSET_END
                self.consumer.seek(tp)
                self._next.pop((tp.topic, tp.partition), None)
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(f"cannot rewind to the committed offsets: {exc}") from exc

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # -- health: is the cluster reachable, does the group give us partitions? ---------------

    def _check(self, stats: Mapping[str, Any], now: float) -> None:
        fault = _fault(stats)
        if fault is None:
            self._failed_checks = 0
            if not self._up:
                self._up = True
                log.info("kafka_reachable")
                self._events.set_kafka_up(True)
                self._events.reconnect()
            self._check_assignment(stats, now)
            return
        self._failed_checks += 1
        self._events.kafka_error(fault)
        if self._failed_checks >= DOWN_AFTER_CHECKS and self._up:
            self._up = False
            log.warning("kafka_unreachable", extra={"kind": fault})
            self._events.set_kafka_up(False)

    def _check_assignment(self, stats: Mapping[str, Any], now: float) -> None:
        """Re-join when unassigned and not steady for ``rejoin_after_s`` (see
        :class:`RejoinGuard`)."""
        group = stats.get("cgrp") or {}
        steady = group.get("state") == _GROUP_UP and group.get("join_state") == "steady"
        stuck = not self._assigned and not steady and _has_partitions(stats, self._topics)
        if self._rejoin_guard.due(stuck=stuck, now=now):
            self._pending_rejoin = True  # a consumer cannot be closed inside its own callback

    def rejoin(self) -> None:
        """Leave the group and join it again with a fresh consumer (at the next poll)."""
        self.rejoins += 1
        log.warning("group_rejoin", extra={"after_s": self._rejoin_guard.rejoin_after_s,
                                           "rejoins": self.rejoins})
        self._events.rejoin()
        self._next.clear()
        self._assigned.clear()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:  # wedged: closing is best effort
                log.warning("consumer_close_failed", extra={"error": str(exc)})

    def _rebuild(self) -> None:
        try:
            self._join()
        except KafkaException as exc:
            self._events.kafka_error("connect")
            raise TransportError(f"cannot rebuild the consumer: {exc}") from exc


def _fault(stats: Mapping[str, Any]) -> str | None:
    """Why the cluster is unreachable ("connect", "coordinator") per librdkafka's statistics."""
    brokers = [b for b in (stats.get("brokers") or {}).values() if b.get("nodeid", -1) >= 0
               or b.get("source") != "internal"]
    if brokers and not any(b.get("state") == _BROKER_UP for b in brokers):
        return "connect"
    group = stats.get("cgrp")
    if group is not None and group.get("state") not in (_GROUP_UP, None):
        return "coordinator"
    return None


def _has_partitions(stats: Mapping[str, Any], topics: list[str]) -> bool:
    known = stats.get("topics") or {}
    return any(int(p) >= 0 for t in topics for p in (known.get(t) or {}).get("partitions", {}))


def _records(messages: list[Message]) -> tuple[list[Record], dict[TP, int]]:
    """Consumed messages as :class:`Record` (the consumer has no deserializers: bytes), read
    field by field over the whole poll and built by C loops (no Python call per message); and
    the last offset read of each partition."""
    read: Any = Message  # topic, partition and offset are set on consumed messages
    topics: list[str] = list(map(read.topic, messages))
    partitions: list[int] = list(map(read.partition, messages))
    offsets: list[int] = list(map(read.offset, messages))
    raw: list[Any] = list(map(Message.headers, messages))
    headers = [tuple((k, v if isinstance(v, bytes) else b"") for k, v in h) if h else ()
               for h in raw] if any(raw) else repeat(())
    stamps = [ts if ts >= 0 else None for _, ts in map(Message.timestamp, messages)]
    values = [v or b"" for v in map(Message.value, messages)]
    fields = zip(topics, partitions, offsets, map(Message.key, messages), values, headers, stamps,
                 repeat(0), repeat(""))
    records: list[Record] = list(map(tuple.__new__, repeat(Record), fields))  # type: ignore[arg-type]
    return records, dict(zip(zip(topics, partitions, strict=True), offsets, strict=True))


class _Batch:
    """The failed deliveries of the sends since one flush (the producers report failures only):
    a report arriving after its batch's flush gave up only touches that batch (already
    failed)."""

    __slots__ = ("sent", "errors", "refused", "report")

    def __init__(self) -> None:
        self.sent = 0
        self.errors: list[str] = []
        self.refused: list[tuple[str, bytes | None, int, Headers]] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.errors.append(err.str())

        self.report = report

    def droppable_report(self, topic: str, key: bytes | None, size: int,
                         headers: Headers) -> Callable[[KafkaError | None, Message], None]:
        """A dead letter's report: a broker's refusal for its size is noted, not an error."""

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                return
            if err.code() in _SIZE:
                self.refused.append((topic, key, size, headers))
            else:
                self.errors.append(err.str())

        return report


class RdKafkaSink:
    """Produces; :meth:`flush` waits for every send since the last flush and checks them.

    librdkafka delivers on its own threads, so the runtime pipelines (``delivers_in_background``):
    it works on the next batch while this one's outputs are delivered.

    Parameters
    ----------
    conf : dict
        librdkafka producer properties (``acks=all``, idempotence).
    dead_letter_conf : dict
        The dead-letter producer's properties: not idempotent, ``message.max.bytes`` at least
        :data:`DEAD_LETTER_MAX_BYTES`.
    value_drop_topics : frozenset of str
        Topics (the dead letters) whose too large messages are sent again without their value.
    max_message_bytes : int
        Largest other message (:class:`RecordTooLarge` at :meth:`send`).
    enqueue_timeout_s : float
        Longest wait for room in a full local queue.
    """

    def __init__(self, conf: Mapping[str, Any], dead_letter_conf: Mapping[str, Any], *,
                 value_drop_topics: frozenset[str] = frozenset(),
                 max_message_bytes: int = OUTPUT_MAX_BYTES, enqueue_timeout_s: float = 60.0,
                 events: ClientEvents = NO_EVENTS) -> None:
        self._events = events
        fixed = {"error_cb": self._on_error, "delivery.report.only.error": True}
        self._producer = Producer({"logger": log, **conf, **fixed})
        try:
            self._dead = Producer({"logger": log, **dead_letter_conf, **fixed})
        except BaseException:
            self._producer.flush(0)
            raise
        self._value_drop_topics = value_drop_topics
        self._max_message_bytes = max_message_bytes
        self._enqueue_timeout_s = enqueue_timeout_s
        self._batch = _Batch()

    delivers_in_background = True

    def undelivered(self) -> int:
        """Messages sent and not yet acknowledged (or whose failure is not yet reported)."""
        return len(self._producer) + len(self._dead)

    def _on_error(self, err: KafkaError) -> None:
        kind = _error_kind(err, "produce")
        self._events.kafka_error(kind)
        log.warning("kafka_error", extra={"kind": kind, "error": err.str()})

    def wait_for_metadata(self, timeout_s: float) -> None:
        """Raise :class:`TransportError` unless a broker answers within ``timeout_s``."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise TransportError(f"no broker answered: {exc}") from exc

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        too_large = self.send_many(topic, [(key, value, headers, timestamp_ms)])
        if too_large:
            raise RecordTooLarge(too_large[0][1])

    def send_many(self, topic: str, messages: Iterable[OutMessage]) -> list[tuple[int, str]]:
        """Queue the messages, one ``produce`` each with nothing else per message: a header
        list shared by consecutive messages (the runtime's) is sized and listed once, and
        ``produce`` takes its arguments by position (parsing keywords cost it 40 %)."""
        if topic in self._value_drop_topics:
            for key, value, headers, timestamp_ms in messages:
                self._send_dead_letter(topic, key, value, headers, timestamp_ms or 0)
            return []
        batch, limit, produce = self._batch, self._max_message_bytes, self._producer.produce
        report = batch.report
        too_large: list[tuple[int, str]] = []
        sized: Headers | None = None
        extra, listed = 0, None
        sent = 0
        for i, (key, value, headers, timestamp_ms) in enumerate(messages):
            if headers is not sized:
                sized, extra = headers, sum(map(len, chain.from_iterable(headers)))
                listed = headers if type(headers) is list else list(headers) if headers else None
            size = len(value) + (len(key) if key else 0) + extra
            if size > limit:
                too_large.append((i, f"a {size}-byte message to {topic} exceeds {limit} bytes"))
                continue
            stamp = timestamp_ms or 0  # librdkafka: 0 stamps the send time
            try:  # topic, value, key, partition (any), on_delivery, callback, timestamp, headers
                produce(topic, value, key, -1, report, None, stamp, listed)
            except BufferError:
                self._produce_when_room(self._producer, topic, key, value, headers, report,
                                        stamp)
                continue
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() in _SIZE:
                    too_large.append((i, err.str()))
                else:
                    batch.errors.append(str(exc))
                continue
            sent += 1
        batch.sent += sent
        return too_large

    def _send_dead_letter(self, topic: str, key: bytes | None, value: bytes,
                          headers: Headers, timestamp_ms: int = 0) -> None:
        report = self._batch.droppable_report(topic, key, len(value), headers)
        try:
            self._produce_when_room(self._dead, topic, key, value, headers, report, timestamp_ms)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() in _SIZE:
                self._send_without_value(topic, key, len(value), headers)
            else:
                self._batch.errors.append(str(exc))

    def _produce_when_room(self, producer: Producer, topic: str, key: bytes | None,
                           value: bytes, headers: Headers,
                           report: Callable[[KafkaError | None, Message], None],
                           timestamp_ms: int = 0) -> None:
        """Queue one message; a full queue serves delivery reports until there is room."""
        deadline = time.monotonic() + self._enqueue_timeout_s
        while True:
            try:
                producer.produce(topic, value, key, headers=list(headers), on_delivery=report,
                                 timestamp=timestamp_ms)
            except BufferError:
                if time.monotonic() > deadline:
                    self._batch.errors.append(f"the local queue stayed full for "
                                              f"{self._enqueue_timeout_s:g} s")
                    return
                producer.poll(0.05)
                continue
            self._batch.sent += 1
            return

    def _send_without_value(self, topic: str, key: bytes | None, size: int,
                            headers: Headers) -> None:
        log.warning("dead_letter_value_dropped", extra={"topic": topic, "bytes": size})
        self._events.dead_letter_value_dropped()
        dropped = [*headers, (VALUE_DROPPED_HEADER, str(size).encode())]
        try:
            self._produce_when_room(self._dead, topic, key, b"", dropped, self._batch.report)
        except KafkaException as exc:
            self._batch.errors.append(str(exc))

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        batch = self._batch
        waiting = self._flush_both(deadline)
        if batch.refused:  # the broker refused them: send them again without their values
            refused, batch.refused = batch.refused, []
            for topic, key, size, headers in refused:
                self._send_without_value(topic, key, size, headers)
            waiting = self._flush_both(deadline)
        self._batch = _Batch()
        errors = list(batch.errors)
        if waiting > 0:
            errors.append(f"{waiting} not acknowledged in time")
        if errors:
            raise TransportError(f"{len(errors)} of {batch.sent} sends failed; "
                                 f"first: {errors[0]}")

    def _flush_both(self, deadline: float) -> int:
        """Wait for both producers' queues to empty; the messages still waiting then."""
        return sum(producer.flush(max(deadline - time.monotonic(), 0.0))
                   for producer in (self._producer, self._dead))

    def close(self) -> None:
        for producer in (self._producer, self._dead):
            producer.flush(5)


def connect(build: Callable[[], T], *, what: str, backoff: Backoff, stop: threading.Event,
            events: ClientEvents = NO_EVENTS) -> T | None:
    """:func:`streamem.io.base.connect` for librdkafka: retried while no broker answers.

    Settings librdkafka refuses when building a client raise :class:`ConfigError` at once.
    """
    def checked() -> T:
        try:
            return build()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:
                raise ConfigError(f"kafka: librdkafka refused the {what} settings: "
                                  f"{err.str()}") from exc
            raise

    return base.connect(checked, retry_on=(TransportError, KafkaException), what=what,
                        backoff=backoff, stop=stop, events=events)
