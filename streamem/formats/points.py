"""What every format shares: the points of a message, its bounds, the checks, the format types.

Each message is checked once; a bad one raises :class:`~streamem.errors.DecodeError` whose
``reason`` is one of :data:`~streamem.formats.REASONS`. The checks cost a few vector operations
per message, never a Python loop per float. Every bound of :class:`Limits` is checked before the
memory it guards is claimed: the byte length before parsing, the point and feature counts (a
JSON list's length, a block header's n and d) before any array is built. In a multi-point
message, bad points do not condemn the good ones: :class:`Points` holds the good rows, their
positions in the message (``index``) and the bad ones (``rejected``); only a message without a
good point raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from streamem.errors import DecodeError

FloatArray = npt.NDArray[np.float64]
#: Event times (epoch ms) outside [0, TS_MAX_MS) are refused (year 5138; keeps latencies finite).
TS_MAX_MS = 1e14
#: Log-likelihoods are written clamped to [-LOG_LIKELIHOOD_LIMIT, LOG_LIKELIHOOD_LIMIT] (float32
#: holds it), so an impossibly unlikely point gets a finite, very negative number, never -inf.
LOG_LIKELIHOOD_LIMIT = 1e30
_MAX_ROWS_NAMED = 10


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


class Points(NamedTuple):
    """The points of one message (immutable; a tuple, so that a poll batch of single-point
    messages makes its thousands of them cheaply).

    X : (n, d) float64, all finite.
    ids : n ids as the message gave them (str or int), None where it gave none.
    ts_ms : (n,) float64 event times in epoch ms (NaN where a point of a batch had none), or
        None when the message carried no times.
    multi : the message was a batch, so it is answered with ONE output message (a JSON array).
    index : (n,) each row's position in the message, or None when the rows are all its points,
        in order (positions 0..n-1).
    rejected : the message's bad points, ``(position, reason, detail)`` in position order
        (only a multi-point message has some: a single bad point makes its message fail).

    ``len(points)`` is the number of points (n), not the number of fields.
    """

    X: FloatArray
    ids: list[Any]
    ts_ms: FloatArray | None
    multi: bool
    index: npt.NDArray[np.intp] | None = None  # type: ignore[assignment]  # (tuple.index)
    rejected: Sequence[tuple[int, str, str]] = ()

    def keep(self, good: npt.NDArray[np.bool_], reasons: Sequence[tuple[str, str]]) -> Points:
        """These points with only the ``good`` rows (n,) kept; the others join ``rejected``.

        ``reasons`` holds a ``(reason, detail)`` per dropped row, in row order.
        """
        position = self.positions()
        rows = np.flatnonzero(good)
        dropped = position[~good].tolist()
        rejected = sorted([*self.rejected, *((p, r, d) for p, (r, d) in
                                             zip(dropped, reasons, strict=True))])
        ts = None if self.ts_ms is None else self.ts_ms[rows]
        return Points(self.X[rows], [self.ids[r] for r in rows.tolist()], ts, self.multi,
                      position[rows], rejected)

    @classmethod
    def singles(cls, X: FloatArray, ids: list[Any], ts_ms: FloatArray | None) -> list[Points]:
        """The points of m single-point messages: row i of X (m, d) with ``ids[i]`` and event
        time ``ts_ms[i]`` (NaN or None: none). Built by C loops, not a Python call each (a
        poll batch makes thousands); each X is a (1, d) view of ``X``.
        """
        m = len(X)
        times: Any = repeat(None, m)
        if ts_ms is not None:
            times = list(ts_ms[:, None])
            for i in np.flatnonzero(np.isnan(ts_ms)).tolist():
                times[i] = None
        fields = zip(X[:, None, :], [[ident] for ident in ids], times, repeat(False, m),
                     repeat(None, m), repeat((), m), strict=True)
        return list(map(tuple.__new__, repeat(cls, m), fields))  # type: ignore[arg-type]

    def positions(self) -> npt.NDArray[np.intp]:
        """(n,) each row's position in the message."""
        return np.arange(len(self)) if self.index is None else self.index

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.X.shape[0])


def sizes(messages: Sequence[Points]) -> list[int]:
    """The number of points of each message (``ids`` has one entry per point: a C-level
    ``len`` each, for the thousands of single-point messages of a poll batch)."""
    return [len(points.ids) for points in messages]


#: Decodes one value (non-empty, within ``max_bytes``) before the shared checks of
#: :func:`check_points`: ``(value, n_features, limits) -> Points``.
Parse = Callable[[bytes, "int | None", Limits], Points]
#: Encodes (m, d) points, their m integer ids and an event time (or None) as one message;
#: ``multi``: a batch message even for one point. ``(X, ids, ts_ms, multi) -> value``.
Encode = Callable[[FloatArray, Sequence[int], "float | None", bool], bytes]
#: Decodes the plainly valid values of a poll batch at once: ``(values, n_features, limits,
#: out)`` fills ``out[i]`` with the Points of value i, leaving the others None, and returns
#: how many it filled.
DecodeMany = Callable[[Sequence["bytes | None"], int, Limits, list[Any]], int]


