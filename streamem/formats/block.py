"""The ``block`` formats: many points per message in, ``SEMR`` columns out.

Input (``input.format: block``, ``SEM1``): ``b"SEM1"``, one dtype byte (``b"f"`` f32, ``b"d"``
f64), 3 zero bytes, uint32 n, uint32 d, n uint64 ids, then n×d little-endian floats (row-major).

Output (``output.format: block``, ``SEMR``, read back by :func:`decode_result_block`): 22 bytes
per point, all little-endian, a 32-byte header then columns of n values each::

    offset size  field
    0      4     magic b"SEMR"
    4      1     format version, 1
    5      1     flags: bit 0 = id column present, bit 1 = index column present
    6      1     k: top-k columns per point (output.top_k, at most K; 0 = none)
    7      1     reserved, 0
    8      4     uint32 n, points
    12     4     int32 partition of the input message
    16     8     uint64 model_version that answered
    24     8     int64 offset of the input message
    32           id uint64 (n)            if flags bit 0: the input's ids
                 index uint32 (n)         if flags bit 1: position in the input message
                 cluster int32 (n)
                 probability float32 (n)  responsibility of that cluster
                 log_likelihood float32 (n)
                 top_k_component int32 (n, k), row-major, largest first
                 top_k_responsibility float32 (n, k)
                 anomaly uint8 (n), 0/1
                 warmup uint8 (n), 0/1

The id column is present when every id of the input message is an integer in [0, 2**64)
(always for ``block`` input); otherwise (string ids, missing ids) it is left out and a point is
identified by (partition, offset, index). Without an index column, index is the row number.
The copies on ``kafka.anomaly_topic`` (anomalous rows only) carry one, and so do the answers of
a message some of whose points were refused. Log-likelihoods are float32 (seven significant
digits), clamped to +-1e30. The README's "Messages" section is the reference for other
languages.

>>> INPUT.decode(encode_block(np.eye(2), ids=[7, 8]), None).ids
[7, 8]
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from streamem.errors import DecodeError
from streamem.formats.points import (
    FloatArray,
    InputFormat,
    Limits,
    OutputFormat,
    Points,
    finite_log_likelihood,
    largest,
)

BLOCK_MAGIC = b"SEM1"
_BLOCK_HEADER = struct.Struct("<4sc3sII")  # magic, dtype code, reserved, n, d
_BLOCK_DTYPES: dict[bytes, np.dtype[Any]] = {b"f": np.dtype("<f4"), b"d": np.dtype("<f8")}
_DTYPE_CODES = {"f32": b"f", "f64": b"d"}

# --- input ----------------------------------------------------------------------------------


def decode_block(value: bytes, n_features: int | None, limits: Limits) -> Points:
    """A ``SEM1`` message's points (before the shared checks)."""
    if len(value) < _BLOCK_HEADER.size:
        raise DecodeError("bad_binary", f"{len(value)} bytes is shorter than the "
                                        f"{_BLOCK_HEADER.size}-byte block header")
    magic, code, reserved, n, d = _BLOCK_HEADER.unpack_from(value)
    if magic != BLOCK_MAGIC:
        raise DecodeError("bad_binary", f"magic {magic!r} is not {BLOCK_MAGIC!r}")
    if code not in _BLOCK_DTYPES:
        raise DecodeError("bad_binary", f"dtype code {code!r} is not b'f' or b'd'")
    if reserved != b"\0\0\0":
        raise DecodeError("bad_binary", f"reserved bytes {reserved!r} are not zero")
    if n > limits.max_points:
        raise DecodeError("too_many_points", f"n={n} points is more than input.max_points "
                                             f"({limits.max_points})")
    if d > limits.max_features:
        raise DecodeError("too_many_features", f"d={d} features is more than "
                                               f"input.max_features ({limits.max_features})")
    dtype = _BLOCK_DTYPES[code]
    expected = _BLOCK_HEADER.size + 8 * n + dtype.itemsize * n * d
    if len(value) != expected:
        raise DecodeError("bad_binary", f"n={n}, d={d} ({code.decode()}) needs {expected} bytes, "
                                        f"got {len(value)}")
    ids = np.frombuffer(value, dtype="<u8", count=n, offset=_BLOCK_HEADER.size)
    X = np.frombuffer(value, dtype=dtype, count=n * d, offset=_BLOCK_HEADER.size + 8 * n)
    return Points(X.astype(np.float64).reshape(n, d), ids.tolist(), None, multi=True)


