"""Message bytes to points (:func:`decode`) and model results to output bytes (``encode_*``).

Input formats (``input.format``):

* ``json``: ``{"id": ..., "x": [floats], "ts": epoch_ms}`` (id and ts optional), a bare array
  ``[floats]``, or a batch: an array of such objects, an array of arrays, or ``{"points": [...]}``.
* ``f32`` / ``f64``: one raw little-endian vector.
* ``block``: ``b"SEM1"``, one dtype byte (``b"f"`` f32, ``b"d"`` f64), 3 zero bytes, uint32 n,
  uint32 d, n uint64 ids, then n×d little-endian floats (row-major).

Each message is checked once here; a bad one raises :class:`~streamem.errors.DecodeError` whose
``reason`` is one of :data:`REASONS`. The checks cost a few vector operations per message, never a
Python loop per float. Every bound of :class:`Limits` is checked before the memory it guards is
claimed: the byte length before parsing, the point and feature counts (a JSON list's length, a
block header's n and d) before any array is built. In a multi-point message, bad points do not
condemn the good ones: :class:`Points` holds the good rows, their positions in the message
(``index``) and the bad ones (``rejected``); only a message without a good point raises.

Output formats (``output.format``), one output message per input message:

* ``json`` (:func:`encode_result`): a record object for a single-point message, an array of
  records for a multi-point one (about 200 bytes per point).
* ``block`` (:func:`encode_result_block`, read back by :func:`decode_result_block`): 22 bytes
  per point. All little-endian, a 32-byte header then columns of n values each::

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
  (always for ``block`` input); otherwise (string ids, missing ids) it is left out and a point
  is identified by (partition, offset, index). Without an index column, index is the row
  number. The copies on ``kafka.anomaly_topic`` (anomalous rows only) carry one, and so do
  the answers of a message some of whose points were refused (see :class:`Points`).
  Log-likelihoods are float32: seven significant digits, more than the JSON's six decimals
  for |log p| < 10, and half the bytes of float64. In both formats they are clamped to
  +-:data:`LOG_LIKELIHOOD_LIMIT` (1e30): an impossibly unlikely point reads -1e30, never -inf.
  The input topic is not repeated: it is the daemon's ``kafka.input_topic``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from streamem.errors import DecodeError

FloatArray = npt.NDArray[np.float64]
Headers = list[tuple[str, bytes]]

FORMATS = ("json", "f32", "f64", "block")
OUTPUT_FORMATS = ("json", "block")
REASONS = ("bad_json", "bad_schema", "empty", "wrong_dimension", "non_finite", "bad_binary",
           "too_large", "too_many_points", "too_many_features", "out_of_range")
#: Dead-letter reasons the runtime adds: the model refused the points (after its rollback), or
#: decoding or encoding the message failed unexpectedly (a bug, logged with its traceback).
RUNTIME_REASONS = ("model_rejected", "internal_error")
#: Event times (epoch ms) outside [0, TS_MAX_MS) are refused (year 5138; keeps latencies finite).
TS_MAX_MS = 1e14
#: Log-likelihoods are written clamped to [-LOG_LIKELIHOOD_LIMIT, LOG_LIKELIHOOD_LIMIT] (float32
#: holds it), so an impossibly unlikely point gets a finite, very negative number, never -inf.
LOG_LIKELIHOOD_LIMIT = 1e30
BLOCK_MAGIC = b"SEM1"
_BLOCK_HEADER = struct.Struct("<4sc3sII")  # magic, dtype code, reserved, n, d
_BLOCK_DTYPES: dict[bytes, np.dtype[Any]] = {b"f": np.dtype("<f4"), b"d": np.dtype("<f8")}
_DTYPE_CODES = {"f32": b"f", "f64": b"d"}
_MAX_DETAIL_BYTES = 1024
_MAX_ROWS_NAMED = 10
_FEW_ROWS = 16  # up to this many rows, output values are rounded in Python
# json.loads' C scanner, without the Python wrappers around it (a third of a small message's cost)
_SCAN_ONCE = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse_stdlib(value: bytes) -> Any:
    """The JSON document of a whole value by the standard library's scanner; ValueError if not."""
    text = value.decode()
    try:
        doc, end = _SCAN_ONCE(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("trailing data")
    return doc


_parse_fast: Callable[[bytes], Any]
try:  # the ``fast`` extra: orjson parses a small message five times faster
    import orjson

    _parse_fast = orjson.loads
except ImportError:  # pragma: no cover - without the extra (the tests run both parsers)
    _parse_fast = _parse_stdlib


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may claim (``input.max_*``); see the README.

    max_bytes : the value's length. max_points : points per message. max_features : features
    per point, also when ``n_features`` is not fixed yet. max_abs_value : largest magnitude of a
    coordinate (``out_of_range`` above), so that sums of squares over d features and K
    components stay far from float64's overflow.
    """

    max_bytes: int = 4 << 20
    max_points: int = 10_000
    max_features: int = 1024
    max_abs_value: float = 1e15


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, init=False)
class Points:
    """The points of one message.

    X : (n, d) float64, all finite.
    ids : n ids as the message gave them (str or int), None where it gave none.
    ts_ms : (n,) float64 event times in epoch ms (NaN where a point of a batch had none), or
        None when the message carried no times.
    multi : the message was a batch, so it is answered with ONE output message (a JSON array).
    index : (n,) each row's position in the message, or None when the rows are all its points,
        in order (positions 0..n-1).
    rejected : the message's bad points, ``(position, reason, detail)`` in position order
        (only a multi-point message has some: a single bad point makes its message fail).
    """

    X: FloatArray
    ids: list[Any]
    ts_ms: FloatArray | None
    multi: bool
    index: npt.NDArray[np.intp] | None
    rejected: list[tuple[int, str, str]]

    def __init__(self, X: FloatArray, ids: list[Any], ts_ms: FloatArray | None,
                 multi: bool, index: npt.NDArray[np.intp] | None = None,
                 rejected: list[tuple[int, str, str]] | None = None) -> None:
        # One per message: fill the fields at once, not by the frozen dataclass's
        # object.__setattr__ calls (a third of a single-point message's decoding).
        self.__dict__.update(X=X, ids=ids, ts_ms=ts_ms, multi=multi, index=index,
                             rejected=rejected or [])

    def keep(self, good: npt.NDArray[np.bool_], reasons: Sequence[tuple[str, str]]) -> Points:
        """These points with only the ``good`` rows (n,) kept; the others join ``rejected``.

        ``reasons`` holds a ``(reason, detail)`` per dropped row, in row order.
        """
        position = self.positions()
        rows = np.flatnonzero(good)
        dropped = position[~good].tolist()
        rejected = sorted(self.rejected + [(p, r, d) for p, (r, d) in
                                           zip(dropped, reasons, strict=True)])
        ts = None if self.ts_ms is None else self.ts_ms[rows]
        return Points(self.X[rows], [self.ids[r] for r in rows.tolist()], ts, self.multi,
                      position[rows], rejected)

    def positions(self) -> npt.NDArray[np.intp]:
        """(n,) each row's position in the message."""
        return np.arange(len(self)) if self.index is None else self.index

    def __len__(self) -> int:
        return int(self.X.shape[0])


def decode(value: bytes | None, fmt: str, n_features: int | None,
           limits: Limits = DEFAULT_LIMITS) -> Points:
    """Turn one message value into checked points.

    Parameters
    ----------
    value : the Kafka record value (None for a tombstone, which is ``empty``).
    fmt : one of :data:`FORMATS`.
    n_features : required number of features, or None to accept any (up to the limit).
    limits : the bounds a message must respect.

    Raises
    ------
    DecodeError : with a reason of :data:`REASONS`, when the message holds no good point.
    ValueError : ``fmt`` is not a known format (a programming error, not a bad message).
    """
    if not value:
        raise DecodeError("empty", "the message has no value")
    if len(value) > limits.max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes is more than input.max_bytes "
                                       f"({limits.max_bytes})")
    if fmt == "json":
        points = _decode_json(value, n_features, limits)
    elif fmt in _DTYPE_CODES:
        points = _decode_vector(value, np.dtype("<f4") if fmt == "f32" else np.dtype("<f8"),
                                limits)
    elif fmt == "block":
        points = _decode_block(value, limits)
    else:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    return _check_points(points, n_features, limits)


