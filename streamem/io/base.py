"""The record type and the two interfaces every transport implements.

A :class:`Source` hands the runtime batches of :class:`Record` and takes back, after the
batch's outputs are acknowledged, the *next* offset to read per partition. A :class:`Sink`
buffers sends and reports any failure at :meth:`Sink.flush`, so the loop can refuse to commit.
A transport reports its client's health through a :class:`ClientEvents` (``Metrics`` is one);
it takes plain values and knows nothing of the config, the metrics or the runtime.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streamem.errors import StreamemError, TransportError

TopicPartition = tuple[str, int]
Headers = Sequence[tuple[str, bytes]]
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


@dataclass(frozen=True)
class Record:
    """One consumed message; ``offset`` is its position within ``(topic, partition)``.

    ``too_large``: the size of a message the source would not hold (its ``value`` is then
    empty); the runtime dead-letters it as ``too_large``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=tuple)
    timestamp_ms: int | None = None
    too_large: int = 0


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

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> None:
        """Queue one message; failures surface at the next :meth:`flush`."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every send since the last flush.

        Raises :class:`~streamem.errors.TransportError` if any of them failed or timed out.
        """
        ...

    def close(self) -> None: ...


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

