"""The ``json`` input format: one point or a batch of points per message.

A message is ``{"id": ..., "x": [floats], "ts": epoch_ms}`` (id and ts optional), a bare array
``[floats]``, or a batch: an array of such objects, an array of arrays, or ``{"points": [...]}``.
A batch is answered by one output message (an array of records) and keeps its good points when
some are bad (see :class:`~streamem.formats.points.Points`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from streamem.errors import DecodeError
from streamem.formats.points import (
    TS_MAX_MS,
    FloatArray,
    InputFormat,
    Limits,
    Points,
    valid_ts,
)

_parse_fast: Callable[[bytes], Any]
try:  # the ``fast`` extra: orjson parses a small message five times faster
    import orjson

    _parse_fast = orjson.loads
except ImportError:  # pragma: no cover - without the extra (the tests run both parsers)
    _parse_fast = json.loads


def _decode_many(values: Sequence[bytes | None], n_features: int, limits: Limits,
                 out: list[Any]) -> int:
    """Fill ``out`` for the plainly valid single-point messages of a batch, leaving the rest
    None; how many it filled.

    The batch is checked in bulk: one parser call per message, then a few calls per batch
    (the types of all ``x``, ``id`` and ``ts`` at once, one array of all rows, one bounds
    check), so a message costs about a microsecond. Any message this path doubts is left to
    :meth:`InputFormat.decode`, so results and errors are exactly its. Plainly valid: within
    ``max_bytes``, one JSON document, no ``true``/``false`` anywhere (numpy would read a boolean
    as a number), an object with a list ``x`` of ``n_features`` numbers within ``max_abs_value``
    and a valid ``id``/``ts`` (other keys ignored), or a bare array of ``n_features`` numbers.
    """
    if n_features > limits.max_features or not values:
        return 0
    docs = _parse_plain(values, limits.max_bytes)
    kinds = set(map(type, docs))
    if kinds <= {dict}:
        return _objects(docs, range(len(docs)), n_features, limits, out)
    filled = 0
    objects = [i for i, doc in enumerate(docs) if type(doc) is dict]
    if objects:
        filled += _objects([docs[i] for i in objects], objects, n_features, limits, out)
    arrays = [i for i, doc in enumerate(docs) if type(doc) is list]
    if arrays:
        filled += _rows([docs[i] for i in arrays], arrays, [None] * len(arrays), None,
                        n_features, limits, out)
    return filled


def _parse_plain(values: Sequence[bytes | None], max_bytes: int) -> list[Any]:
    """Each value parsed; None for one that is empty, too large, not one JSON document, or
    that may hold a boolean."""
    plain: Sequence[bytes | None] = values
    joined = b"\n".join([v for v in values if v])
    # one byte is found by memchr, many times faster than a word: "true" has a "u", "false" an "l"
    maybe_bool = (b"u" in joined or b"l" in joined) and (b"true" in joined or b"false" in joined)
    if maybe_bool or not all(values) or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
        plain = [None if not v or len(v) > max_bytes
                 or maybe_bool and (b"true" in v or b"false" in v) else v for v in values]
    if all(plain):
        try:
            return list(map(_parse_fast, plain))  # type: ignore[arg-type]
        except (ValueError, RecursionError):
            pass
    return [_parse_or_none(v) for v in plain]


def _parse_or_none(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return _parse_fast(value)
    except (ValueError, RecursionError):
        return None


_ID_TYPES = frozenset({type(None), str, int})
_TS_TYPES = frozenset({type(None), int, float})


def _objects(docs: list[dict[str, Any]], at: Sequence[int], n_features: int, limits: Limits,
             out: list[Any]) -> int:
    """The plainly valid ones of single-point objects ``docs``, message ``at[j]`` each; how
    many."""
    ids = list(map(dict.get, docs, repeat("id")))
    times = list(map(dict.get, docs, repeat("ts")))
    if not set(map(type, ids)) <= _ID_TYPES or not set(map(type, times)) <= _TS_TYPES:
        keep = [j for j, (ident, ts) in enumerate(zip(ids, times, strict=True))
                if type(ident) in _ID_TYPES and type(ts) in _TS_TYPES]
        docs, at = [docs[j] for j in keep], [at[j] for j in keep]
        ids, times = [ids[j] for j in keep], [times[j] for j in keep]
    if not docs:
        return 0
    stamps = None
    if times.count(None) != len(times):
        try:
            stamps = np.array(times, dtype=np.float64)  # None -> NaN
        except OverflowError:
            return 0
        missing = np.isnan(stamps)
        ok = missing | ((stamps >= 0) & (stamps < TS_MAX_MS))
        if np.count_nonzero(missing) != times.count(None):  # a NaN time (json.loads reads it)
            ok &= np.array([ts is None or ts == ts for ts in times])
        if not ok.all():
            keep = np.flatnonzero(ok).tolist()
            docs, at, ids = [docs[j] for j in keep], [at[j] for j in keep], \
                [ids[j] for j in keep]
            stamps = stamps[keep]
    return _rows(list(map(dict.get, docs, repeat("x"))), at, ids, stamps, n_features, limits,
                 out)


def _rows(rows: list[Any], at: Sequence[int], ids: list[Any], stamps: FloatArray | None,
          n_features: int, limits: Limits, out: list[Any]) -> int:
    """``out[at[j]]`` = the point of ``rows[j]`` (its id and time) where it is a plainly valid
    row: a list of ``n_features`` numbers within ``max_abs_value``; how many."""
    X = _plain_array(rows, n_features)
    if X is None:  # some row is odd: keep the rows that are lists of numbers of that length
        keep = [j for j, row in enumerate(rows) if type(row) is list and len(row) == n_features
                and all([type(v) in (int, float) for v in row])]
        X = _plain_array([rows[j] for j in keep], n_features)
        if X is None:
            return 0
        at, ids = [at[j] for j in keep], [ids[j] for j in keep]
        stamps = None if stamps is None else stamps[keep]
    good = (np.abs(X) <= limits.max_abs_value).all(axis=1)  # False for NaN too
    if not good.all():
        keep = np.flatnonzero(good).tolist()
        X, at, ids = X[keep], [at[j] for j in keep], [ids[j] for j in keep]
        stamps = None if stamps is None else stamps[keep]
    singles = Points.singles(X, ids, stamps)
    if isinstance(at, range) and at == range(len(out)):  # every message, in order
        out[:] = singles
        return len(singles)
    for j, points in zip(at, singles, strict=True):
        out[j] = points
    return len(singles)


def _plain_array(rows: list[Any], n_features: int) -> FloatArray | None:
    """(m, n_features) float64 of ``rows`` when they all are lists of that many numbers."""
    if not rows:
        return np.empty((0, n_features))
    try:
        X: npt.NDArray[Any] = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return None
    if X.shape != (len(rows), n_features) or X.dtype.kind not in "iuf":
        return None
    return X.astype(np.float64, copy=False)


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
        if ts is not None and not valid_ts(ts):
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
    if arr is None or arr.ndim != 2 or arr.dtype.kind not in "iuf" or (
            n_features is not None and arr.shape[1] != n_features):
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


def _parse(value: bytes, n_features: int | None, limits: Limits) -> Points:
    return _decode_json(value, n_features, limits)


def encode(X: FloatArray, ids: Sequence[int], ts_ms: float | None = None,
           multi: bool = False) -> bytes:
    """(m, d) points as one message: an object for one point, ``{"points": [...]}`` for a
    batch (``multi`` or more than one point)."""
    points = [{"id": i, "x": x} if ts_ms is None else {"id": i, "x": x, "ts": ts_ms}
              for i, x in zip(list(ids), np.asarray(X).tolist(), strict=True)]
    doc: Any = {"points": points} if multi or len(points) > 1 else points[0]
    return json.dumps(doc, separators=(",", ":")).encode()


FORMAT = InputFormat("json", '{"id", "x": [floats], "ts"} or [floats]; a batch: an array of '
                     'those or {"points": [...]}', _parse, encode, binary=False,
                     decode_many=_decode_many)