def decode_all(values: Sequence[bytes | None], fmt: str, n_features: int | None,
               limits: Limits = DEFAULT_LIMITS) -> list[Points | DecodeError]:
    """:func:`decode` every value of a poll batch: its Points, or the DecodeError it raised.

    With ``n_features`` None, the first value that decodes fixes it for the rest. Single-point
    JSON messages of a known width take a batch path: each is parsed and checked in Python,
    then their rows become one array checked at once (one numpy call per batch, not per
    message); any message that path doubts is decoded alone, so results and errors are exactly
    :func:`decode`'s.
    """
    out: list[Points | DecodeError | None] = [None] * len(values)
    if fmt == "json" and n_features is not None:
        _decode_single_points(values, n_features, limits, out)
    for i, value in enumerate(values):
        if out[i] is not None:
            continue
        try:
            points = decode(value, fmt, n_features, limits)
        except DecodeError as exc:
            out[i] = exc
            continue
        n_features = n_features or points.X.shape[1]
        out[i] = points
    return out  # type: ignore[return-value]


def _decode_single_points(values: Sequence[bytes | None], n_features: int, limits: Limits,
                          out: list[Points | DecodeError | None]) -> None:
    """Fill ``out`` for the plainly valid single-point JSON messages; leave the rest None.

    Plainly valid: within ``max_bytes``, one JSON document (orjson's, or the stdlib scanner's
    with no surrounding whitespace), no ``true``/``false`` anywhere (numpy would read a boolean
    as a number), an object with a list ``x`` of ``n_features`` numbers within ``max_abs_value``
    and a valid ``id``/``ts``, or a bare array of numbers.
    """
    if n_features > limits.max_features:
        return
    rows, ids, times, at = [], [], [], []
    joined = b"\n".join(v for v in values if v)
    maybe_bool = b"true" in joined or b"false" in joined
    parse, max_bytes = _parse_fast, limits.max_bytes
    for i, value in enumerate(values):
        if not value or len(value) > max_bytes \
                or maybe_bool and (b"true" in value or b"false" in value):
            continue
        try:
            doc = parse(value)
        except (ValueError, RecursionError):
            continue
        if type(doc) is dict:
            x, ident, ts = doc.get("x"), doc.get("id"), doc.get("ts")
            if type(x) is not list or not (ident is None or type(ident) in (str, int)) \
                    or not (ts is None or _valid_ts(ts)):
                continue
        elif type(doc) is list and doc and type(doc[0]) not in (list, dict):
            x, ident, ts = doc, None, None
        else:
            continue
        if len(x) == n_features:
            rows.append(x)
            ids.append(ident)
            times.append(ts)
            at.append(i)
    if not rows:
        return
    try:
        X: npt.NDArray[Any] = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return
    if X.ndim != 2 or X.dtype.kind not in "iuf":
        return
    X = X.astype(np.float64, copy=False)
    good = (np.abs(X) <= limits.max_abs_value).all(axis=1).tolist()  # False for NaN too
    stamps = np.array([np.nan if ts is None else ts for ts in times], dtype=np.float64)
    for r, (i, ident, ts) in enumerate(zip(at, ids, times, strict=True)):
        if good[r]:
            out[i] = Points(X[r:r + 1], [ident], None if ts is None else stamps[r:r + 1],
                            multi=False)


