"""The record type and the two interfaces every transport implements.

A :class:`Source` hands the runtime batches of :class:`Record` and takes back, after the
batch's outputs are acknowledged, the *next* offset to read per partition. A :class:`Sink`
buffers sends and reports any failure at :meth:`Sink.flush`, so the loop can refuse to commit.
A transport reports its client's health through a :class:`ClientEvents` (``Metrics`` is one);
it takes plain values and knows nothing of the config, the metrics or the runtime.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from streamem.errors import StreamemError, TransportError

log = logging.getLogger(__name__)
T = TypeVar("T")
TopicPartition = tuple[str, int]
Headers = Sequence[tuple[str, bytes]]
Message = tuple["bytes | None", bytes, Headers, "int | None"]
"""An outgoing message of :meth:`Sink.send_many`: key, value, headers, timestamp (epoch ms)."""
VALUE_DROPPED_HEADER = "streamem.value_dropped"
"""On a dead letter whose value was too large to send: the original value's size in bytes."""


class ClientEvents(Protocol):
    """What a Kafka transport reports about its clients (``streamem.metrics.Metrics`` is one)."""

    def kafka_error(self, kind: str) -> None:
        """One failed check or connection attempt of ``kind`` (``connect``, ``coordinator``)."""
        ...

    def set_kafka_up(self, up: bool) -> None:
        """Whether the cluster is reachable."""
        ...

    def reconnect(self) -> None:
        """The cluster is reachable again after an outage."""
        ...

    def rejoin(self) -> None:
        """The consumer left its group to join it again."""
        ...

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        """Whether the process is healthy (``/healthz``), and why not."""
        ...

    def dead_letter_value_dropped(self) -> None:
        """A dead letter went out without its value (too large to send)."""
        ...


class _NoEvents:
    """Ignores every event."""

    def kafka_error(self, kind: str) -> None:
        pass

    def set_kafka_up(self, up: bool) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def rejoin(self) -> None:
        pass

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        pass

    def dead_letter_value_dropped(self) -> None:
        pass


NO_EVENTS: ClientEvents = _NoEvents()
"""The default :class:`ClientEvents`: nothing is reported."""


class CommitFailed(TransportError):
    """The group rebalanced under us: the commit was refused, the outputs are already out.

    The loop counts it and polls again; the new owner of the partition re-reads from the last
    committed offset, so the affected records are answered twice (at-least-once).
    """


class RecordTooLarge(StreamemError):
    """One outgoing message exceeds what the sink may send; its input goes to the dead letters."""


class Backoff:
    """Exponential back-off with jitter: ``initial_s``, doubling up to ``max_s``.

    >>> b = Backoff(0.5, 4.0, jitter=0.0)
    >>> [b.next_delay() for _ in range(5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    """

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.1) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._delay = initial_s

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2.0, self.max_s)
        return delay * (1.0 + self.jitter * random.random())

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay unless ``stop`` is set first; True when stop was set."""
        return stop.wait(self.next_delay())

    def reset(self) -> None:
        self._delay = self.initial_s


class Record(NamedTuple):
    """One consumed message; ``offset`` is its position within ``(topic, partition)``.

    ``too_large``: the size of a message the source would not hold (its ``value`` is then
    empty); the runtime dead-letters it as ``too_large``. ``unreadable``: why the Kafka client
    could not read a message at all (its ``value`` is empty), dead-lettered as ``unreadable``.
    A tuple: a poll makes thousands.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp_ms: int | None = None
    too_large: int = 0
    unreadable: str = ""


@runtime_checkable
class Source(Protocol):
    """Where messages come from."""

    def poll(self, timeout_s: float) -> list[Record]:
        """Up to one batch of records; an empty list when none arrived within ``timeout_s``."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record that every message before ``offsets[tp]`` is done (next offsets, not last).

        Raises :class:`CommitFailed` after a rebalance, :class:`TransportError` when unreachable.
        """
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this source currently reads."""
        ...

    def lags(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition (as far as known)."""
        ...

    def seek_to_committed(self) -> None:
        """Rewind every assigned partition to its last committed offset (to retry a batch)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once the source can never yield another record (end of stdin or of a list)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Where results go."""

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        """Queue one message; failures surface at the next :meth:`flush`.

        ``timestamp_ms``: the record's timestamp (epoch ms); the runtime passes the input
        record's, so outputs carry event time. None lets the transport stamp the send time.
        """
        ...

    def send_many(self, topic: str, messages: Iterable[Message]) -> list[tuple[int, str]]:
        """:meth:`send` each ``(key, value, headers, timestamp_ms)`` of ``messages`` to
        ``topic`` (a poll batch's outputs); the position and error of each one too large to
        send (:class:`RecordTooLarge`), the others queued. :func:`send_each` does it."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every send since the last flush.

        Raises :class:`~streamem.errors.TransportError` if any of them failed or timed out.
        """
        ...

    def close(self) -> None: ...


