"""Message bytes to points (:func:`decode`) and model results to output bytes (``encode_*``).

Input formats (``input.format``):

* ``json``: ``{"id": ..., "x": [floats], "ts": epoch_ms}`` (id and ts optional), a bare array
  ``[floats]``, or a batch: an array of such objects, an array of arrays, or ``{"points": [...]}``.
* ``f32`` / ``f64``: one raw little-endian vector.
* ``block``: ``b"SEM1"``, one dtype byte (``b"f"`` f32, ``b"d"`` f64), 3 zero bytes, uint32 n,
  uint32 d, n uint64 ids, then n×d little-endian floats (row-major).

Each message is checked once here; a bad one raises :class:`~streamem.errors.DecodeError` whose
``reason`` is one of :data:`REASONS`. The checks cost a few vector operations per message, never a
Python loop per float.

>>> p = decode(b'{"id": "a", "x": [1, 2.5], "ts": 1700000000000}', "json", 2)
>>> p.X, p.ids, p.multi
(array([[1. , 2.5]]), ['a'], False)
>>> decode(encode_block(np.eye(2), ids=[7, 8]), "block", None).ids
[7, 8]
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamem.errors import DecodeError

FloatArray = npt.NDArray[np.float64]
Headers = list[tuple[str, bytes]]

FORMATS = ("json", "f32", "f64", "block")
REASONS = ("bad_json", "bad_schema", "empty", "wrong_dimension", "non_finite", "bad_binary")
BLOCK_MAGIC = b"SEM1"
_BLOCK_HEADER = struct.Struct("<4sc3sII")  # magic, dtype code, reserved, n, d
_BLOCK_DTYPES: dict[bytes, np.dtype[Any]] = {b"f": np.dtype("<f4"), b"d": np.dtype("<f8")}
_DTYPE_CODES = {"f32": b"f", "f64": b"d"}
_MAX_DETAIL_BYTES = 1024
_MAX_ROWS_NAMED = 10
_FEW_ROWS = 16  # up to this many rows, output values are rounded in Python


@dataclass(frozen=True)
class Points:
    """The points of one message.

    X : (n, d) float64, all finite.
    ids : n ids as the message gave them (str or int), None where it gave none.
    ts_ms : (n,) float64 event times in epoch ms (NaN where a point of a batch had none), or
        None when the message carried no times.
    multi : the message was a batch, so it is answered with ONE output message (a JSON array).
    """

    X: FloatArray
    ids: list[Any]
    ts_ms: FloatArray | None
    multi: bool

    def __len__(self) -> int:
        return int(self.X.shape[0])


def decode(value: bytes | None, fmt: str, n_features: int | None) -> Points:
    """Turn one message value into checked points.

    Parameters
    ----------
    value : the Kafka record value (None for a tombstone, which is ``empty``).
    fmt : one of :data:`FORMATS`.
    n_features : required number of features, or None to accept any.

    Raises
    ------
    DecodeError : reason ``bad_json``, ``bad_schema``, ``empty``, ``wrong_dimension``,
        ``non_finite`` or ``bad_binary``.
    ValueError : ``fmt`` is not a known format (a programming error, not a bad message).
    """
    if not value:
        raise DecodeError("empty", "the message has no value")
    if fmt == "json":
        points = _decode_json(value)
    elif fmt in _DTYPE_CODES:
        points = _decode_vector(value, np.dtype("<f4") if fmt == "f32" else np.dtype("<f8"))
    elif fmt == "block":
        points = _decode_block(value)
    else:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    _check_points(points.X, n_features)
    return points


# --- checks shared by every format ------------------------------------------------------------


def _check_points(X: FloatArray, n_features: int | None) -> None:
    """Raise ``empty``, ``wrong_dimension`` or ``non_finite`` for a (n, d) array."""
    n, d = X.shape
    if n == 0:
        raise DecodeError("empty", "the message holds no points")
    if d == 0:
        raise DecodeError("empty", "the points have no features")
    if n_features is not None and d != n_features:
        raise DecodeError("wrong_dimension", f"expected {n_features} features, got {d}")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        named = ", ".join(str(i) for i in bad[:_MAX_ROWS_NAMED])
        more = f" and {bad.size - _MAX_ROWS_NAMED} more" if bad.size > _MAX_ROWS_NAMED else ""
        raise DecodeError("non_finite", f"NaN or infinite values in rows {named}{more}")


# --- binary formats -------------------------------------------------------------------------


def _decode_vector(value: bytes, dtype: np.dtype) -> Points:
    if len(value) % dtype.itemsize:
        raise DecodeError("bad_binary", f"{len(value)} bytes is not a whole number of "
                                        f"{dtype.itemsize}-byte floats")
    X = np.frombuffer(value, dtype=dtype).astype(np.float64).reshape(1, -1)
    return Points(X, [None], None, multi=False)


def _decode_block(value: bytes) -> Points:
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


# --- JSON -----------------------------------------------------------------------------------


def _decode_json(value: bytes) -> Points:
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("bad_json", str(exc)[:200]) from None
    if isinstance(doc, dict):
        if "x" in doc:
            return _from_objects([doc], value, multi=False)
        if "points" in doc:
            return _from_batch(doc["points"], value)
        raise DecodeError("bad_schema", 'expected an object with "x" or "points"')
    if isinstance(doc, list):
        if doc and isinstance(doc[0], (list, dict)):
            return _from_batch(doc, value)
        X = _to_array([doc], value, what="the array")
        return Points(X, [None], None, multi=False)
    raise DecodeError("bad_schema", f"expected an object or an array, got {_kind(doc)}")


def _from_batch(points: Any, value: bytes) -> Points:
    """A batch: a list of objects or a list of arrays."""
    if not isinstance(points, list):
        raise DecodeError("bad_schema", f'"points" must be an array, got {_kind(points)}')
    if not points:
        raise DecodeError("empty", "the batch holds no points")
    if isinstance(points[0], dict):
        return _from_objects(points, value, multi=True)
    X = _to_array(points, value, what="point")
    return Points(X, [None] * len(points), None, multi=True)


def _from_objects(objects: list[Any], value: bytes, *, multi: bool) -> Points:
    rows, ids, times = [], [], []
    for i, obj in enumerate(objects):
        if type(obj) is not dict:
            raise DecodeError("bad_schema", f"point {i}: expected an object, got {_kind(obj)}")
        if "x" not in obj:
            raise DecodeError("bad_schema", f'point {i}: no "x"')
        rows.append(obj["x"])
        ident, ts = obj.get("id"), obj.get("ts")
        if ident is not None and type(ident) not in (str, int):
            raise DecodeError("bad_schema", f'point {i}: "id" must be a string or an integer, '
                                            f"got {_kind(ident)}")
        if ts is not None and (type(ts) not in (int, float) or not math.isfinite(ts)):
            raise DecodeError("bad_schema", f'point {i}: "ts" must be a finite number (epoch ms), '
                                            f"got {ts!r}")
        ids.append(ident)
        times.append(ts)
    X = _to_array(rows, value, what="point" if multi else '"x"')
    return Points(X, ids, _times(times), multi=multi)


def _times(times: list[Any]) -> FloatArray | None:
    if all(t is None for t in times):
        return None
    return np.array([np.nan if t is None else t for t in times], dtype=np.float64)


def _to_array(rows: list[Any], value: bytes, *, what: str) -> FloatArray:
    """(n, d) float64 from n lists of numbers.

    The fast path lets numpy infer the dtype: anything but a clean (n, d) int/float array, or a
    message that may hide booleans (numpy would read ``true`` as 1), goes to :func:`_diagnose`.
    """
    try:
        arr = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        arr = None
    maybe_bool = b"true" in value or b"false" in value
    if arr is None or arr.ndim != 2 or arr.dtype.kind not in "iuf" or maybe_bool:
        return _diagnose(rows, what)
    return arr.astype(np.float64, copy=False)


def _diagnose(rows: list[Any], what: str) -> FloatArray:
    """The slow path: name the first bad row, or build the array if all are numbers after all."""
    width = None
    for i, row in enumerate(rows):
        where = f"{what} {i}" if what == "point" else what
        if not isinstance(row, list):
            raise DecodeError("bad_schema", f"{where}: expected an array of numbers, "
                                            f"got {_kind(row)}")
        for j, v in enumerate(row):
            if type(v) not in (int, float):
                raise DecodeError("bad_schema", f"{where}, feature {j}: expected a number, "
                                                f"got {_kind(v)}")
        if width is not None and len(row) != width:
            raise DecodeError("wrong_dimension", f"{where} has {len(row)} features, "
                                                 f"point 0 has {width}")
        width = len(row)
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), width or 0)
    except OverflowError:
        raise DecodeError("non_finite", "a value is too large for float64") from None


def _kind(v: Any) -> str:
    """A short description of a JSON value for error details."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(v), type(v).__name__)