@dataclass(frozen=True)
class InputFormat:
    """An input format: how a message value becomes points (and how to write one, for
    ``streamem produce`` and the benches).

    name : its registry name. summary : one line for the README and ``--help``.
    parse : see :data:`Parse`. encode : see :data:`Encode`.
    max_points_per_message : None when a message may hold any number of points.
    binary : values are bytes, not text lines (stdin reads them length-prefixed).
    decode_many : an optional batch path (see :data:`DecodeMany`) whose results equal
        :meth:`decode`'s.
    """

    name: str
    summary: str
    parse: Parse
    encode: Encode
    max_points_per_message: int | None = None
    binary: bool = True
    decode_many: DecodeMany | None = None

    def decode(self, value: bytes | None, n_features: int | None,
               limits: Limits | None = None) -> Points:
        """Turn one message value into checked points.

        ``value`` is the record value (None for a tombstone, which is ``empty``);
        ``n_features`` the required number of features, or None to accept any (up to the
        limit). Raises DecodeError, with a reason of REASONS, when the message holds no good
        point.
        """
        limits = limits or DEFAULT_LIMITS
        if not value:
            raise DecodeError("empty", "the message has no value")
        if len(value) > limits.max_bytes:
            raise DecodeError("too_large", f"{len(value)} bytes is more than input.max_bytes "
                                           f"({limits.max_bytes})")
        return check_points(self.parse(value, n_features, limits), n_features, limits)

    def decode_all(self, values: Sequence[bytes | None], n_features: int | None,
                   limits: Limits | None = None) -> list[Points | DecodeError]:
        """:meth:`decode` every value of a poll batch: its Points, or the DecodeError it raised.

        With ``n_features`` None, the first value that decodes fixes it for the rest.
        """
        limits = limits or DEFAULT_LIMITS
        out: list[Points | DecodeError | None] = [None] * len(values)
        if self.decode_many is not None and n_features is not None \
                and self.decode_many(values, n_features, limits, out) == len(values):
            return out  # type: ignore[return-value]
        for i, value in enumerate(values):
            if out[i] is not None:
                continue
            try:
                points = self.decode(value, n_features, limits)
            except DecodeError as exc:
                out[i] = exc
                continue
            n_features = n_features or points.X.shape[1]
            out[i] = points
        return out  # type: ignore[return-value]


#: Encodes a poll batch: ``(messages, result, top_k, model_version, sources) -> one value per
#: message``, the messages' points being the result's rows in order.
EncodeBatch = Callable[[Sequence[Points], Any, int, int, Sequence[tuple[str, int, int]]],
                       list[bytes]]


@dataclass(frozen=True)
class OutputFormat:
    """An output format: how the model's answers to a poll batch become output messages.

    name, summary : as for :class:`InputFormat`. encode : see :data:`EncodeBatch`.
    anomalous_only : ``(value, multi) -> value`` an output message cut down to its anomalous
        points, for ``kafka.anomaly_topic``.
    """

    name: str
    summary: str
    encode: EncodeBatch
    anomalous_only: Callable[[bytes, bool], bytes]

    def encode_all(self, messages: Sequence[Points], result: Any, *, top_k: int,
                   model_version: int, sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """The output messages of a whole poll batch, one per input message, in order.

        Parameters
        ----------
        messages : the batch's decoded messages; their points are the result's rows, in order.
        result : the model's result with arrays ``labels`` (B,), ``probabilities`` (B,),
            ``log_likelihood`` (B,), ``anomaly`` (B,), ``warmup`` (B,) and
            ``responsibilities`` (B, K).
        top_k : add each point's ``top_k`` largest responsibilities, largest first.
        model_version : the version of the model that answered.
        sources : per message, the input ``(topic, partition, offset)``.
        """
        n_rows = sum(sizes(messages))
        if n_rows != len(result.labels):
            raise ValueError(f"the messages hold {n_rows} points, the result "
                             f"{len(result.labels)}")
        return self.encode(messages, result, top_k, int(model_version), sources)


def valid_ts(v: Any) -> bool:
    """An event time in epoch ms within [0, TS_MAX_MS) (booleans are not numbers here)."""
    return type(v) in (int, float) and 0 <= v < TS_MAX_MS


def check_points(points: Points, n_features: int | None, limits: Limits) -> Points:
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


# --- shared by the output formats -----------------------------------------------------------


def finite_log_likelihood(values: npt.NDArray[Any]) -> FloatArray:
    """Log-likelihoods (m,) clamped to +-:data:`LOG_LIKELIHOOD_LIMIT`, NaN as the lower end."""
    out = np.asarray(values, dtype=np.float64)
    lo, hi = out.min(initial=0.0), out.max(initial=0.0)
    if -LOG_LIKELIHOOD_LIMIT <= lo and hi <= LOG_LIKELIHOOD_LIMIT:  # False with a NaN
        return out
    out = np.nan_to_num(out, nan=-LOG_LIKELIHOOD_LIMIT)
    return np.clip(out, -LOG_LIKELIHOOD_LIMIT, LOG_LIKELIHOOD_LIMIT)


def largest(resp: npt.NDArray[Any], k: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Per row of resp (m, K), the k largest components and their values, (m, k) each.

    Largest first; ties go to the lower component (a stable sort of the negated values).
    """
    k = min(k, resp.shape[1])
    idx = np.argsort(-resp, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(resp, idx, axis=1)