def send_each(sink: Sink, topic: str, messages: Iterable[Message]) -> list[tuple[int, str]]:
    """:meth:`Sink.send_many` by one :meth:`Sink.send` each (sinks with no faster way)."""
    too_large = []
    for i, (key, value, headers, timestamp_ms) in enumerate(messages):
        try:
            sink.send(topic, key, value, headers, timestamp_ms)
        except RecordTooLarge as exc:
            too_large.append((i, str(exc)))
    return too_large


@runtime_checkable
class GroupMember(Protocol):
    """A source that reads in a consumer group (its offsets can commit in a transaction)."""

    def group_metadata(self) -> object:
        """The membership now (generation, member id): stale, it fences a commit."""
        ...


@runtime_checkable
class TransactionalSink(Sink, Protocol):
    """A :class:`Sink` whose sends, and the input offsets they answer, commit atomically.

    Every call is bounded; one that fails or times out raises :class:`TransportError`, after
    which the transaction is gone (aborted, or fenced by the next :meth:`begin`): the caller
    rewinds its source and undoes the transaction's effect on its state.
    """

    def begin(self) -> None:
        """Start a transaction (first replacing a producer that failed)."""
        ...

    def send_offsets(self, offsets: Mapping[TopicPartition, int], group_metadata: object) -> None:
        """Add the next offsets to read to the transaction (with the consumer's group metadata,
        so a member that lost its partitions is fenced)."""
        ...

    def commit(self) -> None:
        """Commit the transaction: its sends and offsets become visible together."""
        ...

    def abort(self) -> None:
        """Abort the transaction: nothing of it becomes visible to ``read_committed`` readers."""
        ...



class RejoinGuard:
    """When a group member without partitions should re-join, and when /healthz should fail.

    A member that holds no partitions of a topic that has some, while its membership is not
    healthy, re-joins after ``rejoin_after_s``; after two re-joins that did not help, it reports
    itself unhealthy (``events.set_healthy(False, ...)``) until partitions arrive.

    >>> guard = RejoinGuard(30.0, NO_EVENTS)
    >>> guard.due(stuck=True, now=0.0), guard.due(stuck=True, now=31.0)
    (False, True)
    """

    def __init__(self, rejoin_after_s: float, events: ClientEvents) -> None:
        self.rejoin_after_s = rejoin_after_s
        self._events = events
        self._since: float | None = None
        self._tries = 0

    def due(self, *, stuck: bool, now: float) -> bool:
        """Whether to re-join now; ``stuck``: no partitions, some to have, membership unhealthy."""
        if not stuck:
            self._since = None
            if self._tries:
                self._tries = 0
                self._events.set_healthy(True)
            return False
        if self._since is None:
            self._since = now
            return False
        if now - self._since < self.rejoin_after_s:
            return False
        self._since = now
        self._tries += 1
        if self._tries > 2:
            self._events.set_healthy(False, "no partitions after re-joining the group twice")
        return True


def connect(build: Callable[[], T], *, retry_on: tuple[type[BaseException], ...], what: str,
            backoff: Backoff, stop: threading.Event, events: ClientEvents = NO_EVENTS) -> T | None:
    """Call ``build`` until it succeeds, backing off while it raises one of ``retry_on``.

    Returns None if ``stop`` is set before a connection is made. Each failure is logged and
    counted (``kafka_error("connect")``, ``kafka_up`` 0, a reconnect when one finally succeeds).
    """
    first = True
    while not stop.is_set():
        try:
            client = build()
        except retry_on as exc:
            delay = backoff.next_delay()
            log.warning("kafka_unavailable", extra={"client": what, "error": str(exc),
                                                    "retry_in_s": round(delay, 2)})
            events.kafka_error("connect")
            events.set_kafka_up(False)
            if stop.wait(delay):
                return None
            first = False
            continue
        events.set_kafka_up(True)
        if not first:
            events.reconnect()
        backoff.reset()
        log.info("kafka_connected", extra={"client": what})
        return client
    return None
