"""The runtime's first stage: a poll batch decoded, each message to its points or a dead letter.

Messages are decoded at the input's width (``streamem.width``: configured, or provisional until
the model has warmed up); a message that cannot be decoded, or breaks a bound, becomes a
:class:`DeadLetter` with its reason, and never stops its neighbours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from streamem import formats
from streamem.errors import DecodeError
from streamem.formats.points import Limits, Points, sizes
from streamem.io.base import Record
from streamem.width import InputWidth, match_warm_up

if TYPE_CHECKING:
    from streamem.config import InputConfig

TP = tuple[str, int]
_PARTITION, _OFFSET = attrgetter("topic", "partition"), attrgetter("offset")
_VALUE, _TOO_LARGE = attrgetter("value"), attrgetter("too_large")


@dataclass
class DeadLetter:
    """A dead letter to send: the message, why, and for a partly answered message its refused
    points' positions (the other points were answered)."""

    record: Record
    reason: str
    detail: str
    bad_points: list[int] | None = None


@dataclass
class Batch:
    """One poll batch after decoding: the answerable messages and their points stacked."""

    records: list[Record]
    answered: list[Record] = field(default_factory=list)
    points: list[Points] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def stacked(self) -> np.ndarray:
        """All points of all messages, (n_points, n_features), in message order."""
        return np.concatenate([p.X for p in self.points])

    def starts(self) -> np.ndarray:
        """(n_messages + 1,) the first row of each message in :meth:`stacked`, then the total."""
        return np.cumsum([0, *sizes(self.points)])

    def refuse_rows(self, refused: dict[int, str]) -> None:
        """Rows (of :meth:`stacked`) the model refused, with its error: a message that lost all
        its points becomes a ``model_rejected`` dead letter, the others keep their good rows."""
        starts = self.starts()
        good = np.ones(starts[-1], dtype=bool)
        good[list(refused)] = False
        answered, points = [], []
        for rec, p, lo, hi in zip(self.answered, self.points, starts[:-1].tolist(),
                                  starts[1:].tolist(), strict=True):
            kept = good[lo:hi]
            if not kept.any():
                self.dead.append(DeadLetter(rec, "model_rejected", refused[lo]))
                continue
            if not kept.all():
                rows = (lo + np.flatnonzero(~kept)).tolist()
                p = p.keep(kept, [("model_rejected", refused[r]) for r in rows])
            answered.append(rec)
            points.append(p)
        self.answered, self.points = answered, points

    def next_offsets(self, assigned: set[TP]) -> dict[TP, int]:
        """Per assigned partition, the offset after the last record of this batch."""
        # a poll's records are in offset order within a partition: the last is the largest
        records = self.records
        last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
        return {tp: offset + 1 for tp, offset in last.items() if tp in assigned}


class Decoder:
    """Decodes poll batches in the configured ``input.format``, within its bounds.

    Parameters
    ----------
    cfg : InputConfig
        The ``input`` section: format, width and bounds.
    resumed_width : int, optional
        The width of the checkpoint the model came from.
    log : logging.Logger
    """

    def __init__(self, cfg: InputConfig, resumed_width: int | None,
                 log: logging.Logger) -> None:
        self.format = cfg.format
        self.limits = Limits(cfg.max_bytes, cfg.max_points, cfg.max_features, cfg.max_abs_value)
        self.width = InputWidth(cfg.n_features, resumed_width)
        self.log = log

    def decode(self, records: list[Record], model: Any, *, own_model: bool) -> Batch:
        """The batch: each record answered (with its points) or a dead letter. ``model`` is the
        one that will answer (its width settles a provisional one); ``own_model``: this process
        may restart its warm-up when the width is revised (a shared model's leader does that)."""
        batch = Batch(records)
        values = list(map(_VALUE, records))
        if self.width.follow(model):
            self.log.warning("n_features_from_model", extra={"n_features": self.width.value})
        decoded = self._decode_values(values)
        if self.width.provisional(model) and self._vote_width(values, decoded, model, own_model):
            decoded = self._decode_values(values)
        if any(map(_TOO_LARGE, records)) or set(map(type, decoded)) != {Points}:
            self._sort(batch, decoded)
        else:  # every message decoded
            batch.answered, batch.points = list(records), decoded  # type: ignore[assignment]
        return batch

    def decode_one(self, value: bytes | None, n_features: int | None) -> Points | DecodeError:
        """One message's points, or the DecodeError saying why not (``internal_error`` for a
        bug: a message never stops the daemon)."""
        try:
            return formats.decode(value, self.format, n_features, self.limits)
        except DecodeError as exc:
            return exc
        except Exception as exc:
            self.log.exception("message_decode_failed")
            return DecodeError("internal_error", f"decoding failed: {exc!r}")

    def _decode_values(self, values: list[bytes | None]) -> list[Points | DecodeError]:
        try:
            return formats.decode_all(values, self.format, self.width.value, self.limits)
        except Exception:  # a bug, not a bad message: decode each message alone
            self.log.exception("decode_failed", extra={"messages": len(values)})
            decoded, n_features = [], self.width.value
            for value in values:
                one = self.decode_one(value, n_features)
                n_features = n_features or (one.X.shape[1] if isinstance(one, Points)
                                            else None)
                decoded.append(one)
            return decoded

    def _vote_width(self, values: list[bytes | None], decoded: list[Points | DecodeError],
                    model: Any, own_model: bool) -> bool:
        """Count the batch's widths while the width is provisional; whether the batch must be
        decoded again, at the width that won. A model of the old width starts its warm-up
        again (a shared model's leader does so itself: ``Leader._vote_width``)."""
        before, widths = self.width.value, []
        for value, one in zip(values, decoded, strict=True):
            if isinstance(one, DecodeError) and one.reason == "wrong_dimension":
                one = self.decode_one(value, None)
            if isinstance(one, Points):
                widths.append(int(one.X.shape[1]))
        decoded_at = before if before is not None else (widths[0] if widths else None)
        self.width.count(widths)
        now = self.width.value
        if before is None and now is not None:
            self.log.info("n_features_fixed", extra={"n_features": now})
        elif before != now:
            self.log.warning("n_features_revised", extra={
                "n_features": now, "was": before,
                "reason": "more messages have this width than the provisional one"})
        if own_model:
            match_warm_up(model, now)
        return now != decoded_at

    @staticmethod
    def _sort(batch: Batch, decoded: list[Points | DecodeError]) -> None:
        """Each record of the batch to the answered (with its points) or the dead letters."""
        for rec, points in zip(batch.records, decoded, strict=True):
            if rec.too_large:
                detail = f"{rec.too_large:,} bytes, over the limit"
                batch.dead.append(DeadLetter(rec, "too_large", detail))
                continue
            if rec.unreadable:
                batch.dead.append(DeadLetter(rec, "unreadable", rec.unreadable))
                continue
            if isinstance(points, DecodeError):
                batch.dead.append(DeadLetter(rec, points.reason, points.detail))
                continue
            batch.answered.append(rec)
            batch.points.append(points)