def _valid_ts(v: Any) -> bool:
    """An event time in epoch ms within [0, TS_MAX_MS) (booleans are not numbers here)."""
    return type(v) in (int, float) and 0 <= v < TS_MAX_MS


# --- checks shared by every format ------------------------------------------------------------


def _check_points(points: Points, n_features: int | None, limits: Limits) -> Points:
    """The points whose values are finite and within ``max_abs_value``.

    Raises ``empty``, ``too_many_points``, ``too_many_features`` or ``wrong_dimension`` for the
    whole message, and ``non_finite`` / ``out_of_range`` when no good point is left (always for
    a single-point message); a multi-point message keeps its good points.
    """
    X = points.X
    n, d = X.shape
    if n == 0:
        raise DecodeError("empty", "the message holds no points")
    if d == 0:
        raise DecodeError("empty", "the points have no features")
    if n > limits.max_points:
        raise DecodeError("too_many_points", f"{n} points is more than input.max_points "
                                             f"({limits.max_points})")
    if d > limits.max_features:
        raise DecodeError("too_many_features", f"{d} features is more than "
                                               f"input.max_features ({limits.max_features})")
    if n_features is not None and d != n_features:
        raise DecodeError("wrong_dimension", f"expected {n_features} features, got {d}")
    lim = limits.max_abs_value
    if X.max() <= lim and X.min() >= -lim:  # False when a NaN is present
        return points
    finite = np.asarray(np.isfinite(X).all(axis=1))
    good = np.asarray((np.abs(X) <= lim).all(axis=1))
    bad = np.flatnonzero(~good)
    reasons = [("non_finite", "a NaN or infinite value") if not finite[r] else
               ("out_of_range", f"a value beyond +-{lim:g} (input.max_abs_value)")
               for r in bad.tolist()]
    if points.multi and good.any():
        return points.keep(good, reasons)
    position = points.positions()
    if points.rejected and points.rejected[0][0] < position[bad[0]]:
        _, reason, detail = points.rejected[0]  # an earlier point was refused first
        raise DecodeError(reason, f"{detail} ({len(points.rejected) + len(bad)} bad points, "
                                  "none good)")
    first = reasons[0][0]
    rows = position[bad[[r == first for r, _ in reasons]]]
    named = ", ".join(str(i) for i in rows[:_MAX_ROWS_NAMED])
    more = f" and {rows.size - _MAX_ROWS_NAMED} more" if rows.size > _MAX_ROWS_NAMED else ""
    what = ("NaN or infinite values" if first == "non_finite" else
            f"values beyond +-{lim:g} (input.max_abs_value)")
    raise DecodeError(first, f"{what} in rows {named}{more}")