# --- output ---------------------------------------------------------------------------------


def encode_result(points: Points, result: Any, rows: slice, *, top_k: int, model_version: int,
                  topic: str, partition: int, offset: int) -> bytes:
    """One output message for one input message: a record object, or an array of them.

    Parameters
    ----------
    points : the message's decoded points (n of them).
    result : the model's batch result with arrays ``labels`` (B,), ``probabilities`` (B,),
        ``log_likelihood`` (B,), ``anomaly`` (B,), ``warmup`` (B,) and ``responsibilities`` (B, K).
    rows : this message's n rows within the batch.
    top_k : add the ``top_k`` largest responsibilities as ``[[component, r], ...]``, descending.
    """
    labels = [int(c) for c in result.labels[rows].tolist()]
    probs = _rounded(result.probabilities[rows])
    loglik = _rounded(result.log_likelihood[rows])
    anomaly = [bool(a) for a in result.anomaly[rows].tolist()]
    warmup = [bool(w) for w in result.warmup[rows].tolist()]
    if len(labels) != len(points):
        raise ValueError(f"rows select {len(labels)} results for {len(points)} points")
    version, partition, offset = int(model_version), int(partition), int(offset)
    records = [
        {"id": ident, "cluster": label, "probability": p, "log_likelihood": ll,
         "anomaly": a, "warmup": w, "model_version": version, "topic": topic,
         "partition": partition, "offset": offset, "index": i}
        for i, (ident, label, p, ll, a, w)
        in enumerate(zip(points.ids, labels, probs, loglik, anomaly, warmup, strict=True))
    ]
    if top_k > 0:
        pairs = _top_k(result.responsibilities[rows], top_k)
        for record, top in zip(records, pairs, strict=True):
            record["top_k"] = top
    doc: Any = records if points.multi else records[0]
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _rounded(values: npt.NDArray[Any]) -> list[float | None]:
    """Values (m,) rounded to 6 decimals, None (JSON null) where not finite.

    A few values are rounded in Python: numpy's per-call overhead dominates at that size.
    """
    if values.shape[0] <= _FEW_ROWS:
        return [round(v, 6) if math.isfinite(v) else None for v in values.tolist()]
    out: list[float | None] = np.round(values.astype(np.float64), 6).tolist()
    if not np.isfinite(values).all():
        out = [v if math.isfinite(v) else None for v in out]  # type: ignore[arg-type]
    return out


