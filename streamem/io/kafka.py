"""Kafka as source and sink, with kafka-python 3.x.

:class:`KafkaSource` reads the input topic in a consumer group with auto-commit off; the runtime
commits ``offset + 1`` synchronously after each batch's outputs are acknowledged.
:class:`KafkaSink` produces with ``acks=all`` and idempotence, and checks every send's future at
:meth:`KafkaSink.flush`. :func:`connect` builds either, backing off exponentially while no
broker answers. Both take kafka-python keyword arguments (built from the config by
:mod:`streamem.clients.kafka_python`) and report to a :class:`~streamem.io.base.ClientEvents`.

kafka-python runs rebalance callbacks on its I/O thread, where a blocking ``commit()`` raises,
so the listener here only records what was revoked; the runtime drops in-flight records of
partitions no longer in :meth:`KafkaSource.assignment`.

kafka-python retries connections on its own I/O thread and a poll during an outage simply
returns nothing, so :class:`KafkaSource` looks at its client after every poll (at most once a
second): no open broker connection, or no known group coordinator, for two checks in a row sets
``kafka_up`` to 0 and counts an error per check; its return sets 1 and counts a reconnect. A
member that holds no partitions of a topic that has some, while its group membership is not
healthy, re-joins with a fresh consumer after ``kafka.unassigned_rejoin_s`` (kafka-python can be
left out of its group for good); if that does not help either, ``/healthz`` fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition, codec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    UnsupportedCodecError,
)

from streamem.errors import MissingCodec, TransportError
from streamem.formats.headers import wire_size
from streamem.io import base, kafka_batches
from streamem.io.base import (
    NO_EVENTS,
    VALUE_DROPPED_HEADER,
    Backoff,
    ClientEvents,
    CommitFailed,
    Headers,
    Message,
    Record,
    RecordTooLarge,
    RejoinGuard,
    send_each,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
SourceT = TypeVar("SourceT", bound="KafkaSource")
SinkT = TypeVar("SinkT", bound="KafkaSink")
TxnSinkT = TypeVar("TxnSinkT", bound="TransactionalKafkaSink")
TP = tuple[str, int]
MiB = 1024 * 1024
FETCH_MAX_BYTES = 64 * MiB
"""The consumer's fetch limit, and so the largest message the daemon can read."""
DEAD_LETTER_MAX_BYTES = FETCH_MAX_BYTES + MiB
"""The producer's limit: any message read fits into a dead letter with its headers."""
OUTPUT_MAX_BYTES = MiB
"""Largest output message unless ``kafka.producer_options.max_request_size`` says otherwise
(kafka-python's default, just under the brokers' default ``message.max.bytes``)."""
CHECK_INTERVAL_S = 1.0
"""How often :class:`KafkaSource` looks at its connections and group membership."""
DOWN_AFTER_CHECKS = 2
"""Failed checks in a row that mean the cluster is down (one may catch a reconnect)."""
_REBALANCED = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
               UnknownMemberIdError)


class _MissingTopicIsNoError(logging.Filter):
    """kafka-python logs a subscribed topic that does not exist yet as an ERROR; until it is
    created (by a producer, or by auto-creation) the consumer simply waits: a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.msg == MISSING_TOPIC_MESSAGE:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


MISSING_TOPIC_MESSAGE = "Topic %s not found in cluster metadata"
"""kafka-python 3's message (``kafka.cluster``) for a topic without metadata."""
_MISSING_TOPIC_FILTER = _MissingTopicIsNoError()