# --- binary formats -------------------------------------------------------------------------


def _decode_vector(value: bytes, dtype: np.dtype, limits: Limits) -> Points:
    if len(value) % dtype.itemsize:
        raise DecodeError("bad_binary", f"{len(value)} bytes is not a whole number of "
                                        f"{dtype.itemsize}-byte floats")
    if len(value) // dtype.itemsize > limits.max_features:
        raise DecodeError("too_many_features", f"{len(value) // dtype.itemsize} features is more "
                                               f"than input.max_features ({limits.max_features})")
    X = np.frombuffer(value, dtype=dtype).astype(np.float64).reshape(1, -1)
    return Points(X, [None], None, multi=False)


def _decode_block(value: bytes, limits: Limits) -> Points:
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


# --- JSON -----------------------------------------------------------------------------------


def _decode_json(value: bytes, n_features: int | None, limits: Limits) -> Points:
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("bad_json", str(exc)[:200]) from None
    if isinstance(doc, dict):
        if "x" in doc:
            return _from_objects([doc], value, n_features, limits, multi=False)
        if "points" in doc:
            return _from_batch(doc["points"], value, n_features, limits)
        raise DecodeError("bad_schema", 'expected an object with "x" or "points"')
    if isinstance(doc, list):
        if doc and isinstance(doc[0], (list, dict)):
            return _from_batch(doc, value, n_features, limits)
        return _from_rows([doc], [None], [None], None, [], value, n_features, limits,
                          multi=False, what="the array")
    raise DecodeError("bad_schema", f"expected an object or an array, got {_kind(doc)}")


def _from_batch(points: Any, value: bytes, n_features: int | None, limits: Limits) -> Points:
    """A batch: a list of objects or a list of arrays."""
    if not isinstance(points, list):
        raise DecodeError("bad_schema", f'"points" must be an array, got {_kind(points)}')
    if not points:
        raise DecodeError("empty", "the batch holds no points")
    if len(points) > limits.max_points:
        raise DecodeError("too_many_points", f"{len(points)} points is more than "
                                             f"input.max_points ({limits.max_points})")
    if isinstance(points[0], dict):
        return _from_objects(points, value, n_features, limits, multi=True)
    return _from_rows(points, [None] * len(points), [None] * len(points), None, [], value,
                      n_features, limits, multi=True, what="point")


def _from_objects(objects: list[Any], value: bytes, n_features: int | None, limits: Limits, *,
                  multi: bool) -> Points:
    rows, ids, times, at, rejected = [], [], [], [], []
    for i, obj in enumerate(objects):
        if type(obj) is not dict:
            rejected.append((i, "bad_schema", f"point {i}: expected an object, got {_kind(obj)}"))
            continue
        if "x" not in obj:
            rejected.append((i, "bad_schema", f'point {i}: no "x"'))
            continue
        ident, ts = obj.get("id"), obj.get("ts")
        if ident is not None and type(ident) not in (str, int):
            rejected.append((i, "bad_schema", f'point {i}: "id" must be a string or an '
                                              f"integer, got {_kind(ident)}"))
            continue
        if ts is not None and not _valid_ts(ts):
            rejected.append((i, "bad_schema", f'point {i}: "ts" must be epoch ms in '
                                              f"[0, {TS_MAX_MS:g}), got {_short(ts)}"))
            continue
        rows.append(obj["x"])
        ids.append(ident)
        times.append(ts)
        at.append(i)
    return _from_rows(rows, ids, times, at if rejected else None, rejected, value, n_features,
                      limits, multi=multi, what="point" if multi else '"x"')


