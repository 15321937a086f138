"""kafka-python's record batches, decompressed within a bound, and passed over when unreadable.

kafka-python decompresses a batch whole and without a bound. The broker checks only the
compressed size, so a producer can send a 300 MB message that zstd packs into 10 KB; a
kafka-python consumer then claimed 1 GB for it (measured; librdkafka stops at
``receive.message.max.bytes``). And a batch it fails to unpack leaves its consumer spinning on
that batch for good: the partition's fetched records are never drained.

:func:`install` (once per process, at the first :class:`~streamem.io.kafka.KafkaSource`) makes
kafka-python decompress a record batch only up to ``max_bytes`` (the largest bound asked for),
the way librdkafka does. A batch beyond it is passed over: its partition's position moves past
it, and its offsets wait in :func:`take_unreadable` for the source to dead-letter them, each
with the reason. The batch is never held whole: gzip, lz4 and zstd stream up to the bound,
snappy's declared lengths are read before anything is decompressed.
"""

from __future__ import annotations

import gzip
import io
import struct
import threading
from collections.abc import Collection
from typing import Any

from kafka import codec
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecordBatch

_lock = threading.Lock()
_max_bytes = 0
_unreadable: list[tuple[str, int, int, int, str]] = []
#: Batches passed over and not yet taken, at most (those of topics no source takes, e.g. the
#: shared model's, would otherwise pile up).
MAX_WAITING = 10_000
_XERIAL_HEADER = 16


class BatchTooLarge(KafkaError):
    """A record batch decompresses to more than the bound."""

    def __init__(self, base: int, last: int, detail: str) -> None:
        super().__init__(detail)
        self.base, self.last, self.detail = base, last, detail


def install(max_bytes: int) -> bool:
    """Bound kafka-python's batch decompression at ``max_bytes`` (the largest asked for);
    False when this kafka-python lacks the two methods replaced (written for 3.0)."""
    global _max_bytes
    records: Any = getattr(Fetcher, "PartitionRecords", None)
    if not (hasattr(records, "_unpack_records")
            and hasattr(DefaultRecordBatch, "_maybe_uncompress")):
        return False
    with _lock:
        first = _max_bytes == 0
        _max_bytes = max(_max_bytes, max_bytes)
    if first:
        DefaultRecordBatch._maybe_uncompress = _maybe_uncompress  # type: ignore[method-assign]
        records._unpack_records = _passing_over(records._unpack_records)
    return True


def take_unreadable(topics: Collection[str]) -> list[tuple[str, int, int, str]]:
    """The offsets passed over since the last call, of batches of ``topics``: (topic,
    partition, offset, why), one per offset. Called after every poll: nothing to take costs
    one test, without the lock."""
    if not _unreadable:
        return []
    with _lock:
        mine = [u for u in _unreadable if u[0] in topics]
        _unreadable[:] = [u for u in _unreadable if u[0] not in topics]
    return [(topic, partition, offset, why)
            for topic, partition, first, last, why in mine
            for offset in range(first, last + 1)]


def decompress(kind: int, data: memoryview, limit: int) -> bytes:
    """The batch's records decompressed, at most ``limit`` bytes; ``ValueError`` past it."""
    if kind == DefaultRecordBatch.CODEC_SNAPPY:
        out = _snappy(data.tobytes(), limit)
    elif kind == DefaultRecordBatch.CODEC_GZIP:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limit + 1)
    elif kind == DefaultRecordBatch.CODEC_LZ4:
        import lz4.frame

        out = lz4.frame.LZ4FrameDecompressor().decompress(data.tobytes(), max_length=limit + 1)
    else:
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True) as stream:
            out = stream.read(limit + 1)
    if len(out) > limit:
        raise ValueError(f"decompresses to more than {limit:,} bytes")
    return out


def _snappy(payload: bytes, limit: int) -> bytes:
    """Snappy, raw or in xerial blocks; each block's uncompressed length is checked first."""
    blocks = [payload]
    if payload[:8] == b"\x82SNAPPY\x00":
        blocks, cursor = [], _XERIAL_HEADER
        while cursor < len(payload):
            (size,) = struct.unpack_from("!i", payload, cursor)
            blocks.append(payload[cursor + 4:cursor + 4 + size])
            cursor += 4 + size
    total = sum(map(_snappy_length, blocks))
    if total > limit:
        raise ValueError(f"decompresses to {total:,} bytes, more than {limit:,}")
    return b"".join(codec.snappy.decompress(b) for b in blocks)  # type: ignore[union-attr]


def _snappy_length(block: bytes) -> int:
    """The uncompressed length a raw snappy block declares (its leading varint)."""
    length = shift = 0
    for byte in block[:10]:
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length
        shift += 7
    raise ValueError("not a snappy block")


def _maybe_uncompress(self: Any) -> None:
    """``DefaultRecordBatch._maybe_uncompress`` within the bound."""
    if not self._decompressed:
        kind = self.compression_type
        if kind != self.CODEC_NONE:
            self._assert_has_codec(kind)
            try:
                out = decompress(kind, memoryview(self._buffer)[self._pos:], _max_bytes)
            except ValueError as exc:
                raise BatchTooLarge(self.base_offset, self.last_offset, str(exc)) from None
            self._buffer = bytearray(out)
            self._pos = 0
    self._decompressed = True


def _passing_over(unpack: Any) -> Any:
    """``PartitionRecords._unpack_records`` that passes over a batch it cannot read: the
    records before it are yielded, its offsets noted, and the fetched records end after it
    (drained, the next fetch starting past it) instead of leaving the consumer stuck.

    A batch beyond the bound is passed over whole. A corrupt one (its checksum fails: the
    broker does not check what it reads from disk) one offset at a time, its range being
    unknown: the next fetch, one offset further, meets the same batch until it is past it.
    """
    def unpack_records(self: Any, tp: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            yield from unpack(self, tp, *args, **kwargs)
            return
        except BatchTooLarge as exc:
            first, last = max(exc.base, self.fetch_offset), exc.last
            why = f"record batch at offsets {exc.base}-{exc.last} {exc.detail}"
        except CorruptRecordError as exc:
            first = last = self.next_fetch_offset
            why = str(exc)
        with _lock:
            _unreadable.append((tp.topic, tp.partition, first, last, why))
            del _unreadable[:-MAX_WAITING]
        self.next_fetch_offset = last + 1
        self.drain()
    return unpack_records
