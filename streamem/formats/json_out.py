"""The ``json`` output format: one record object per point (about 200 bytes each).

A single-point message is answered by one record object, a multi-point one by an array of
records in point order. Numbers are rounded to 6 decimals; log-likelihoods are clamped to
+-1e30 (an impossibly unlikely point reads -1e30, never -inf).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamem.formats.points import OutputFormat, Points, finite_log_likelihood, largest


def encode_result(points: Points, result: Any, rows: slice, *, top_k: int, model_version: int,
                  topic: str, partition: int, offset: int) -> bytes:
    """One JSON output message for one input message: a record object, or an array of them.

    ``rows`` selects the message's rows of ``result``; see :meth:`OutputFormat.encode_all`.
    ``top_k`` pairs are written as ``[[component, r], ...]``, largest first.
    """
    cols = _JsonColumns.of(result, rows, top_k)
    if len(cols.labels) != len(points):
        raise ValueError(f"rows select {len(cols.labels)} results for {len(points)} points")
    return cols.message(points, 0, int(model_version), json.dumps(topic), int(partition),
                        int(offset))


_RECORD = ('{"id":%s,"cluster":%d,"probability":%s,"log_likelihood":%s,"anomaly":%s,'
           '"warmup":%s,"model_version":%d,"topic":%s,"partition":%d,"offset":%d,"index":%d')
_BOOL = ("false", "true")
_BOOL_BYTES = (b"false", b"true")


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
                   list(map(_BOOL.__getitem__, result.anomaly[rows].tolist())),
                   list(map(_BOOL.__getitem__, result.warmup[rows].tolist())), pairs)

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


def _singles(messages: Sequence[Points], result: Any, top_k: int, version: int,
             sources: Sequence[tuple[str, int, int]]) -> list[bytes] | None:
    """The record objects of single-point messages, message i being row i, or None when a
    probability is not finite (:func:`_encode` then writes it ``null``).

    One bytes format per message, straight to bytes: numbers go in as ints and floats
    (``%a`` of a finite float is its ``repr``, as :func:`_json_numbers` writes it), the model
    version into the format once.
    """
    rounded = np.round(np.asarray(result.probabilities, dtype=np.float64), 6)
    if not np.isfinite(rounded).all():
        return None
    ids = [points.ids[0] for points in messages]
    id_spec = "%d" if set(map(type, ids)) == {int} else "%s"
    if id_spec == "%s":
        ids = [_json_id(ident).encode() for ident in ids]
    record = (_RECORD.replace('"id":%s', '"id":' + id_spec)
              .replace('"probability":%s', '"probability":%a')
              .replace('"log_likelihood":%s', '"log_likelihood":%a')
              .replace('%d,"topic"', f'{int(version)},"topic"')
              .replace('"index":%d', '"index":0'))
    record += "}" if top_k <= 0 else ',"top_k":%s}'
    names = {topic: json.dumps(topic).encode() for topic in {topic for topic, _, _ in sources}}
    columns: list[list[Any]] = [
        ids, result.labels.tolist(), rounded.tolist(),
        np.round(finite_log_likelihood(result.log_likelihood), 6).tolist(),
        list(map(_BOOL_BYTES.__getitem__, result.anomaly.tolist())),
        list(map(_BOOL_BYTES.__getitem__, result.warmup.tolist())),
        [names[topic] for topic, _, _ in sources],
        [partition for _, partition, _ in sources], [offset for _, _, offset in sources]]
    if top_k > 0:
        columns.append([json.dumps(p, separators=(",", ":")).encode()
                        for p in _top_k(result.responsibilities, top_k)])
    template = record.encode()
    return [template % row for row in zip(*columns, strict=True)]


def _json_id(ident: Any) -> str:
    if type(ident) is int:
        return str(ident)
    return "null" if ident is None else json.dumps(ident)


def _json_numbers(values: npt.NDArray[Any]) -> list[str]:
    """Values (m,) rounded to 6 decimals as JSON numbers, ``null`` where not finite."""
    rounded = np.round(np.asarray(values, dtype=np.float64), 6).tolist()
    if np.isfinite(values).all():
        return list(map(repr, rounded))
    return [repr(v) if np.isfinite(v) else "null" for v in rounded]


def _top_k(resp: npt.NDArray[Any], k: int) -> list[list[list[Any]]]:
    """Per row of resp (m, K), the k largest ``[component, r]`` pairs, largest first."""
    idx, vals = largest(resp, k)
    ci, ri = idx.tolist(), np.round(vals, 6).tolist()
    return [[[c, r] for c, r in zip(cs, rs, strict=True)] for cs, rs in zip(ci, ri, strict=True)]


def _encode(messages: Sequence[Points], result: Any, top_k: int, version: int,
            sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """One JSON message per input message; the columns are converted once for the batch, so
    a message costs a string format, not numpy calls."""
    if not any([points.multi for points in messages]):
        singles = _singles(messages, result, top_k, version, sources)
        if singles is not None:
            return singles
    cols = _JsonColumns.of(result, slice(None), top_k)
    out, start = [], 0
    topics: dict[str, str] = {}
    for points, (topic, partition, offset) in zip(messages, sources, strict=True):
        topic_json = topics.get(topic) or topics.setdefault(topic, json.dumps(topic))
        out.append(cols.message(points, start, version, topic_json, int(partition),
                                int(offset)))
        start += len(points)
    return out


def _anomalous_only(value: bytes, multi: bool) -> bytes:
    """The anomalous records of an output message (the whole of a single one)."""
    if not multi:
        return value
    return json.dumps([r for r in json.loads(value) if r["anomaly"]]).encode()


FORMAT = OutputFormat("json", "one record object per point; an array of them for a "
                              "multi-point message", _encode, _anomalous_only)