def _top_k(resp: npt.NDArray[Any], k: int) -> list[list[list[Any]]]:
    """Per row of resp (m, K), the k largest ``[component, r]`` pairs, largest first.

    Ties go to the lower component (except, for many rows, a tie across the k-th place).
    """
    m, n_components = resp.shape
    k = min(k, n_components)
    if m <= _FEW_ROWS:
        out = []
        for row in resp.tolist():
            best = sorted(range(n_components), key=row.__getitem__, reverse=True)[:k]
            out.append([[c, round(row[c], 6)] for c in best])
        return out
    if k < n_components:
        idx = np.argpartition(-resp, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(k), resp.shape)
    at = np.arange(m)[:, None]
    vals = resp[at, idx]
    order = np.lexsort((idx, -vals), axis=1)
    ci, ri = idx[at, order].tolist(), np.round(vals[at, order], 6).tolist()
    return [[[c, r] for c, r in zip(cs, rs, strict=True)] for cs, rs in zip(ci, ri, strict=True)]


def result_headers(model_version: int) -> Headers:
    """Headers of an output message."""
    return [("streamem.model_version", str(int(model_version)).encode())]


def dead_letter_headers(reason: str, detail: str, topic: str, partition: int,
                        offset: int) -> Headers:
    """Headers of a dead-letter message; ``detail`` is cut to 1 KiB of UTF-8."""
    return [
        ("streamem.reason", reason.encode()),
        ("streamem.detail", _cut_utf8(detail, _MAX_DETAIL_BYTES)),
        ("streamem.source.topic", topic.encode()),
        ("streamem.source.partition", str(int(partition)).encode()),
        ("streamem.source.offset", str(int(offset)).encode()),
    ]


def _cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes without splitting a character."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode()