class _Listener(ConsumerRebalanceListener):
    """Logs rebalances. Called on kafka-python's I/O thread, where a blocking commit() raises:
    the loop commits after every batch instead, so there is nothing to do here but tell."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions_revoked", extra={"partitions": sorted(map(str, revoked))})

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", extra={"partitions": sorted(map(str, assigned))})


class KafkaSource:
    """The input topics, read in the consumer's group.

    Parameters
    ----------
    consumer : KafkaConsumer
        Built by :meth:`create`; auto-commit must be off.
    topics : list of str
        Topics to subscribe to.
    commit_timeout_s : float
        Longest wait for one synchronous commit.
    auto_offset_reset : str
        Where to rewind a partition without a committed offset.
    rebuild : callable, optional
        Builds a fresh consumer to re-join the group with; without it, re-subscribe.
    events : ClientEvents
        Where outages (``kafka_up``, ``kafka_errors_total``) and re-joins are reported.
    rejoin_after_s : float
        How long a member may hold no partitions, while its membership is unhealthy.
    """

    def __init__(self, consumer: KafkaConsumer, topics: list[str],
                 commit_timeout_s: float = 30.0, auto_offset_reset: str = "earliest", *,
                 rebuild: Callable[[], KafkaConsumer] | None = None,
                 events: ClientEvents = NO_EVENTS, rejoin_after_s: float = 30.0) -> None:
        self._consumer = consumer
        self._topics = topics
        self._listener = _Listener()
        self._commit_timeout_ms = int(commit_timeout_s * 1000)
        self._reset = auto_offset_reset
        self._next: dict[TP, int] = {}
        self._rebuild = rebuild
        self._events = events
        self._next_check = time.monotonic() + CHECK_INTERVAL_S  # first, find the coordinator
        self._failed_checks = 0
        self._up = True
        self._rejoin_guard = RejoinGuard(rejoin_after_s, events)
        self._closed_for_rejoin = False
        self.rejoins = 0
        learn_topics(consumer, topics)
        consumer.subscribe(topics=topics, listener=self._listener)

    @classmethod
    def create(cls: type[SourceT], settings: Mapping[str, Any], topics: list[str], *,
               commit_timeout_s: float = 30.0, rejoin_after_s: float = 30.0,
               events: ClientEvents = NO_EVENTS) -> SourceT:
        """Connect once with the KafkaConsumer keyword arguments ``settings``; raises
        kafka-python's KafkaTimeoutError if no broker answers. Re-joins use a fresh consumer
        built from the same settings."""
        logging.getLogger("kafka.cluster").addFilter(_MISSING_TOPIC_FILTER)  # once: a set
        if missing := missing_codecs():
            log.warning("kafka_codecs_missing", extra={"codecs": missing, "remedy": CODECS_REMEDY})
        # A decompressed batch may be as large as a fetch, as librdkafka's bound is.
        if not kafka_batches.install(int(settings.get("fetch_max_bytes", FETCH_MAX_BYTES)) + MiB):
            log.warning("kafka_decompression_unbounded",
                        extra={"reason": "this kafka-python has no hook for the bound"})

        def build() -> KafkaConsumer:
            return KafkaConsumer(**settings)

        return cls(build(), topics, commit_timeout_s=commit_timeout_s,
                   auto_offset_reset=settings.get("auto_offset_reset", "latest"), rebuild=build,
                   events=events, rejoin_after_s=rejoin_after_s)

    def poll(self, timeout_s: float) -> list[Record]:
        if self._closed_for_rejoin:
            self._join_fresh()
        try:
            polled = poll(self._consumer, int(timeout_s * 1000))
        except KafkaError as exc:
            raise TransportError(f"poll failed: {exc}") from exc
        finally:
            self._maybe_check()
        records: list[Record] = []
        for tp, batch in polled.items():
            records.extend(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                  _headers(r.headers) if r.headers else (), r.timestamp)
                           for r in batch)
            if batch:
                self._next[(tp.topic, tp.partition)] = batch[-1].offset + 1
        for topic, partition, offset, why in kafka_batches.take_unreadable(self._topics):
            records.append(Record(topic, partition, offset, None, b"", unreadable=why))
            self._next[(topic, partition)] = max(self._next.get((topic, partition), 0), offset + 1)
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

    def group_metadata(self) -> Any:
        """The consumer's group membership now (generation, member id), for transactions."""
        return self._consumer.group_metadata()

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
        if not self._closed_for_rejoin:
            self._consumer.close(autocommit=False)

    # -- health: is the cluster reachable, does the group give us partitions? ---------------

    def _maybe_check(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL_S
        fault = self._fault()
        if fault is None:
            self._failed_checks = 0
            if not self._up:
                self._up = True
                log.info("kafka_reachable")
                self._events.set_kafka_up(True)
                self._events.reconnect()
            self._check_assignment(now)
            return
        self._failed_checks += 1
        self._events.kafka_error(fault)
        if self._failed_checks >= DOWN_AFTER_CHECKS and self._up:
            self._up = False
            log.warning("kafka_unreachable", extra={"kind": fault})
            self._events.set_kafka_up(False)

    def _fault(self) -> str | None:
        """Why the cluster is unreachable ("connect", "coordinator"), or None if it is not.

        Reads kafka-python 3's connection manager and group coordinator: no broker connection
        open, or no known coordinator.
        """
        client = getattr(self._consumer, "_client", None)
        conns = getattr(getattr(client, "_manager", None), "_conns", None)
        if conns is not None and not any(c.connected for c in list(conns.values())):
            return "connect"
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and coordinator.coordinator_id is None:
            return "coordinator"
        return None

    def _stuck(self) -> bool:
        """True when the group membership is not healthy: not stable, or heartbeats unanswered
        for a session timeout. A healthy member without partitions (more members than
        partitions) is not stuck."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None:
            return True
        return not coordinator.stable() or coordinator.heartbeat.session_timeout_expired()

    def _has_partitions(self) -> bool:
        cluster = getattr(self._consumer, "_cluster", None)
        return cluster is None or any(cluster.partitions_for_topic(t) for t in self._topics)

    def _check_assignment(self, now: float) -> None:
        """Re-join when unassigned and stuck for ``rejoin_after_s`` (see :class:`RejoinGuard`)."""
        stuck = not self._consumer.assignment() and self._has_partitions() and self._stuck()
        if self._rejoin_guard.due(stuck=stuck, now=now):
            self.rejoin()

    def rejoin(self) -> None:
        """Leave the group and join it again with a fresh consumer (or by re-subscribing)."""
        self.rejoins += 1
        log.warning("group_rejoin", extra={"after_s": self._rejoin_guard.rejoin_after_s,
                                           "rejoins": self.rejoins})
        self._events.rejoin()
        self._next.clear()
        if self._rebuild is None:
            self._consumer.unsubscribe()
            self._consumer.subscribe(topics=self._topics, listener=self._listener)
            return
        try:
            self._consumer.close(autocommit=False, timeout_ms=self._commit_timeout_ms)
        except Exception as exc:  # the old consumer is wedged; closing it is best effort
            log.warning("consumer_close_failed", extra={"error": str(exc)})
        self._closed_for_rejoin = True
        self._join_fresh()

    def _join_fresh(self) -> None:
        """Build the consumer that replaces a closed one (retried by the next poll)."""
        assert self._rebuild is not None
        try:
            consumer = self._rebuild()
        except KafkaError as exc:
            self._events.kafka_error("connect")
            raise TransportError(f"cannot rebuild the consumer: {exc}") from exc
        learn_topics(consumer, self._topics)
        consumer.subscribe(topics=self._topics, listener=self._listener)
        self._consumer = consumer
        self._closed_for_rejoin = False


class KafkaSink:
    """Produces with ``acks=all`` and idempotence; :meth:`flush` checks every send since the last.

    ``linger_ms=5`` and 256 KiB batches let a poll batch's outputs leave in few requests.
    Messages to ``value_drop_topics`` (the dead-letter topic) may be as large as anything the
    consumer can read; when one is still too large (for this producer, or for the broker's
    ``max.message.bytes`` of that topic), it is sent again without its value, with the header
    ``streamem.value_dropped: <bytes>``, and counted. They go through ``dead_letter_producer``
    when given: a broker's refusal is fatal to an idempotent kafka-python producer (it aborts
    every later send), so that one is not idempotent. Other messages are limited to
    ``max_message_bytes`` (:class:`RecordTooLarge` at :meth:`send`).
    """

    def __init__(self, producer: KafkaProducer, *, max_message_bytes: int = OUTPUT_MAX_BYTES,
                 value_drop_topics: frozenset[str] = frozenset(),
                 dead_letter_producer: KafkaProducer | None = None,
                 events: ClientEvents = NO_EVENTS) -> None:
        self._producer = producer
        self._dead_producer = dead_letter_producer or producer
        self._max_message_bytes = max_message_bytes
        self._value_drop_topics = value_drop_topics
        self._events = events
        self._futures: list[Any] = []
        self._droppable: list[tuple[Any, str, bytes | None, int, Headers]] = []
        self._errors: list[Exception] = []
        self._sized: tuple[Headers | None, int] = (None, 0)  # the last headers and their size

    @classmethod
    def create(cls: type[SinkT], settings: Mapping[str, Any], *,
               max_message_bytes: int = OUTPUT_MAX_BYTES, dead_letter_topic: str | None = None,
               events: ClientEvents = NO_EVENTS) -> SinkT:
        """Connect once with the KafkaProducer keyword arguments ``settings`` (idempotent;
        ``max_request_size`` at least :data:`DEAD_LETTER_MAX_BYTES`); raises kafka-python's
        KafkaTimeoutError if no broker answers. Dead letters go through a second, non-idempotent
        producer with the same settings."""
        producer = KafkaProducer(**settings)
        try:
            dead = KafkaProducer(**{**settings, "enable_idempotence": False,
                                    "max_in_flight_requests_per_connection": 1,
                                    "client_id": f"{settings['client_id']}-dead-letters"})
        except BaseException:
            producer.close(timeout=5)
            raise
        drop = frozenset([dead_letter_topic]) if dead_letter_topic else frozenset()
        return cls(producer, max_message_bytes=max_message_bytes, dead_letter_producer=dead,
                   value_drop_topics=drop, events=events)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        droppable = topic in self._value_drop_topics
        sized, extra = self._sized
        if headers is not sized:  # the runtime's own list is shared by a batch's messages
            extra = wire_size(headers)
            self._sized = (headers, extra)
        size = len(value) + len(key or b"") + extra
        if not droppable and size > self._max_message_bytes:
            raise RecordTooLarge(f"a {size}-byte message to {topic} exceeds "
                                 f"{self._max_message_bytes} bytes")
        producer = self._dead_producer if droppable else self._producer
        try:
            future = producer.send(topic, value=value, key=key, headers=list(headers),
                                   timestamp_ms=timestamp_ms)
        except MessageSizeTooLargeError as exc:
            if not droppable:
                raise RecordTooLarge(str(exc)) from exc
            self._send_without_value(topic, key, len(value), headers)
            return
        except KafkaError as exc:
            self._errors.append(exc)
            return
        self._futures.append(future)
        if droppable:
            self._droppable.append((future, topic, key, len(value), headers))

    def send_many(self, topic: str, messages: Iterable[Message]) -> list[tuple[int, str]]:
        return send_each(self, topic, messages)

    def _send_without_value(self, topic: str, key: bytes | None, size: int,
                            headers: Headers) -> None:
        log.warning("dead_letter_value_dropped", extra={"topic": topic, "bytes": size})
        self._events.dead_letter_value_dropped()
        dropped = [*headers, (VALUE_DROPPED_HEADER, str(size).encode())]
        try:
            self._futures.append(self._dead_producer.send(topic, value=b"", key=key,
                                                          headers=dropped))
        except KafkaError as exc:
            self._errors.append(exc)

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        futures, errors = self._wait(timeout_s)
        refused = [(f, t, k, n, h) for f, t, k, n, h in self._take_droppable()
                   if f.is_done and isinstance(f.exception, MessageSizeTooLargeError)]
        if refused:  # the broker refused them: send them again without their values
            gone = {id(r[0]) for r in refused}
            futures = [f for f in futures if id(f) not in gone]
            for _, topic, key, size, headers in refused:
                self._send_without_value(topic, key, size, headers)
            more, more_errors = self._wait(max(deadline - time.monotonic(), 0.0))
            futures += more
            errors += more_errors
        errors.extend(f.exception for f in futures if not f.is_done or f.failed())
        if errors:
            first = errors[0] if errors[0] is not None else "not acknowledged in time"
            raise TransportError(f"{len(errors)} of {len(futures)} sends failed; first: {first}")

    def _take_droppable(self) -> list[tuple[Any, str, bytes | None, int, Headers]]:
        droppable, self._droppable = self._droppable, []
        return droppable

    def _wait(self, timeout_s: float) -> tuple[list[Any], list[Exception | None]]:
        """Flush the producer; the futures sent since the last wait, and send errors."""
        futures, errors = self._futures, self._errors
        self._futures, self._errors = [], []
        deadline = time.monotonic() + timeout_s
        for producer in {id(p): p for p in (self._producer, self._dead_producer)}.values():
            try:
                producer.flush(timeout=max(deadline - time.monotonic(), 0.0))
            except KafkaTimeoutError as exc:
                errors.append(exc)
        return futures, list(errors)

    def close(self) -> None:
        self._producer.close(timeout=5)
        if self._dead_producer is not self._producer:
            self._dead_producer.close(timeout=5)


class TransactionalKafkaSink(KafkaSink):
    """A :class:`KafkaSink` whose sends and input offsets commit in one Kafka transaction.

    One transactional producer carries outputs and dead letters alike (its
    ``max_request_size`` admits any message read). A dead letter the broker refuses as too
    large fails its transaction; from then on dead letters at least that large go out without
    their value (``streamem.value_dropped``), so the retried transaction goes through.

    kafka-python's ``send_offsets_to_transaction``, ``commit_transaction`` and
    ``abort_transaction`` wait without a timeout: each runs on a helper thread and is given up
    after ``timeout_s`` (the thread stays blocked until the old producer is closed). After a
    timeout or a fatal error the producer is *broken*: the next :meth:`begin` closes it and
    builds a new one, whose ``init_transactions`` aborts whatever the old one left open.

    Parameters
    ----------
    build : callable
        A new ``KafkaProducer`` with a ``transactional_id``, not yet initialised.
    timeout_s : float
        The bound on every transactional call (and on building plus ``init_transactions``).
    """

    def __init__(self, build: Callable[[], KafkaProducer], *, timeout_s: float,
                 max_message_bytes: int = OUTPUT_MAX_BYTES,
                 value_drop_topics: frozenset[str] = frozenset(),
                 events: ClientEvents = NO_EVENTS) -> None:
        self._build = build
        self._timeout_s = timeout_s
        self._dead_limit = DEAD_LETTER_MAX_BYTES
        self._broken = False
        super().__init__(self._new_producer(), max_message_bytes=max_message_bytes,
                         value_drop_topics=value_drop_topics, events=events)

    @classmethod
    def create_transactional(cls: type[TxnSinkT], settings: Mapping[str, Any], *,
                             timeout_s: float, max_message_bytes: int = OUTPUT_MAX_BYTES,
                             dead_letter_topic: str | None = None,
                             events: ClientEvents = NO_EVENTS) -> TxnSinkT:
        """Connect with the KafkaProducer keyword arguments ``settings`` (which carry the
        ``transactional_id``) and initialise transactions, fencing an earlier producer with the
        same id; raises KafkaTimeoutError when that does not finish within ``timeout_s``."""
        drop = frozenset([dead_letter_topic]) if dead_letter_topic else frozenset()
        return cls(lambda: KafkaProducer(**settings), timeout_s=timeout_s,
                   max_message_bytes=max_message_bytes, value_drop_topics=drop, events=events)

    def _new_producer(self) -> KafkaProducer:
        """A producer with its transactions initialised, within ``timeout_s``; one that is
        ready only after that is closed (a long outage must not pile producers up)."""
        given_up = threading.Event()

        def build() -> KafkaProducer:
            producer = self._build()
            try:
                producer.init_transactions()
                if given_up.is_set():
                    raise KafkaTimeoutError("ready after the caller gave up")
            except BaseException:
                producer.close(timeout=0)
                raise
            return producer

        try:
            return self._bounded("init_transactions", build)
        except TransportError as exc:
            given_up.set()
            raise KafkaTimeoutError(str(exc)) from exc

    def _bounded(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` on a helper thread, given up after ``timeout_s`` (TransportError)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = call()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"streamem-txn-{what}", daemon=True)
        thread.start()
        thread.join(self._timeout_s)
        if thread.is_alive():
            self._broken = True
            raise TransportError(f"{what} did not finish within {self._timeout_s:g} s")
        error = box.get("error")
        if error is not None:
            if isinstance(error, ProducerFencedError):
                self._broken = True
                log.error("producer_fenced", extra={"error": str(error)})
            raise TransportError(f"{what} failed: {error!r}") from error
        return box["result"]  # type: ignore[no-any-return]

    def begin(self) -> None:
        if self._broken:
            self._replace()
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            self._broken = True
            raise TransportError(f"begin_transaction failed: {exc!r}") from exc

    def _replace(self) -> None:
        """Close the broken producer (bounded) and build and initialise a new one."""
        old = self._producer
        try:
            self._bounded("close", lambda: old.close(timeout=0))
        except TransportError as exc:
            log.warning("producer_close_failed", extra={"error": str(exc)})
        try:
            producer = self._new_producer()
        except KafkaError as exc:
            self._events.kafka_error("connect")
            raise TransportError(f"cannot replace the transactional producer: {exc}") from exc
        self._producer = self._dead_producer = producer
        self._broken = False
        self._futures, self._droppable, self._errors = [], [], []
        log.info("transactional_producer_replaced")

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        if topic in self._value_drop_topics and len(value) > self._dead_limit:
            self._send_without_value(topic, key, len(value), headers)
            return
        super().send(topic, key, value, headers, timestamp_ms)

    def flush(self, timeout_s: float) -> None:
        """Wait for every send since the last flush; a failure dooms the transaction."""
        futures, errors = self._wait(min(timeout_s, self._timeout_s))
        refused = [size for f, _, _, size, _ in self._take_droppable()
                   if f.is_done and isinstance(f.exception, MessageSizeTooLargeError)]
        if refused:
            self._dead_limit = min(self._dead_limit, min(refused) - 1)
        errors.extend(f.exception for f in futures if not f.is_done or f.failed())
        if errors:
            first = errors[0] if errors[0] is not None else "not acknowledged in time"
            raise TransportError(f"{len(errors)} of {len(futures)} sends failed; first: {first}")

    def send_offsets(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        request = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in offsets.items()}
        self._bounded("send_offsets_to_transaction",
                      lambda: self._producer.send_offsets_to_transaction(request, group_metadata))

    def commit(self) -> None:
        self._bounded("commit_transaction", self._producer.commit_transaction)

    def abort(self) -> None:
        """Abort; when that fails too, the producer is replaced at the next :meth:`begin`
        (whose ``init_transactions`` aborts the transaction). Never raises."""
        self._futures, self._droppable, self._errors = [], [], []
        if self._broken:
            return
        try:
            self._bounded("abort_transaction", self._producer.abort_transaction)
        except TransportError as exc:
            self._broken = True
            log.warning("abort_failed", extra={"error": str(exc)})

    def close(self) -> None:
        try:
            self._bounded("close", lambda: self._producer.close(timeout=self._timeout_s))
        except TransportError as exc:
            log.warning("producer_close_failed", extra={"error": str(exc)})


#: The codecs a Kafka record batch can be compressed with, beside gzip, and kafka-python's test
#: for the library each needs (the ``codecs`` extra installs them).
CODECS = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
CODECS_REMEDY = ("install streamem[codecs] (python-snappy, lz4, zstandard), "
                 "or set kafka.client: confluent-kafka (librdkafka has every codec built in)")


def missing_codecs() -> list[str]:
    """The compression codecs kafka-python cannot read here, for lack of their library."""
    return [name for name, present in CODECS.items() if not present()]


def poll(consumer: KafkaConsumer, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
    """``consumer.poll``; a batch in a codec without its library raises :class:`MissingCodec`.

    kafka-python cannot go on after that error: its next poll spins on the same batch at full
    CPU, holding the GIL and ignoring SIGTERM. So the consumer is not polled again; the
    daemon stops with the reason, and commits nothing past the batch, which is read once the
    library is installed.
    """
    try:
        return consumer.poll(timeout_ms=timeout_ms)
    except UnsupportedCodecError as exc:
        raise MissingCodec(f"a record batch cannot be decompressed ({exc}): "
                           f"{CODECS_REMEDY}") from exc


def _headers(headers: list[tuple[str, bytes | None]]) -> Headers:
    """A record's headers, a null value as empty bytes (as librdkafka's client gives them): a
    header's value may be null in Kafka, and the answer carries the input's headers on."""
    return tuple((name, b"" if value is None else value) for name, value in headers)


def learn_topics(consumer: KafkaConsumer, topics: list[str]) -> None:
    """Fetch the topics' metadata before a fresh consumer joins its group: kafka-python's
    assignor gives nothing for a topic it has no metadata for ("No partition metadata"), and
    the member then waits, without partitions, for a re-join. Called right after the consumer
    connected, so the broker is there to answer."""
    for topic in topics:
        try:
            consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            log.warning("topic_metadata_failed", extra={"topic": topic, "error": str(exc)})


def connect(build: Callable[[], T], *, what: str, backoff: Backoff, stop: threading.Event,
            events: ClientEvents = NO_EVENTS) -> T | None:
    """:func:`streamem.io.base.connect` for kafka-python: retried while no broker answers."""
    return base.connect(build, retry_on=(KafkaTimeoutError, KafkaConnectionError), what=what,
                        backoff=backoff, stop=stop, events=events)
