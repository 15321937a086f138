"""Exactly once on librdkafka: outputs, dead letters and input offsets in one transaction.

The confluent-kafka twin of :class:`streamem.io.kafka.TransactionalKafkaSink`, behind the same
:class:`~streamem.io.base.TransactionalSink` interface. librdkafka bounds every transactional
call itself (each takes a timeout), so no helper thread is needed. Its error classes decide
what a failure means:

- ``txn_requires_abort()``: the transaction is doomed but the producer is fine; the caller aborts
  and retries;
- ``fatal()`` (e.g. fenced by a newer producer with the same ``transactional.id``) or a timeout
  in ``init_transactions``/``abort_transaction``: the producer is *broken*; the next
  :meth:`TransactionalRdKafkaSink.begin` builds a new one, whose ``init_transactions`` aborts
  whatever the old one left open.

One producer carries outputs and dead letters (its ``message.max.bytes`` admits any message
read); outputs larger than ``max_message_bytes`` raise :class:`RecordTooLarge` at send. A dead
letter the broker refuses as too large fails its transaction (and its producer, whose sequence
numbers librdkafka cannot mend without a new epoch); from then on dead letters at least that
large go out without their value (header ``streamem.value_dropped``), so the retried
transaction goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streamem.errors import TransportError
from streamem.io.base import (
    NO_EVENTS,
    VALUE_DROPPED_HEADER,
    ClientEvents,
    Headers,
    RecordTooLarge,
    send_each,
)
from streamem.io.base import (
    Message as OutMessage,
)
from streamem.io.rdkafka import DEAD_LETTER_MAX_BYTES, OUTPUT_MAX_BYTES, GroupMetadata, _Batch

log = logging.getLogger(__name__)
TP = tuple[str, int]
_SIZE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                     KafkaError.INVALID_PRODUCER_EPOCH})


class TransactionalRdKafkaSink:
    """A transactional librdkafka producer (see the module's docstring).

    Parameters
    ----------
    conf : dict
        librdkafka producer properties with a ``transactional.id``.
    timeout_s : float
        The bound on every transactional call and on a flush.
    value_drop_topics : frozenset of str
        Topics (the dead letters) whose too large messages go out without their value.
    max_message_bytes : int
        Largest message to any other topic (:class:`RecordTooLarge` at :meth:`send`).
    """

    def __init__(self, conf: Mapping[str, Any], *, timeout_s: float,
                 value_drop_topics: frozenset[str] = frozenset(),
                 max_message_bytes: int = OUTPUT_MAX_BYTES,
                 events: ClientEvents = NO_EVENTS) -> None:
        self._conf = {"logger": log, **conf, "delivery.report.only.error": True,
                      "message.max.bytes": max(int(conf.get("message.max.bytes", 0)),
                                               DEAD_LETTER_MAX_BYTES),
                      "error_cb": self._on_error}
        self._timeout_s = timeout_s
        self._value_drop_topics = value_drop_topics
        self._max_message_bytes = max_message_bytes
        self._dead_limit = DEAD_LETTER_MAX_BYTES
        self._events = events
        self._sends = _Batch()
        self._broken = False
        self._producer = self._new_producer()

    def _on_error(self, err: KafkaError) -> None:
        kind = "produce" if not err.fatal() else "fatal"
        self._events.kafka_error(kind)
        log.warning("kafka_error", extra={"kind": kind, "error": err.str()})

    def _new_producer(self) -> Producer:
        """A producer with its transactions initialised within ``timeout_s`` (which fences
        an earlier producer with the same id and aborts what it left open)."""
        producer = Producer(self._conf)
        try:
            producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            producer.flush(0)
            raise TransportError(f"init_transactions failed: {exc}") from exc
        return producer

    def wait_for_metadata(self, timeout_s: float) -> None:
        """Raise :class:`TransportError` unless a broker answers within ``timeout_s``."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise TransportError(f"no broker answered: {exc}") from exc

    def _call(self, what: str, call: Callable[[], Any]) -> None:
        """One transactional call; a failure raises TransportError (after marking the producer
        broken when librdkafka says it cannot go on)."""
        try:
            call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and (err.fatal() or (
                    what == "abort_transaction" and not err.retriable())):
                self._broken = True
                fenced = err.code() in _FENCED or "fenced" in err.str().lower()
                log.error("producer_fenced" if fenced else "producer_failed",
                          extra={"error": err.str()})
            raise TransportError(f"{what} failed: {exc}") from exc

    # -- the TransactionalSink interface ----------------------------------------------------

    def begin(self) -> None:
        if self._broken:
            self._replace()
        self._sends = _Batch()
        self._call("begin_transaction", self._producer.begin_transaction)

    def _replace(self) -> None:
        try:
            self._producer.flush(0)
        except (KafkaException, RuntimeError) as exc:
            log.warning("producer_close_failed", extra={"error": str(exc)})
        try:
            self._producer = self._new_producer()
        except TransportError:
            self._events.kafka_error("connect")
            raise
        self._broken = False
        log.info("transactional_producer_replaced")

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        stamp = timestamp_ms or 0
        if topic in self._value_drop_topics:
            if len(value) > self._dead_limit:
                self._send_without_value(topic, key, len(value), headers, stamp)
            else:
                self._produce(topic, key, value, headers, stamp,
                              self._sends.droppable_report(topic, key, len(value), headers))
            return
        size = len(value) + (len(key) if key else 0) + sum(len(n) + len(v) for n, v in headers)
        if size > self._max_message_bytes:
            raise RecordTooLarge(f"a {size}-byte message to {topic} exceeds "
                                 f"{self._max_message_bytes} bytes")
        self._produce(topic, key, value, headers, stamp, self._sends.report)

    def send_many(self, topic: str, messages: Iterable[OutMessage]) -> list[tuple[int, str]]:
        return send_each(self, topic, messages)

    def _send_without_value(self, topic: str, key: bytes | None, size: int, headers: Headers,
                            stamp: int) -> None:
        log.warning("dead_letter_value_dropped", extra={"topic": topic, "bytes": size})
        self._events.dead_letter_value_dropped()
        self._produce(topic, key, b"", [*headers, (VALUE_DROPPED_HEADER, str(size).encode())],
                      stamp, self._sends.report)

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: Headers,
                 stamp: int, report: Callable[[KafkaError | None, Message], None]) -> None:
        """Queue one message; a full local queue serves delivery reports until there is room
        (at most ``timeout_s``), a refusal fails the transaction at :meth:`flush`."""
        sends = self._sends
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self._producer.produce(topic, value, key, headers=list(headers) or None,
                                       on_delivery=report, timestamp=stamp)
            except BufferError:
                if time.monotonic() > deadline:
                    sends.errors.append(f"the local queue stayed full for {self._timeout_s:g} s")
                    return
                self._producer.poll(0.05)
                continue
            except KafkaException as exc:
                sends.errors.append(str(exc))
                return
            sends.sent += 1
            return

    def flush(self, timeout_s: float) -> None:
        """Wait for every send since :meth:`begin`; a failure dooms the transaction."""
        sends = self._sends
        try:
            pending = self._producer.flush(min(timeout_s, self._timeout_s))
        except (KafkaException, SystemError) as exc:
            # A fatal error (a fenced producer) can surface here, raised through a callback;
            # confluent-kafka then reports the exception pending in the callback as SystemError
            # (confluent-kafka-python#865; seen once, in the zombie test). Either way this
            # producer cannot go on.
            self._broken = True
            log.error("producer_failed", extra={"error": repr(exc)})
            raise TransportError(f"flush failed: {exc!r}") from exc
        errors = list(sends.errors)
        if sends.refused:  # librdkafka's sequence numbers now need a new producer epoch
            smallest = min(size for _, _, size, _ in sends.refused)
            self._dead_limit = min(self._dead_limit, smallest - 1)
            self._broken = True
            errors.append(f"{len(sends.refused)} dead letters refused as too large")
        if pending > 0:
            errors.append(f"{pending} not acknowledged in time")
        if errors:
            raise TransportError(f"{len(errors)} of {sends.sent} sends failed; "
                                 f"first: {errors[0]}")

    def send_offsets(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        member = group_metadata.native if isinstance(group_metadata, GroupMetadata) \
            else group_metadata
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._call("send_offsets_to_transaction",
                   lambda: self._producer.send_offsets_to_transaction(positions, member,
                                                                      self._timeout_s))

    def commit(self) -> None:
        self._call("commit_transaction",
                   lambda: self._producer.commit_transaction(self._timeout_s))

    def abort(self) -> None:
        """Abort; when that fails too, the producer is replaced at the next :meth:`begin`
        (whose ``init_transactions`` aborts the transaction). Never raises."""
        self._sends = _Batch()
        if self._broken:
            return
        try:
            self._call("abort_transaction",
                       lambda: self._producer.abort_transaction(self._timeout_s))
        except TransportError as exc:
            self._broken = True
            log.warning("abort_failed", extra={"error": str(exc)})

    def close(self) -> None:
        try:
            self._producer.flush(self._timeout_s)
        except (KafkaException, RuntimeError) as exc:
            log.warning("producer_close_failed", extra={"error": str(exc)})