def encode_block(X: npt.ArrayLike, ids: Sequence[int] | None = None, dtype: str = "f32") -> bytes:
    """Pack (n, d) points and n uint64 ids (default 0..n-1) into one ``block`` message."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype must be 'f32' or 'f64', got {dtype!r}")
    n, d = X.shape
    id_array = np.arange(n, dtype="<u8") if ids is None else np.asarray(ids, dtype="<u8")
    if id_array.shape != (n,):
        raise ValueError(f"expected {n} ids, got shape {id_array.shape}")
    code = _DTYPE_CODES[dtype]
    floats = np.ascontiguousarray(X, dtype=_BLOCK_DTYPES[code])
    return _BLOCK_HEADER.pack(BLOCK_MAGIC, code, b"\0\0\0", n, d) + id_array.tobytes() \
        + floats.tobytes()


def _encode(X: FloatArray, ids: Sequence[int], ts_ms: float | None = None,
            multi: bool = True) -> bytes:
    return encode_block(X, ids)


INPUT = InputFormat("block", "SEM1: n points with uint64 ids, float32 or float64 (many per "
                             "message)", decode_block, _encode)

# --- output ---------------------------------------------------------------------------------


def encode_result_block(points: Points, result: Any, rows: slice, *, top_k: int,
                        model_version: int, partition: int, offset: int) -> bytes:
    """One ``SEMR`` output message for one input message (layout in the module doc).

    ``rows`` selects the message's rows of ``result``; see :meth:`OutputFormat.encode_all`.
    """
    cols = _BlockColumns.of(result, rows, top_k)
    if cols.n != len(points):
        raise ValueError(f"rows select {cols.n} results for {len(points)} points")
    return cols.message(0, cols.n, _id_column(points.ids), int(model_version), int(partition),
                        int(offset), points.index)


def decode_result_block(value: bytes) -> dict[str, Any]:
    """Read a ``SEMR`` output message into arrays (read-only views of ``value``).

    Returns
    -------
    dict with ``model_version``, ``partition``, ``offset`` (int, of the input message);
    ``id`` (n,) uint64 or None when the input's ids were not all unsigned integers;
    ``index`` (n,) uint32, each point's position in its input message; ``cluster`` (n,) int32;
    ``probability``, ``log_likelihood`` (n,) float32; ``anomaly``, ``warmup`` (n,) bool;
    ``top_k_component`` (n, k) int32 and ``top_k_responsibility`` (n, k) float32 (k may be 0).

    Raises
    ------
    DecodeError : reason ``bad_binary`` when the bytes are not a whole ``SEMR`` message.
    """
    if len(value) < _RESULT_HEADER.size:
        raise DecodeError("bad_binary", f"{len(value)} bytes is shorter than the "
                                        f"{_RESULT_HEADER.size}-byte result header")
    magic, version, flags, k, _, n, partition, model_version, offset = \
        _RESULT_HEADER.unpack_from(value)
    if magic != RESULT_MAGIC or version != RESULT_VERSION:
        raise DecodeError("bad_binary", f"not a version {RESULT_VERSION} {RESULT_MAGIC!r} "
                                        f"message (magic {magic!r}, version {version})")
    widths = _column_widths(flags, k)
    expected = _RESULT_HEADER.size + n * sum(w for _, _, w in widths)
    if len(value) != expected:
        raise DecodeError("bad_binary", f"n={n}, k={k}, flags={flags} needs {expected} bytes, "
                                        f"got {len(value)}")
    out: dict[str, Any] = {"model_version": model_version, "partition": partition,
                           "offset": offset, "id": None}
    at = _RESULT_HEADER.size
    for name, dtype, width in widths:
        column = np.frombuffer(value, dtype=dtype, count=n * width // dtype.itemsize, offset=at)
        out[name] = column.reshape(n, k) if name.startswith("top_k") else column
        at += n * width
    if not flags & _HAS_INDEX:
        out["index"] = np.arange(n, dtype=np.uint32)
    out["anomaly"] = out["anomaly"].view(np.bool_)
    out["warmup"] = out["warmup"].view(np.bool_)
    return out


def anomalous_rows_block(value: bytes) -> bytes:
    """A ``SEMR`` message cut down to its anomalous points, each keeping its ``index``."""
    doc = decode_result_block(value)
    keep = np.flatnonzero(doc["anomaly"])
    flags = _HAS_INDEX | (_HAS_IDS if doc["id"] is not None else 0)
    k = doc["top_k_component"].shape[1]
    header = _RESULT_HEADER.pack(RESULT_MAGIC, RESULT_VERSION, flags, k, 0, keep.size,
                                 doc["partition"], doc["model_version"], doc["offset"])
    doc["index"] = np.asarray(doc["index"])
    return header + b"".join(np.ascontiguousarray(doc[name][keep], dtype=dtype).tobytes()
                             for name, dtype, _ in _column_widths(flags, k))


RESULT_MAGIC = b"SEMR"
RESULT_VERSION = 1
# magic, version, flags, k, reserved, n, partition, model_version, offset: 32 bytes
_RESULT_HEADER = struct.Struct("<4sBBBBIiQq")
_HAS_IDS, _HAS_INDEX = 1, 2
_U8, _U4, _I4, _F4, _U1 = (np.dtype(c) for c in ("<u8", "<u4", "<i4", "<f4", "u1"))


def _column_widths(flags: int, k: int) -> list[tuple[str, np.dtype[Any], int]]:
    """(name, dtype, bytes per point) of each column, in layout order."""
    cols = [("id", _U8, 8)] if flags & _HAS_IDS else []
    cols += [("index", _U4, 4)] if flags & _HAS_INDEX else []
    return cols + [("cluster", _I4, 4), ("probability", _F4, 4), ("log_likelihood", _F4, 4),
                   ("top_k_component", _I4, 4 * k), ("top_k_responsibility", _F4, 4 * k),
                   ("anomaly", _U1, 1), ("warmup", _U1, 1)]


@dataclass(frozen=True)
class _BlockColumns:
    """A result's rows as little-endian bytes: (bytes per point, bytes) per column after ids."""

    n: int
    k: int
    columns: list[tuple[int, bytes]]

    @classmethod
    def of(cls, result: Any, rows: slice, top_k: int) -> _BlockColumns:
        labels = np.asarray(result.labels[rows])
        k = min(top_k, result.responsibilities.shape[1]) if top_k > 0 else 0
        comps: npt.NDArray[Any] = np.empty((len(labels), 0), dtype=np.intp)
        vals: npt.NDArray[Any] = np.empty((len(labels), 0))
        if k:
            comps, vals = largest(result.responsibilities[rows], k)
        arrays = [(labels, _I4), (result.probabilities[rows], _F4),
                  (finite_log_likelihood(result.log_likelihood[rows]), _F4),
                  (comps, _I4), (vals, _F4),
                  (result.anomaly[rows], _U1), (result.warmup[rows], _U1)]
        columns = [(dtype.itemsize * (k if np.ndim(a) == 2 else 1),
                    np.ascontiguousarray(a, dtype=dtype).tobytes()) for a, dtype in arrays]
        return cls(len(labels), k, columns)

    def message(self, lo: int, hi: int, ids: npt.NDArray[np.uint64] | None, version: int,
                partition: int, offset: int, index: npt.NDArray[Any] | None = None) -> bytes:
        """Rows ``lo:hi`` as one message; ``ids`` (hi - lo,) uint64 or None; ``index``
        (hi - lo,) the rows' positions in their input message, or None for 0..n-1."""
        flags = (_HAS_IDS if ids is not None else 0) | (_HAS_INDEX if index is not None else 0)
        parts = [_RESULT_HEADER.pack(RESULT_MAGIC, RESULT_VERSION, flags, self.k, 0, hi - lo,
                                     partition, version, offset)]
        if ids is not None:
            parts.append(ids.tobytes())
        if index is not None:
            parts.append(np.ascontiguousarray(index, dtype=_U4).tobytes())
        parts.extend(column[lo * width:hi * width] for width, column in self.columns)
        return b"".join(parts)


