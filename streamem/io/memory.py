"""In-process source and sink: the demo and the tests that are not about Kafka."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice

from streamem.errors import TransportError
from streamem.io.base import Headers, Record, TopicPartition, send_each
from streamem.io.base import Message as OutMessage

Message = tuple[str, "bytes | None", bytes, Headers]


class MemorySource:
    """Serves ``values`` (an iterable of message bytes, possibly endless) as one partition.

    Parameters
    ----------
    values : iterable of bytes or Record
        Message values (or whole records, for their key, headers and timestamp), read lazily;
        offsets count from 0.
    topic : str
        The topic name the records carry.
    batch_size : int
        Most records per :meth:`poll`.
    """

    def __init__(self, values: Iterable[bytes | Record], topic: str = "memory",
                 batch_size: int = 500):
        self._values = iter(values)
        self._topic = topic
        self._batch_size = batch_size
        self._next = 0
        self._uncommitted: list[Record] = []
        self._replay: list[Record] = []
        self._ended = False
        self.commits: list[dict[TopicPartition, int]] = []

    def poll(self, timeout_s: float) -> list[Record]:
        batch, self._replay = self._replay[: self._batch_size], self._replay[self._batch_size:]
        for value in islice(self._values, self._batch_size - len(batch)):
            batch.append(value._replace(topic=self._topic, partition=0, offset=self._next)
                         if isinstance(value, Record) else
                         Record(self._topic, 0, self._next, None, value))
            self._next += 1
        self._ended = not batch
        self._uncommitted.extend(batch)
        return batch

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        done = offsets.get((self._topic, 0), 0)
        self._uncommitted = [r for r in self._uncommitted if r.offset >= done]

    def seek_to_committed(self) -> None:
        self._replay = self._uncommitted + self._replay
        self._uncommitted = []

    def assignment(self) -> set[TopicPartition]:
        return {(self._topic, 0)}

    def lags(self) -> dict[TopicPartition, int]:
        return {(self._topic, 0): len(self._replay)}

    @property
    def exhausted(self) -> bool:
        return self._ended and not self._replay

    def close(self) -> None:
        pass


@dataclass
class MemorySink:
    """Keeps flushed messages in :attr:`sent` and their timestamps (epoch ms, None for "now")
    in :attr:`timestamps`, one per message; ``fail_flushes`` makes the next N flushes fail."""

    sent: list[Message] = field(default_factory=list)
    timestamps: list[int | None] = field(default_factory=list)
    pending: list[tuple[Message, int | None]] = field(default_factory=list)
    fail_flushes: int = 0
    closed: bool = False

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        self.pending.append(((topic, key, value, tuple(headers)), timestamp_ms))

    def send_many(self, topic: str, messages: Iterable[OutMessage]) -> list[tuple[int, str]]:
        return send_each(self, topic, messages)

    def flush(self, timeout_s: float) -> None:
        if self.fail_flushes > 0:
            self.fail_flushes -= 1
            self.pending.clear()
            raise TransportError("memory sink: injected delivery failure")
        self.sent.extend(m for m, _ in self.pending)
        self.timestamps.extend(t for _, t in self.pending)
        self.pending.clear()

    def on(self, topic: str) -> list[Message]:
        """The flushed messages of one topic, in order."""
        return [m for m in self.sent if m[0] == topic]

    def close(self) -> None:
        self.closed = True
