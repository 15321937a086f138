"""The worker's side of a shared model: answer with the newest state, send statistic deltas."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from streamem.io.base import RecordTooLarge, Sink
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.model.delta import StatsDelta, coalesce
from streamem.model.gmm import BatchResult
from streamem.sharing.leader import Leader
from streamem.sharing.records import VERSION_HEADER, header

log = logging.getLogger(__name__)


class Worker:
    """Answers batches with the newest model on the state topic; its deltas go to the stats topic.

    Parameters
    ----------
    model : OnlineGMM
        A fresh model, used until the first state arrives.
    sink : Sink
        The loop's sink: deltas are acknowledged by the loop's flush, before its commit.
    consumer_kwargs : dict
        KafkaConsumer settings; the state topic is read by assignment, committed records only.
    stats_topic, state_topic : str
    instance : str
        This process's name: the key of its deltas.
    delta_interval_s : float
        Deltas are coalesced for at least this long before being sent.
    max_staleness : int
        More versions than this behind the newest seen, the worker reads the state to its end
        before answering (consumption pauses meanwhile).
    leader : Leader, optional
        This instance's leader thread, stopped by :meth:`close`.
    """

    def __init__(self, model: OnlineGMM, sink: Sink, consumer_kwargs: dict[str, Any],
                 stats_topic: str, state_topic: str, instance: str, metrics: Metrics, *,
                 delta_interval_s: float = 0.1, max_staleness: int = 32,
                 leader: Leader | None = None) -> None:
        self.model = model
        self.leader = leader
        self.sink = sink
        self.stats_topic = stats_topic
        self.instance = instance
        self.metrics = metrics
        self.delta_interval_s = delta_interval_s
        self.max_staleness = max_staleness
        self._tp = TopicPartition(state_topic, 0)
        self._consumer = KafkaConsumer(**{**consumer_kwargs, "group_id": None,
                                          "enable_auto_commit": False,
                                          "isolation_level": "read_committed"})
        self._consumer.assign([self._tp])
        self._consumer.seek_to_beginning(self._tp)
        self._pending: list[StatsDelta] = []
        self._last_sent = time.monotonic()
        self._newest_seen = 0
        self._assigned: set[tuple[str, int]] = set()
        self._loaded = False
        #: The state topic was read to its end since the last new assignment: the worker
        #: answers with the newest parameters (or there are none yet). ``/readyz`` follows it.
        self.has_parameters = False

    @property
    def staleness(self) -> int:
        return max(self._newest_seen - int(self.model.version_), 0)

    def before_batch(self, assigned: set[tuple[str, int]]) -> OnlineGMM:
        """Take in new states; read the state topic to its end first when a partition was
        newly assigned or the model is too stale. Returns the model to answer with."""
        gained = bool(assigned - self._assigned)
        self._assigned = set(assigned)
        self.sync(to_end=gained or self.staleness > self.max_staleness)
        self.metrics.model_in_use(int(self.model.version_), self.staleness)
        return self.model

    def sync(self, *, to_end: bool = False, timeout_s: float = 30.0) -> None:
        """Poll the state topic; with ``to_end`` until its end as of now (or ``timeout_s``)."""
        end = self._consumer.end_offsets([self._tp])[self._tp] if to_end else -1
        deadline = time.monotonic() + timeout_s
        while True:
            batches = self._consumer.poll(timeout_ms=200 if to_end else 0)
            records = batches.get(self._tp, [])
            if records:
                self._take(records[-1])
            if not to_end:
                return
            if self._consumer.position(self._tp) >= end:
                self.has_parameters = True
                return
            if time.monotonic() > deadline:
                self.has_parameters = False
                log.warning("model_state_not_read_to_end", extra={"end": end})
                return

    def _take(self, record: Any) -> None:
        version = header(record.headers, VERSION_HEADER)
        if version is not None:
            self._newest_seen = max(self._newest_seen, int(version))
        if version is not None and int(version) <= int(self.model.version_) and self._loaded:
            return
        try:
            self.model = OnlineGMM.from_bytes(record.value)
        except (ValueError, KeyError, OSError) as exc:
            log.error("model_state_unreadable", extra={"offset": record.offset,
                                                        "error": str(exc)})
            return
        self._loaded = True

    def answer(self, X: np.ndarray) -> BatchResult:
        """Answer X (n, d) without changing the model; its delta is queued for the leader."""
        result, delta = self.model.delta(X)
        self._pending.append(delta)
        if time.monotonic() - self._last_sent >= self.delta_interval_s:
            self.send()
        return result

    def send(self) -> None:
        """Send the queued deltas as one (the loop's flush acknowledges it); as two halves,
        recursively, when one would be too large (deltas carrying warm-up points)."""
        pending, self._pending = self._pending, []
        self._last_sent = time.monotonic()
        if pending:
            self._send(pending)

    def _send(self, deltas: list[StatsDelta]) -> None:
        delta = coalesce(deltas)
        try:
            self.sink.send(self.stats_topic, self.instance.encode(), delta.to_bytes(), ())
        except RecordTooLarge as exc:
            if len(deltas) > 1:
                half = len(deltas) // 2
                self._send(deltas[:half])
                self._send(deltas[half:])
                return
            log.warning("delta_not_sent", extra={"error": str(exc), "points": delta.n_points})
            return
        self.metrics.deltas_sent()

    def close(self) -> None:
        """Send what is queued, stop the leader thread (it publishes first), close."""
        self.send()
        if self.leader is not None:
            self.leader.stop.set()
            self.leader.join(timeout=30)
        self._consumer.close()