def _encode_blocks(messages: Sequence[Points], result: Any, k: int, version: int,
                   sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """One ``SEMR`` message per input message; see :data:`EncodeBatch`."""
    cols = _BlockColumns.of(result, slice(None), k)
    all_ids = _id_column(list(chain.from_iterable(p.ids for p in messages)))
    out, start = [], 0
    for points, (_, partition, offset) in zip(messages, sources, strict=True):
        stop = start + len(points)
        ids = all_ids[start:stop] if all_ids is not None else _id_column(points.ids)
        out.append(cols.message(start, stop, ids, version, int(partition), int(offset),
                                points.index))
        start = stop
    return out


def _id_column(ids: list[Any]) -> npt.NDArray[np.uint64] | None:
    """ids (n,) as little-endian uint64 when every one is an integer in [0, 2**64), else None."""
    arr = np.array(ids)
    if arr.dtype.kind in "iu" and (arr.dtype.kind == "u" or arr.size == 0 or arr.min() >= 0):
        return arr.astype(_U8)
    if arr.dtype.kind in "fO" and all(type(i) is int and 0 <= i < 2**64 for i in ids):
        return np.array(ids, dtype=_U8)  # ids beyond 2**63 mixed with small ones
    return None


def _anomalous_only(value: bytes, multi: bool) -> bytes:
    return anomalous_rows_block(value)


OUTPUT = OutputFormat("block", "SEMR: a 32-byte header, then one column per field (22 bytes "
                               "per point)", _encode_blocks, _anomalous_only)
