"""CRC-32C (Castagnoli) in numpy, for kafka-python when the C ``crc32c`` package is absent.

Kafka's v2 record batches carry a CRC-32C of the batch. kafka-python computes it in pure Python
(about 8 MB/s here) unless the optional ``crc32c`` package is installed: for every batch it
produces and, with ``check_crcs``, every batch it consumes. At a few MB/s of messages that one
loop takes most of a core. This module computes the same checksum with a few vectorised numpy
operations per buffer (a few hundred MB/s), and :func:`install` hands it to kafka-python.

How: a CRC without its initial value and final XOR is linear over GF(2), so the CRC of a
buffer is the XOR of one table entry per byte, the entry depending on the byte's value and its
distance from the buffer's end. The buffer is cut into chunks of :data:`CHUNK` bytes (zeros
padded in front change nothing); one gather over a (CHUNK, 256) table and an XOR reduction give
every chunk's CRC at once, and a log2(n_chunks)-deep tree of "shift by m bytes" maps (each
four 256-entry tables) combines them. The initial value 0xFFFFFFFF is the same as XOR-ing the
first four bytes with 0xFF (the CRC is reflected), the final XOR is applied at the end.

>>> crc32c(b"123456789") == 0xE3069283
True
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

POLY = 0x82F63B78  #: the reflected Castagnoli polynomial
CHUNK = 256  #: bytes per chunk: the position table has CHUNK × 256 entries (uint16 indices)
_SMALL = 64  #: buffers up to this many bytes are checksummed byte by byte in Python

log = logging.getLogger(__name__)
U32 = npt.NDArray[np.uint32]


def _zero_byte(state: U32, table: U32) -> U32:
    """States after one more zero byte, (n,) → (n,)."""
    return table[state & 0xFF] ^ (state >> 8)


def _byte_table() -> U32:
    """The classic table: T[b] is the state after byte b from state 0, (256,)."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _byte_table()
_TABLE_LIST: list[int] = _TABLE.tolist()


def _position_table() -> U32:
    """Flat (CHUNK × 256,): entry ``(CHUNK-1-q)*256 + b`` is byte b at chunk position q's term."""
    rows = np.empty((CHUNK, 256), dtype=np.uint32)
    rows[0] = _TABLE
    for p in range(1, CHUNK):
        rows[p] = _zero_byte(rows[p - 1], _TABLE)
    return rows.ravel()


_POSITIONS = _position_table()
_POSITION_BASE = ((CHUNK - 1 - np.arange(CHUNK)) * 256).astype(np.uint16)
_shift_tables: list[U32] = []  # level k: (4, 256) tables shifting a state by CHUNK·2^k bytes


def _shift_table(level: int) -> U32:
    """(4, 256): a state s shifted by CHUNK·2^level zero bytes is XOR_i T[i, byte i of s]."""
    while len(_shift_tables) <= level:
        if not _shift_tables:
            state = (np.arange(256, dtype=np.uint32)[None, :]
                     << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
            for _ in range(CHUNK):
                state = _zero_byte(state, _TABLE)
        else:
            state = _apply_shift(_shift_tables[-1].ravel(), _shift_tables[-1])
        _shift_tables.append(state.reshape(4, 256))
    return _shift_tables[level]


def _apply_shift(state: U32, table: U32) -> U32:
    return (table[0][state & 0xFF] ^ table[1][(state >> 8) & 0xFF]
            ^ table[2][(state >> 16) & 0xFF] ^ table[3][state >> 24])


def _crc_small(data: Any) -> int:
    crc, table = 0xFFFFFFFF, _TABLE_LIST
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32C of ``data`` (initial value and final XOR 0xFFFFFFFF, as Kafka uses it)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    n = buf.size
    if n <= _SMALL:
        return _crc_small(data)
    n_chunks = -(-n // CHUNK)
    padded = np.zeros(n_chunks * CHUNK, dtype=np.uint8)
    start = padded.size - n
    padded[start:] = buf
    padded[start:start + 4] ^= 0xFF
    index = padded.reshape(n_chunks, CHUNK) + _POSITION_BASE
    states = np.bitwise_xor.reduce(_POSITIONS[index], axis=1)
    level = 0
    while states.size > 1:
        if states.size % 2:
            states = np.concatenate([np.zeros(1, dtype=np.uint32), states])
        states = _apply_shift(states[0::2], _shift_table(level)) ^ states[1::2]
        level += 1
    return int(states[0]) ^ 0xFFFFFFFF


def install() -> bool:
    """Make kafka-python checksum record batches with :func:`crc32c`.

    Does nothing when kafka-python already uses the C ``crc32c`` package (faster still).
    Returns True when kafka-python now uses this module's function.
    """
    from kafka.record import default_records, util

    if getattr(util, "crc32c_c", None) is not None:
        return False
    if default_records.calc_crc32c is not _calc_crc32c:
        default_records.calc_crc32c = _calc_crc32c
        log.debug("kafka-python checksums with numpy CRC-32C")
    return True


def _calc_crc32c(memview: Any, _crc32c: Any = None) -> int:
    """kafka-python's ``calc_crc32c`` signature."""
    return crc32c(memview)


if __name__ == "__main__":  # pragma: no cover - a quick throughput check
    import time

    data = np.random.default_rng(0).integers(0, 256, int(sys.argv[1]), dtype=np.uint8).tobytes()
    t = time.perf_counter()
    for _ in range(20):
        crc32c(data)
    print(f"{20 * len(data) / (time.perf_counter() - t) / 1e6:.0f} MB/s")