def _from_rows(rows: list[Any], ids: list[Any], times: list[Any], at: list[int] | None,
               rejected: list[tuple[int, str, str]], value: bytes, n_features: int | None,
               limits: Limits, *, multi: bool, what: str) -> Points:
    """Points from the rows of a message's well-formed points.

    ``at`` holds each row's position in the message (None: 0..n-1); ``rejected`` the points
    already refused. A single-point message raises its point's error.
    """
    X, kept, bad = _to_array(rows, value, what, n_features, limits)
    position = list(range(len(rows))) if at is None else at
    rejected = rejected + [(position[r], reason, detail) for r, reason, detail in bad]
    if rejected and (not multi or not kept):
        rejected.sort()
        more = f" ({len(rejected)} bad points, none good)" if multi else ""
        raise DecodeError(rejected[0][1], rejected[0][2] + more)
    if not rejected:
        return Points(X, ids, _times(times), multi=multi)
    index = np.asarray([position[r] for r in kept], dtype=np.intp)
    return Points(X, [ids[r] for r in kept], _times([times[r] for r in kept]), multi,
                  index, sorted(rejected))


def _times(times: list[Any]) -> FloatArray | None:
    if all(t is None for t in times):
        return None
    return np.array([np.nan if t is None else t for t in times], dtype=np.float64)


def _to_array(rows: list[Any], value: bytes, what: str, n_features: int | None,
              limits: Limits) -> tuple[FloatArray, list[int], list[tuple[int, str, str]]]:
    """(m, d) float64 from the rows that are lists of numbers; the kept rows; the bad ones.

    The fast path lets numpy infer the dtype: anything but a clean (n, d) int/float array of
    at most ``max_features`` columns, or a message that may hide booleans (numpy would read
    ``true`` as 1), goes to :func:`_diagnose`. Row lengths are checked before any array is made.
    """
    max_features = limits.max_features
    arr = None
    if not (b"true" in value or b"false" in value) \
            and all([type(r) is list and len(r) <= max_features for r in rows]):
        try:
            arr = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            arr = None
    if arr is None or arr.ndim != 2 or arr.dtype.kind not in "iuf":
        return _diagnose(rows, what, n_features, limits)
    return arr.astype(np.float64, copy=False), list(range(len(rows))), []


def _diagnose(rows: list[Any], what: str, n_features: int | None,
              limits: Limits) -> tuple[FloatArray, list[int], list[tuple[int, str, str]]]:
    """The slow path: each row checked alone; the good rows as an array, the bad ones named."""
    width, good, kept, bad = n_features, [], [], []
    for i, row in enumerate(rows):
        where = f"{what} {i}" if what == "point" else what
        wrong = _row_error(row, where, width, limits)
        if wrong is None:
            try:
                good.append(np.array(row, dtype=np.float64))
            except OverflowError:
                wrong = ("out_of_range", f"{where}: a value is too large for float64")
        if wrong is not None:
            bad.append((i, *wrong))
            continue
        width = len(row)
        kept.append(i)
    X = np.array(good) if good else np.empty((0, width or 0))
    return X, kept, bad


def _row_error(row: Any, where: str, width: int | None, limits: Limits) -> tuple[str, str] | None:
    if not isinstance(row, list):
        return "bad_schema", f"{where}: expected an array of numbers, got {_kind(row)}"
    if len(row) > limits.max_features:
        return "too_many_features", (f"{where} has {len(row)} features, more than "
                                     f"input.max_features ({limits.max_features})")
    if not row:
        return "empty", f"{where} has no features"
    for j, v in enumerate(row):
        if type(v) not in (int, float):
            return "bad_schema", f"{where}, feature {j}: expected a number, got {_kind(v)}"
    if width is not None and len(row) != width:
        return "wrong_dimension", f"{where} has {len(row)} features, expected {width}"
    return None


def _short(v: Any) -> str:
    return repr(v)[:40]


