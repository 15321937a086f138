"""The daemon's loop: poll → decode → ``partial_fit`` → publish → flush → commit → checkpoint.

Delivery guarantee: **at least once**. Every consumed message gets exactly one answer — an
output record, or a dead letter carrying the reason — and a message's offset is committed only
after its answer has been acknowledged by the sink. What breaks "exactly once":

* a failed flush (broker down longer than ``kafka.delivery_timeout_s``): nothing is committed,
  the source is rewound to the committed offsets and the batch is processed again, so some
  outputs may appear twice and the model has seen those points twice (pipelined, also the
  batch decoded and fitted meanwhile, whose answers were not sent yet);
* a crash or ``kill -9`` between flush and commit, or a rebalance that refuses the commit: the
  next owner re-reads from the last committed offset and answers those messages again;
* model state: a checkpoint holds the model and the offsets it reflects, written every
  ``checkpoint.interval_s``. After a crash the consumer group's committed offsets decide what is
  read next; the restored model lacks the points between its checkpoint and the crash (it
  does not refit them), which an online model absorbs like any other gap in its stream.

With ``delivery.guarantee: exactly_once`` (and a :class:`~streamem.io.base.TransactionalSink`)
the batches of ``delivery.transaction_min_s`` and their input offsets commit in one Kafka
transaction instead; on any failure it is aborted, the source rewound and the model restored to
before the transaction (README "Delivery guarantee").

Pipelined (at least once, with a sink whose client delivers on its own threads: librdkafka's),
a batch's answers are delivered while the loop decodes, fits and encodes the next batch; its
offsets commit once they are acknowledged, before the next batch's answers are sent (see
:meth:`Runtime.step`).

A clean stop (SIGTERM, SIGINT) finishes the batch in hand, flushes, commits, writes a final
checkpoint whose offsets equal the committed ones, and closes everything.

Failures stay with the message that caused them: decoding enforces ``input.max_*`` before
allocating, a multi-point message keeps its good points, a batch the model refuses (it rolls
back) is bisected down to the refused points, and an unexpected exception while decoding or
encoding one message makes that message an ``internal_error`` dead letter (logged with its
traceback). Nothing that arrives stops the loop.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from streamem import formats
from streamem.decoding import Batch, DeadLetter, Decoder
from streamem.errors import CheckpointError, ConfigError, TransportError
from streamem.formats import headers as out_headers
from streamem.formats.points import Points, sizes
from streamem.io.base import (
    VALUE_DROPPED_HEADER,
    Backoff,
    CommitFailed,
    GroupMember,
    Record,
    RecordTooLarge,
    Sink,
    Source,
    TransactionalSink,
)
from streamem.io.checkpoint import Checkpoint, CheckpointStore, load_latest
from streamem.metrics import BatchReport, Metrics
from streamem.model.results import BatchResult

if TYPE_CHECKING:
    from streamem.config import Config
    from streamem.model import OnlineGMM

TP = tuple[str, int]
_KEY, _HEADERS, _TIMESTAMP = attrgetter("key"), attrgetter("headers"), attrgetter("timestamp_ms")
_PARTITION, _SOURCE = attrgetter("topic", "partition"), attrgetter("topic", "partition", "offset")


@dataclass
class _Transaction:
    """The open transaction: when it began, the model before it, the offsets it will commit,
    the group membership its first batch was polled under, and its batches' metrics (counted
    when it commits: an aborted batch is answered again, and counted once)."""

    started: float
    model_before: dict[str, Any]
    offsets: dict[TP, int] = field(default_factory=dict)
    member: Any = None
    uncounted: list[Callable[[float], None]] = field(default_factory=list)


@dataclass
class _InFlight:
    """A batch whose outputs are sent but not yet acknowledged: its offsets commit, and its
    metrics count, once they are (:meth:`Runtime._settle`)."""

    batch: Batch
    result: BatchResult | None
    polled_at: float
    started: float


class Runtime:
    """Runs the loop until :meth:`request_stop` (or the source ends), then shuts down cleanly.

    Parameters
    ----------
    cfg : Config
    source, sink : Source, Sink
        Already connected.
    model : OnlineGMM
        Fresh, or restored from ``resume`` by :func:`restore_model`.
    metrics : Metrics
    checkpoint_stores : sequence of CheckpointStore
        Each checkpoint goes to every store.
    logger : logging.Logger, optional
    resume : Checkpoint, optional
        The checkpoint the model came from: its offsets and ``n_features`` carry over.
    stop : threading.Event, optional
        Shared with signal handlers; set it (or call :meth:`request_stop`) to stop.
    share : streamem.sharing.worker.Worker, optional
        With a shared model (``sharing.enabled``): answers come from its newest published
        model and what they teach goes to its leader as deltas, instead of ``partial_fit``.
    """

    def __init__(self, cfg: Config, source: Source, sink: Sink, model: OnlineGMM,
                 metrics: Metrics, checkpoint_stores: Sequence[CheckpointStore] = (),
                 logger: logging.Logger | None = None, *, resume: Checkpoint | None = None,
                 stop: threading.Event | None = None, share: Any = None) -> None:
        self.cfg = cfg
        self.share = share
        self.source = source
        self.sink = sink
        self.model = model
        self.metrics = metrics
        self.stores = list(checkpoint_stores)
        self.log = logger or logging.getLogger(__name__)
        self._stop = stop or threading.Event()
        self._backoff = Backoff(cfg.runtime.retry_initial_s, cfg.runtime.retry_max_s)
        self.offsets: dict[TP, int] = dict(resume.offsets) if resume else {}
        self.decoder = Decoder(cfg.input, resume.n_features if resume else None, self.log)
        self._dirty = False  # offsets committed since the last checkpoint
        self._last_checkpoint = self._last_publish = time.monotonic()
        exactly_once = (cfg.delivery.guarantee == "exactly_once"
                        and isinstance(sink, TransactionalSink) and isinstance(source, GroupMember))
        self._txn_sink: TransactionalSink | None = sink if exactly_once else None  # type: ignore[assignment]
        if cfg.delivery.guarantee == "exactly_once" and not exactly_once:
            self.log.warning("exactly_once_unavailable", extra={
                "reason": "the source is not a Kafka consumer group or the sink not a Kafka "
                          "producer: delivery is at least once"})
        self._txn: _Transaction | None = None
        self._txn_failing = False  # since the last failure, no transaction committed
        self._in_flight: _InFlight | None = None
        self._revoke_failure: TransportError | None = None
        self._pipelined = self._txn_sink is None and bool(
            getattr(sink, "delivers_in_background", False))
        if self._pipelined and hasattr(source, "before_revoke"):
            source.before_revoke = self._settle_before_revoke  # type: ignore[attr-defined]
        self._undelivered: Callable[[], int] | None = (
            getattr(sink, "undelivered", None) if self._pipelined else None)

    @property
    def n_features(self) -> int | None:
        """The width messages are decoded at (see :mod:`streamem.width`)."""
        return self.decoder.width.value

    def request_stop(self) -> None:
        """Ask the loop to stop after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    def run(self) -> int:
        """Process batches until stopped; the exit code: 0, or 1 if the final checkpoint failed."""
        self.log.info("runtime_started", extra={"n_features": self.n_features,
                                                "resumed_offsets": len(self.offsets)})
        clean = saved = False
        try:
            while not self._stop.is_set() and not self.source.exhausted:
                self.step()
            self._settle()
            self._txn_commit(force=True)
            clean = True
        finally:
            saved = self._shutdown(checkpoint=clean)
        return 0 if saved else 1

    # -- one batch ---------------------------------------------------------------------------

    def step(self) -> None:
        """Poll once and carry the batch through to its commit (or into the open transaction).

        Pipelined (at least once, with a sink that delivers on its own threads): the batch's
        outputs are sent and left in flight, and the next step acknowledges and commits them
        after it has decoded, fitted and encoded its own batch, so that the client delivers
        one batch while the loop works on the next. Offsets still commit only after their
        outputs are acknowledged, in order; an idle poll, a due checkpoint, a rebalance and a
        stop acknowledge the batch in flight first.
        """
        if self._txn_sink is not None and not self._txn_begin():
            return
        if self._in_flight is not None and self._checkpoint_due():
            if not self._settle():
                return
            self._maybe_checkpoint()  # the model now holds exactly the committed batches
        timeout_s = self.cfg.kafka.poll_timeout_ms / 1000
        if self._txn is not None and self._txn.offsets:  # do not hold answers back idly
            due = self._txn.started + self.cfg.delivery.transaction_min_s - time.monotonic()
            timeout_s = min(timeout_s, max(due, 0.0))
        try:
            if self._in_flight is None:
                records = self.source.poll(timeout_s)
            else:  # only what is ready: with nothing there, acknowledge before waiting
                records = self.source.poll(0.0)
                if not records and self._settle():
                    records = self.source.poll(timeout_s)
        except TransportError as exc:
            self._transport_failed("poll", exc)
            return
        if self._revoke_failure is not None:  # the batch settled at a revocation failed
            failure, self._revoke_failure = self._revoke_failure, None
            self._retry_batch(failure)
            return
        member = self.source.group_metadata() if self._txn_sink is not None else None  # type: ignore[attr-defined]
        assigned = self.source.assignment()
        if self.share is not None:
            self.model = self.share.before_batch(assigned)
        has_parameters = self.share is None or self.share.has_parameters
        self.metrics.set_ready(bool(assigned) and has_parameters and not self._txn_failing)
        self.metrics.set_consumer_lag(self.source.lags())
        ours = list(map(assigned.__contains__, map(_PARTITION, records)))
        if not all(ours):
            records = list(compress(records, ours))
        if not records:
            self._txn_commit()
            self._maybe_checkpoint()
            return
        polled_at, started = time.time(), time.perf_counter()
        batch = self.decoder.decode(records, self.model, own_model=self.share is None)
        if not self._settle_if_delivered():
            return
        result = self._fit(batch)
        if not self._settle_if_delivered():
            return
        values = self._encode(batch, result)
        if not self._settle():  # the batch before, while it was delivered
            return
        self._publish(batch, result, values)
        self._maybe_publish_model()
        if self._txn is None:
            self._in_flight = _InFlight(batch, result, polled_at, started)
            if not self._pipelined:
                self._settle()
            self._maybe_checkpoint()
            return
        try:
            self.sink.flush(self.cfg.kafka.delivery_timeout_s)
        except TransportError as exc:
            self._retry_batch(exc)
            return
        self.metrics.set_kafka_up(True)
        duration_s = time.perf_counter() - started
        self._txn.offsets.update(batch.next_offsets(self.source.assignment()))
        self._txn.member = self._txn.member or member
        self._txn.uncounted.append(
            lambda visible_at: self._count(batch, result, polled_at, visible_at, duration_s))
        self._txn_commit()
        self._maybe_checkpoint()

    def _settle(self) -> bool:
        """Acknowledge the batch in flight (:meth:`_deliver_in_flight`).

        False when its outputs failed: nothing is committed and the source is rewound (a batch
        decoded since is dropped with it, and read again).
        """
        failure = self._deliver_in_flight()
        if failure is not None:
            self._retry_batch(failure)
            return False
        return True

    def _settle_if_delivered(self) -> bool:
        """:meth:`_settle` the batch in flight now if the sink has delivered everything (it
        commits sooner, without waiting); True when there is nothing to settle or it settled."""
        if self._in_flight is None or self._undelivered is None or self._undelivered():
            return True
        return self._settle()

    def _settle_before_revoke(self) -> None:
        """The source's hook, inside its poll, before partitions are taken away: the batch in
        flight commits while they are still ours. A failure rewinds once the poll returns."""
        failure = self._deliver_in_flight()
        if failure is not None:
            self._revoke_failure = failure

    def _deliver_in_flight(self) -> TransportError | None:
        """Wait for the outputs of the batch in flight, then commit its offsets and count it;
        the failure, when they failed (nothing committed)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return None
        try:
            self.sink.flush(self.cfg.kafka.delivery_timeout_s)
        except TransportError as exc:
            return exc
        acked_at = time.time()
        self.metrics.set_kafka_up(True)
        duration_s = time.perf_counter() - flight.started
        self._commit(flight.batch.next_offsets(self.source.assignment()))
        self._count(flight.batch, flight.result, flight.polled_at, acked_at, duration_s)
        return None

    def _count(self, batch: Batch, result: Any, polled_at: float, acked_at: float,
               duration_s: float) -> None:
        """A delivered batch's metrics: its dead letters, then :meth:`_report`."""
        for dead in batch.dead:
            self.metrics.dead_letter(dead.reason)
        self._report(batch, result, polled_at, acked_at, duration_s)

    def _fit(self, batch: Batch) -> BatchResult | None:
        """One ``partial_fit`` over the whole batch.

        If the model refuses it (it then rolls back), the batch is bisected — at message
        boundaries, then within a message — until the refused points are found: they become
        ``model_rejected`` dead letters, every other point is learned and answered.
        """
        if not batch.points:
            return None
        X = batch.stacked()
        try:
            return self._learn(X)
        except Exception as exc:
            parts: list[BatchResult] = []
            refused: dict[int, str] = {}
            self._bisect(X, batch.starts(), 0, len(X), exc, parts, refused)
            error = exc
        if refused:
            self.log.warning("points_refused_by_model", extra={
                "points": len(refused), "error": next(iter(refused.values()))})
        else:  # the batch as a whole was refused, each part of it learned
            self.log.warning("batch_learned_in_parts", extra={"error": repr(error)})
        batch.refuse_rows(refused)
        return _joined(parts) if parts else None

    def _bisect(self, X: np.ndarray, starts: np.ndarray, lo: int, hi: int, error: Exception,
                parts: list[BatchResult], refused: dict[int, str]) -> None:
        """Rows ``lo:hi`` were refused (``error``): fit each half, recursing into refused ones."""
        if hi - lo == 1:
            refused[lo] = f"the model refused the point: {error}"
            return
        inner = starts[(starts > lo) & (starts < hi)]
        mid = int(inner[len(inner) // 2]) if len(inner) else (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                parts.append(self._learn(X[a:b]))
            except Exception as exc:
                self._bisect(X, starts, a, b, exc, parts, refused)

    def _learn(self, X: np.ndarray) -> BatchResult:
        """Answer X (n, d) and learn from it: here, or through the shared model's leader."""
        if self.share is not None:
            return self.share.answer(X)  # type: ignore[no-any-return]
        return self.model.partial_fit(X)

    def _encode(self, batch: Batch, result: BatchResult | None) -> list[bytes | None]:
        """The output message of each answered message; None where encoding failed (a bug).

        Stamped with ``result.model_version``, the version that answered (for a bisected batch,
        the version that answered its first part).
        """
        if not batch.points or result is None:
            return []
        fmt, top_k, version = self.cfg.output.format, self.cfg.output.top_k, result.model_version
        sources = list(map(_SOURCE, batch.answered))
        try:
            return list(formats.encode_results(batch.points, result, fmt=fmt, top_k=top_k,
                                             model_version=version, sources=sources))
        except Exception:
            self.log.exception("encode_failed", extra={"messages": len(batch.points)})
        out: list[bytes | None] = []
        starts = batch.starts().tolist()
        for i, (points, source) in enumerate(zip(batch.points, sources, strict=True)):
            try:
                rows = _rows(result, starts[i], starts[i + 1])
                out.extend(formats.encode_results([points], rows, fmt=fmt, top_k=top_k,
                                                model_version=version, sources=[source]))
            except Exception:
                self.log.exception("message_encode_failed", extra={"offset": source[2]})
                out.append(None)
        return out

    def _publish(self, batch: Batch, result: BatchResult | None,
                 values: list[bytes | None]) -> None:
        """Send the batch's answers (``values``, from :meth:`_encode`) and dead letters."""
        k = self.cfg.kafka
        own = out_headers.result_headers(result.model_version) if result is not None else []
        anomalous = _anomalous_messages(batch.points, result) if k.anomaly_topic else ()
        if anomalous or None in values or any([p.rejected for p in batch.points]):
            self._publish_each(batch, values, own, anomalous)
        else:  # the common batch: one output message each, nothing else to send or refuse
            answered = batch.answered
            incoming = list(map(_HEADERS, answered))
            headers = [out_headers.merged(h, own) for h in incoming] if any(incoming) \
                else repeat(own, len(answered))
            stamps = [ts if ts is not None and ts >= 0 else None  # as _event_time
                      for ts in map(_TIMESTAMP, answered)]
            messages = zip(map(_KEY, answered), cast(list[bytes], values), headers, stamps,
                           strict=True)
            for i, detail in self.sink.send_many(k.output_topic, messages):
                batch.dead.append(DeadLetter(answered[i], "too_large", detail))
        for dead in batch.dead:
            self._send_dead_letter(dead)

    def _publish_each(self, batch: Batch, values: list[bytes | None], own: out_headers.Headers,
                      anomalous: set[int] | tuple[()]) -> None:
        """Send each message's answers: output, anomaly copy, partial dead letter."""
        k = self.cfg.kafka
        anomalous_only = formats.output_format(self.cfg.output.format).anomalous_only
        send = self.sink.send
        for i, (rec, value) in enumerate(zip(batch.answered, values, strict=True)):
            points = batch.points[i]
            if value is None:
                batch.dead.append(DeadLetter(rec, "internal_error", "encoding the answer failed"))
                continue
            headers, stamp = out_headers.merged(rec.headers, own), _event_time(rec)
            try:
                send(k.output_topic, rec.key, value, headers, stamp)
                if i in anomalous:
                    send(k.anomaly_topic, rec.key,  # type: ignore[arg-type]
                         anomalous_only(value, points.multi), headers, stamp)
            except RecordTooLarge as exc:
                batch.dead.append(DeadLetter(rec, "too_large", str(exc)))
                continue
            if points.rejected:
                batch.dead.append(_partial_dead_letter(rec, points))

    def _send_dead_letter(self, dead: DeadLetter) -> None:
        rec = dead.record
        headers = out_headers.dead_letter_headers(dead.reason, dead.detail, rec.topic,
                                                  rec.partition, rec.offset, dead.bad_points,
                                                  rec.headers)
        stamp = _event_time(rec)
        try:
            self.sink.send(self.cfg.kafka.dead_letter_topic, rec.key, rec.value, headers, stamp)
        except RecordTooLarge:  # keep key and headers, say how large the value was
            dropped = (*headers, (VALUE_DROPPED_HEADER, str(len(rec.value)).encode()))
            self.sink.send(self.cfg.kafka.dead_letter_topic, rec.key, b"", dropped, stamp)
            self.metrics.dead_letter_value_dropped()

    def _report(self, batch: Batch, result: Any, polled_at: float, acked_at: float,
                duration_s: float) -> None:
        if result is None:
            n, ll, n_anomalies = 0, np.empty(0), 0
            latencies = np.empty(0)
        else:
            ll = np.asarray(result.log_likelihood)
            n, n_anomalies = len(ll), int(np.count_nonzero(result.anomaly))
            latencies = _latencies(batch.points, n, polled_at, acked_at)
        self.metrics.observe_batch(BatchReport(len(batch.points), n, n_anomalies, duration_s,
                                               latencies, ll), self.model)

    # -- acknowledgements and failures ------------------------------------------------------

    def _commit(self, offsets: dict[TP, int]) -> None:
        """Commit, retrying while the source is unreachable; a rebalance is counted and dropped."""
        while offsets:
            try:
                self.source.commit(offsets)
            except CommitFailed as exc:
                self.metrics.kafka_error("rebalance")
                self.log.warning("commit_refused", extra={"error": str(exc)})
                return
            except TransportError as exc:
                self._transport_failed("commit", exc)
                if self._stop.is_set():
                    return
                continue
            self.offsets.update(offsets)
            self._dirty = True
            self._backoff.reset()
            return

    def _retry_batch(self, exc: TransportError, kind: str = "delivery") -> None:
        """Outputs were not all acknowledged: commit nothing, rewind, process the batch again.

        At least once, the model has already seen the batch and will see it a second time;
        exactly once, the transaction is aborted and the model restored to before it.
        """
        if self._txn_sink is not None:
            self._txn_abort(kind, exc)
        self._transport_failed(kind, exc)
        while not self._stop.is_set():
            try:
                self.source.seek_to_committed()
                return
            except TransportError as seek_exc:
                self._transport_failed("poll", seek_exc)

    # -- exactly once: one Kafka transaction spans the batches of delivery.transaction_min_s --

    def _txn_begin(self) -> bool:
        """Open a transaction unless one is open; False (not ready, backing off) if that fails."""
        if self._txn is not None:
            return True
        assert self._txn_sink is not None
        try:
            self._txn_sink.begin()
        except TransportError as exc:
            self._txn_failing = True
            self.metrics.set_ready(False)
            self._transport_failed("transaction", exc)
            return False
        self._txn = _Transaction(time.monotonic(), _model_state(self.model))
        return True

    def _txn_commit(self, force: bool = False) -> None:
        """Commit the open transaction with its offsets once it is ``transaction_min_s`` old
        (``force``: now); on failure abort it, restore the model and rewind."""
        txn, sink = self._txn, self._txn_sink
        if txn is None or sink is None or not txn.offsets:
            return
        if not force and time.monotonic() - txn.started < self.cfg.delivery.transaction_min_s:
            return
        try:
            now = self.source.group_metadata()  # type: ignore[attr-defined]
            if getattr(now, "generation_id", None) != getattr(txn.member, "generation_id", None):
                raise TransportError("the group rebalanced during the transaction")
            if self.share is not None:  # the batches' deltas commit with them
                self.share.send()
            sink.send_offsets(txn.offsets, txn.member)
            sink.commit()
        except TransportError as exc:
            self._retry_batch(exc, "transaction")
            return
        self._txn = None
        self._txn_failing = False
        self.offsets.update(txn.offsets)
        self._dirty = True
        self._backoff.reset()
        visible_at = time.time()
        for count in txn.uncounted:
            count(visible_at)

    def _txn_abort(self, kind: str, exc: Exception) -> None:
        """Abort the open transaction and restore the model to before it: nothing of it was
        seen, so the rewound input counts once."""
        assert self._txn_sink is not None
        self._txn_sink.abort()
        txn, self._txn = self._txn, None
        if self.share is not None:  # answering left the shared model as it was
            self.share.discard()
        elif txn is not None:
            self.model._restore(txn.model_before)
        self._txn_failing = True
        self.metrics.set_ready(False)
        self.log.warning("transaction_aborted", extra={
            "kind": kind, "error": str(exc),
            "offsets": _offsets_text(txn.offsets) if txn is not None else ""})

    def _transport_failed(self, kind: str, exc: Exception) -> None:
        self.metrics.kafka_error(kind)
        self.metrics.set_kafka_up(False)
        delay = self._backoff.next_delay()
        self.log.warning("transport_error", extra={"kind": kind, "error": str(exc),
                                                   "retry_in_s": round(delay, 2)})
        self._stop.wait(delay)

    # -- periodic work ----------------------------------------------------------------------

    def _maybe_publish_model(self) -> None:
        topic = self.cfg.kafka.model_topic
        now = time.monotonic()
        if not topic or now - self._last_publish < self.cfg.runtime.model_publish_interval_s:
            return
        if self.share is not None:  # the shared model's leader publishes it
            return
        if not self.model.initialized_:
            return
        self._last_publish = now
        try:
            value = json.dumps(self.model.params_dict(), allow_nan=False).encode()
            self.sink.send(topic, self.cfg.kafka.group_id.encode(), value, ())
        except (RecordTooLarge, ValueError) as exc:  # ValueError: a non-finite number, not JSON
            self.log.warning("model_not_published", extra={"error": str(exc)})

    def _checkpoint_due(self) -> bool:
        return bool(self.stores) and (
            time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint.interval_s)

    def _maybe_checkpoint(self, force: bool = False) -> None:
        if not self._dirty or not (force and self.stores or self._checkpoint_due()):
            return
        if self._txn is not None and self._txn.offsets or self._in_flight is not None:
            return  # the model holds uncommitted batches
        self._last_checkpoint = time.monotonic()
        ckpt = Checkpoint(self.model.to_bytes(), dict(self.offsets), self.n_features, time.time())
        ok = True
        for store in self.stores:
            try:
                store.save(ckpt)
                self.metrics.checkpoint_saved(True)
            except CheckpointError as exc:
                ok = False
                self.metrics.checkpoint_saved(False)
                self.log.error("checkpoint_failed", extra={"store": store.name, "error": str(exc)})
        if ok:
            self._dirty = False
            self.log.info("checkpoint_saved", extra={"n_seen": int(self.model.n_seen_),
                                                     "offsets": _offsets_text(self.offsets)})

    def _shutdown(self, checkpoint: bool) -> bool:
        """Close everything; after a clean stop, first write the final checkpoint.

        After a crash the model may hold a batch whose offsets were not committed, so no
        checkpoint is written then: the last periodic one stays the state to resume from.
        Returns False when the final checkpoint was due but not written to every store.
        """
        self.metrics.set_ready(False)
        saved = True
        try:
            if checkpoint:
                if self.share is not None:  # the checkpoint holds the group's final state
                    self.model, self._dirty = self.share.settle(), True
                self._maybe_checkpoint(force=True)
                saved = not (self.stores and self._dirty)
                if not saved:
                    self.log.error("final_checkpoint_failed", extra={
                        "stores": ",".join(s.name for s in self.stores),
                        "offsets": _offsets_text(self.offsets)})
        finally:
            closeables: list[Any] = [self.share] if self.share is not None else []
            closeables += [self.source, self.sink]
            closeables += self.stores
            for closeable in closeables:
                try:
                    closeable.close()
                except Exception as exc:  # closing is best effort; the state is already saved
                    self.log.warning("close_failed", extra={"what": type(closeable).__name__,
                                                            "error": str(exc)})
            self.log.info("runtime_stopped", extra={"offsets": _offsets_text(self.offsets)})
        return saved


GC_THRESHOLDS = (50_000, 20, 100)
"""The collector's thresholds while the loop runs (Python's default: 700, 10, 10)."""


def freeze_heap() -> None:
    """Exempt everything alive now (modules, the model, the clients) from garbage collection,
    and collect the young generation less often.

    Call once start-up is done, before :meth:`Runtime.run`. A poll batch of single-point
    messages makes tens of thousands of objects that live until the batch is answered; without
    this every full pass also scans the whole long-lived heap (about a third of the loop's time
    here), and a young pass every 700 of them only moves them up a generation, to be scanned
    again (a fifth of the loop's CPU time with single-point JSON: 8.0 -> 6.4 µs a message).
    Frozen objects are still freed when no longer referenced, and the loop makes few cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _model_state(model: OnlineGMM) -> dict[str, Any]:
    """What ``model._restore`` takes back: its rollback snapshot, or before the first fit
    (when the snapshot's buffers do not exist yet) a deep copy of its attributes."""
    try:
        return model._snapshot()
    except KeyError:
        return copy.deepcopy(model.__dict__)


def _latencies(messages: list[Points], n_points: int, polled_at: float,
               acked_at: float) -> np.ndarray:
    """(n_points,) seconds from each point's event time (or the poll, without one) to its ack."""
    waited = acked_at - polled_at
    if all([p.ts_ms is None for p in messages]):
        return np.full(n_points, waited)
    times = [p.ts_ms if p.ts_ms is not None else np.full(len(p), np.nan) for p in messages]
    lat = acked_at - np.concatenate(times) / 1000.0
    return np.where(np.isnan(lat), waited, lat)


def _event_time(rec: Record) -> int | None:
    """The input record's timestamp for the messages it causes; None (the send time) when it
    has none (Kafka gives -1 for messages written without one)."""
    ts = rec.timestamp_ms
    return ts if ts is not None and ts >= 0 else None


def _partial_dead_letter(rec: Record, points: Points) -> DeadLetter:
    """The dead letter of a message whose good points were answered: its refused points."""
    bad = points.rejected
    listed = "; ".join(f"point {pos}: {reason}: {detail}" for pos, reason, detail in bad[:10])
    detail = (f"{len(bad)} of {len(bad) + len(points)} points refused, the others answered; "
              f"{listed}")
    return DeadLetter(rec, bad[0][1], detail, [pos for pos, _, _ in bad])


def _rows(result: BatchResult, lo: int, hi: int) -> BatchResult:
    """Rows ``lo:hi`` of a result."""
    return BatchResult(result.labels[lo:hi], result.probabilities[lo:hi],
                       result.responsibilities[lo:hi], result.log_likelihood[lo:hi],
                       result.anomaly[lo:hi], result.warmup[lo:hi], result.model_version)


def _joined(parts: list[BatchResult]) -> BatchResult:
    """Results of consecutive row ranges as one."""
    if len(parts) == 1:
        return parts[0]
    names = ("labels", "probabilities", "responsibilities", "log_likelihood", "anomaly",
             "warmup")
    arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
    return BatchResult(**arrays, model_version=parts[0].model_version)


def _anomalous_messages(messages: list[Points], result: Any) -> set[int]:
    """Positions of the messages with at least one anomalous point."""
    if result is None or not np.any(result.anomaly):
        return set()
    starts = np.cumsum([0, *sizes(messages[:-1])])
    return set(np.flatnonzero(np.add.reduceat(result.anomaly.astype(np.int64), starts)).tolist())


def _offsets_text(offsets: dict[TP, int]) -> str:
    return ",".join(f"{t}:{p}={o}" for (t, p), o in sorted(offsets.items()))


def restore_model(cfg: Config, stores: Sequence[CheckpointStore], *, ignore: bool = False,
                  logger: logging.Logger | None = None) -> tuple[OnlineGMM, Checkpoint | None]:
    """The model to start with: from the newest checkpoint in ``stores``, else a fresh one.

    ``ignore`` starts from a fresh model whatever the stores hold (later checkpoints overwrite
    them). Raises :class:`CheckpointError` for a corrupt checkpoint and :class:`ConfigError`
    when ``input.n_features`` contradicts the checkpoint.
    """
    from streamem.model import OnlineGMM

    log = logger or logging.getLogger(__name__)
    ckpt = None if ignore else load_latest(stores)
    if ckpt is None:
        log.info("model_fresh", extra={"ignored_checkpoint": ignore})
        return OnlineGMM(**cfg.model_kwargs()), None
    want = cfg.input.n_features
    if want is not None and ckpt.n_features is not None and want != ckpt.n_features:
        raise ConfigError(f"input.n_features is {want} but the checkpoint's model has "
                          f"{ckpt.n_features} features; fix the config or --ignore-checkpoint")
    try:
        model = OnlineGMM.from_bytes(ckpt.model)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"the checkpoint's model cannot be loaded: {exc}") from exc
    log.info("model_restored", extra={"n_seen": int(model.n_seen_),
                                      "offsets": _offsets_text(dict(ckpt.offsets)),
                                      "written_at": ckpt.written_at})
    return model, ckpt


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set ``stop``; a second signal exits at once with code 130."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