def _kind(v: Any) -> str:
    """A short description of a JSON value for error details."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(v), type(v).__name__)


# --- output ---------------------------------------------------------------------------------


def encode_result(points: Points, result: Any, rows: slice, *, top_k: int, model_version: int,
                  topic: str, partition: int, offset: int) -> bytes:
    """One JSON output message for one input message: a record object, or an array of them.

    Parameters
    ----------
    points : the message's decoded points (n of them).
    result : the model's batch result with arrays ``labels`` (B,), ``probabilities`` (B,),
        ``log_likelihood`` (B,), ``anomaly`` (B,), ``warmup`` (B,) and ``responsibilities`` (B, K).
    rows : this message's n rows within the batch.
    top_k : add the ``top_k`` largest responsibilities as ``[[component, r], ...]``, descending.
    """
    cols = _JsonColumns.of(result, rows, top_k)
    if len(cols.labels) != len(points):
        raise ValueError(f"rows select {len(cols.labels)} results for {len(points)} points")
    return cols.message(points, 0, int(model_version), json.dumps(topic), int(partition),
                        int(offset))


def encode_results(messages: Sequence[Points], result: Any, *, fmt: str, top_k: int,
                   model_version: int, sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """The output messages of a whole poll batch, one per input message, in order.

    Parameters
    ----------
    messages : the batch's decoded messages; their points are the result's rows, in order.
    result : the model's result for all of them (see :func:`encode_result`).
    fmt : ``"json"`` (as :func:`encode_result`) or ``"block"`` (as :func:`encode_result_block`).
    sources : per message, the input ``(topic, partition, offset)``.

    The columns are converted once for the batch, so a message costs a string format (JSON)
    or a few byte slices (block), not numpy calls.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    n_rows = sum([len(p.ids) for p in messages])  # one id per point; len(ids) is cheaper
    if n_rows != len(result.labels):
        raise ValueError(f"the messages hold {n_rows} points, the result {len(result.labels)}")
    if fmt == "block":
        return _encode_blocks(messages, result, top_k, int(model_version), sources)
    cols = _JsonColumns.of(result, slice(None), top_k)
    version, out, start = int(model_version), [], 0
    topics: dict[str, str] = {}
    for points, (topic, partition, offset) in zip(messages, sources, strict=True):
        topic_json = topics.get(topic) or topics.setdefault(topic, json.dumps(topic))
        out.append(cols.message(points, start, version, topic_json, int(partition),
                                int(offset)))
        start += len(points.ids)
    return out


_RECORD = ('{"id":%s,"cluster":%d,"probability":%s,"log_likelihood":%s,"anomaly":%s,'
           '"warmup":%s,"model_version":%d,"topic":%s,"partition":%d,"offset":%d,"index":%d')
_BOOL = ("false", "true")


@dataclass(frozen=True)
class _JsonColumns:
    """Result rows as Python lists, ready to format: (m,) each, top_k (m,) lists of pairs."""

    labels: list[int]
    probs: list[str]
    loglik: list[str]
    anomaly: list[str]
    warmup: list[str]
    top_k: list[str] | None

    @classmethod
    def of(cls, result: Any, rows: slice, top_k: int) -> _JsonColumns:
        pairs = None
        if top_k > 0:
            pairs = [json.dumps(p, separators=(",", ":"))
                     for p in _top_k(result.responsibilities[rows], top_k)]
        return cls(result.labels[rows].tolist(), _json_numbers(result.probabilities[rows]),
                   _json_numbers(finite_log_likelihood(result.log_likelihood[rows])),
                   [_BOOL[a] for a in result.anomaly[rows].tolist()],
                   [_BOOL[w] for w in result.warmup[rows].tolist()], pairs)

    def message(self, points: Points, start: int, version: int, topic_json: str,
                partition: int, offset: int) -> bytes:
        """One message's JSON: its points are rows ``start:start+len(points)`` of the columns."""
        if not points.multi:  # one point: no list to build and join
            return self.record(start, points.ids[0], 0, version, topic_json, partition,
                               offset).encode()
        index = range(len(points.ids)) if points.index is None else points.index.tolist()
        pairs = enumerate(zip(points.ids, index, strict=True))
        return ("[" + ",".join([self.record(start + i, ident, at, version, topic_json,
                                            partition, offset) for i, (ident, at) in pairs])
                + "]").encode()

    def record(self, r: int, ident: Any, index: int, version: int, topic_json: str,
               partition: int, offset: int) -> str:
        """The JSON object of row ``r``, the ``index``-th point of its message."""
        text = _RECORD % (_json_id(ident), self.labels[r], self.probs[r], self.loglik[r],
                          self.anomaly[r], self.warmup[r], version, topic_json, partition,
                          offset, index)
        return text + "}" if self.top_k is None else text + ',"top_k":' + self.top_k[r] + "}"


def finite_log_likelihood(values: npt.NDArray[Any]) -> FloatArray:
    """Log-likelihoods (m,) clamped to +-:data:`LOG_LIKELIHOOD_LIMIT`, NaN as the lower end."""
    out = np.asarray(values, dtype=np.float64)
    lo, hi = out.min(initial=0.0), out.max(initial=0.0)
    if -LOG_LIKELIHOOD_LIMIT <= lo and hi <= LOG_LIKELIHOOD_LIMIT:  # False with a NaN
        return out
    out = np.nan_to_num(out, nan=-LOG_LIKELIHOOD_LIMIT)
    return np.clip(out, -LOG_LIKELIHOOD_LIMIT, LOG_LIKELIHOOD_LIMIT)


def _json_id(ident: Any) -> str:
    if type(ident) is int:
        return str(ident)
    return "null" if ident is None else json.dumps(ident)


def _json_numbers(values: npt.NDArray[Any]) -> list[str]:
    """Values (m,) rounded to 6 decimals as JSON numbers, ``null`` where not finite."""
    return [repr(v) if v is not None else "null" for v in _rounded(values)]


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


def _top_k_arrays(resp: npt.NDArray[Any], k: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Per row of resp (m, K), the k largest components and their values, (m, k) each.

    Largest first; ties go to the lower component (except a tie across the k-th place).
    """
    m, n_components = resp.shape
    k = min(k, n_components)
    if k < n_components:
        idx = np.argpartition(-resp, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(k), resp.shape)
    at = np.arange(m)[:, None]
    vals = resp[at, idx]
    order = np.lexsort((idx, -vals), axis=1)
    return idx[at, order], vals[at, order]


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
    idx, vals = _top_k_arrays(resp, k)
    ci, ri = idx.tolist(), np.round(vals, 6).tolist()
    return [[[c, r] for c, r in zip(cs, rs, strict=True)] for cs, rs in zip(ci, ri, strict=True)]


# --- binary output (output.format: block) ---------------------------------------------------


def encode_result_block(points: Points, result: Any, rows: slice, *, top_k: int,
                        model_version: int, partition: int, offset: int) -> bytes:
    """One binary ``SEMR`` output message for one input message (layout in the module doc).

    ``points``, ``result``, ``rows`` and ``top_k`` as for :func:`encode_result`.
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
            comps, vals = _top_k_arrays(result.responsibilities[rows], k)
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


def _encode_blocks(messages: Sequence[Points], result: Any, top_k: int, version: int,
                   sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
    cols = _BlockColumns.of(result, slice(None), top_k)
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


def result_headers(model_version: int) -> Headers:
    """Headers of an output message."""
    return [("streamem.model_version", str(int(model_version)).encode())]


def dead_letter_headers(reason: str, detail: str, topic: str, partition: int,
                        offset: int, bad_points: Sequence[int] | None = None) -> Headers:
    """Headers of a dead-letter message; ``detail`` is cut to 1 KiB of UTF-8.

    ``bad_points``: the positions of the refused points of a message whose other points were
    answered, written as ``streamem.bad_points`` ranges (``"1,4-6"``); None for a whole message.
    """
    headers = [
        ("streamem.reason", reason.encode()),
        ("streamem.detail", _cut_utf8(detail, _MAX_DETAIL_BYTES)),
        ("streamem.source.topic", topic.encode()),
        ("streamem.source.partition", str(int(partition)).encode()),
        ("streamem.source.offset", str(int(offset)).encode()),
    ]
    if bad_points is not None:
        headers.append(("streamem.bad_points", _ranges(bad_points).encode()))
    return headers


def _ranges(positions: Sequence[int]) -> str:
    """Sorted positions as ranges: [1, 4, 5, 6] -> ``"1,4-6"``."""
    out: list[str] = []
    values = sorted(positions)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str) -> list[int]:
    """The positions of a ``streamem.bad_points`` header: ``"1,4-6"`` -> [1, 4, 5, 6]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes without splitting a character."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode()
