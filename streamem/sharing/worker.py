"""The worker's side of a shared model: answer with the newest state, send statistic deltas."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from streamem.errors import TransportError
from streamem.io.base import RecordTooLarge, Sink
from streamem.io.kafka import poll
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.model.delta import StatsDelta, coalesce, warmup_delta
from streamem.model.results import BatchResult
from streamem.sharing.leader import Leader
from streamem.sharing.records import VERSION_HEADER, header
from streamem.width import match_warm_up

log = logging.getLogger(__name__)

#: How long a clean stop waits for its deltas to be folded when no state is published yet.
WARMUP_WAIT_S = 3.0
#: Least seconds between two polls of the state topic that do not wait for its end: such a
#: poll costs kafka-python a round trip to its network thread (about a millisecond), too much
#: for every poll batch, while states come every ``sharing.publish_interval_s`` at most.
POLL_INTERVAL_S = 0.1


class Worker:
    """Answers batches with the newest model on the state topic; its deltas go to the stats topic.

    Parameters
    ----------
    model : OnlineGMM
        Fresh, or this instance's checkpoint: what the checkpoint holds until the first state
        arrives (a copy of it learns the batches meanwhile, see :meth:`answer`).
    sink : Sink
        The loop's sink: deltas are acknowledged by the loop's flush, before its commit (with
        exactly once, the loop sends them into its transaction before committing it).
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
    read_timeout_s : float
        The bound on one read of the state topic to its end; when it runs out, the worker is
        not ready and reads again before the next batch.
    leader : Leader, optional
        This instance's leader thread, stopped by :meth:`close`.
    """

    def __init__(self, model: OnlineGMM, sink: Sink, consumer_kwargs: dict[str, Any],
                 stats_topic: str, state_topic: str, instance: str, metrics: Metrics, *,
                 delta_interval_s: float = 0.1, max_staleness: int = 32,
                 read_timeout_s: float = 30.0, leader: Leader | None = None) -> None:
        self.model = model
        self.leader = leader
        self.sink = sink
        self.stats_topic = stats_topic
        self.instance = instance
        self.metrics = metrics
        self.delta_interval_s = delta_interval_s
        self.max_staleness = max_staleness
        self.read_timeout_s = read_timeout_s
        self._tp = TopicPartition(state_topic, 0)
        self._consumer = KafkaConsumer(**{**consumer_kwargs, "group_id": None,
                                          "enable_auto_commit": False,
                                          "isolation_level": "read_committed"})
        self._consumer.assign([self._tp])
        self._consumer.seek_to_beginning(self._tp)
        self._pending: list[StatsDelta] = []
        self._last_sent = time.monotonic()
        self._last_poll = -POLL_INTERVAL_S
        self._newest_seen = 0
        self._assigned: set[tuple[str, int]] = set()
        self._loaded = False
        self._warm: OnlineGMM | None = None  # answers until the first state arrives
        #: The state topic was read to its end since the last new assignment: the worker
        #: answers with the newest parameters (or there are none yet). ``/readyz`` follows it.
        self.has_parameters = False

    @property
    def staleness(self) -> int:
        return max(self._newest_seen - int(self.model.version_), 0)

    def before_batch(self, assigned: set[tuple[str, int]]) -> OnlineGMM:
        """Take in new states; read the state topic to its end first when a partition was
        newly assigned, the model is too stale or the last such read ran out of time. Returns
        the model to answer with."""
        gained = bool(assigned - self._assigned)
        self._assigned = set(assigned)
        self.sync(to_end=gained or not self.has_parameters or
                  self.staleness > self.max_staleness, timeout_s=self.read_timeout_s)
        self.metrics.model_in_use(int(self.model.version_), self.staleness)
        return self.model

    def sync(self, *, to_end: bool = False, timeout_s: float = 30.0) -> None:
        """Poll the state topic; with ``to_end`` until its end as of now (or ``timeout_s``),
        else once unless it was polled within :data:`POLL_INTERVAL_S`."""
        now = time.monotonic()
        if not to_end and now - self._last_poll < POLL_INTERVAL_S:
            return
        end = self._consumer.end_offsets([self._tp])[self._tp] if to_end else -1
        deadline = now + timeout_s
        while True:
            batches = poll(self._consumer, 200 if to_end else 0)
            self._last_poll = time.monotonic()
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
        self._loaded, self._warm = True, None

    def answer(self, X: np.ndarray) -> BatchResult:
        """Answer X (n, d); its delta is queued for the leader.

        The model is left unchanged. Before the first state, a copy of it (fresh, or this
        instance's checkpoint) learns X, so that answers agree from batch to batch, and the
        delta carries the points (the leader learns from them; the checkpoint does not hold
        them twice). Those answers carry the version read (0 when none): the copy's own
        versions are not the group's, and a partition's versions must never go back.
        """
        if self._loaded:
            result, delta = self.model.delta(X)
        else:
            if self._warm is None:
                self.model.delta(X[:0])  # readies its learning state: the loop's metrics read it
                self._warm = copy.deepcopy(self.model)
            match_warm_up(self._warm, X.shape[1])  # the input's width was revised
            result = self._warm.partial_fit(X)  # stamped with the version read: none published
            result = replace(result, model_version=int(self.model.version_))
            delta = warmup_delta(self.model.covariance_type, self.model.n_components, X)
        self._pending.append(delta)
        if time.monotonic() - self._last_sent >= self.delta_interval_s:
            self.send()
        return result

    def send(self) -> None:
        """Send the queued deltas as one (the loop's flush acknowledges it), or one per run
        of warm-up and other deltas; as two halves, recursively, when one would be too large
        (deltas carrying points)."""
        pending, self._pending = self._pending, []
        self._last_sent = time.monotonic()
        if pending:
            self._send(pending)

    def _send(self, deltas: list[StatsDelta]) -> None:
        start = 0
        for i in range(1, len(deltas) + 1):  # warm-up deltas coalesce only with warm-up ones
            if i == len(deltas) or deltas[i].warmup != deltas[start].warmup:
                self._send_run(deltas[start:i])
                start = i

    def _send_run(self, deltas: list[StatsDelta]) -> None:
        delta = coalesce(deltas)
        try:
            self.sink.send(self.stats_topic, self.instance.encode(), delta.to_bytes(), ())
        except RecordTooLarge as exc:
            if len(deltas) > 1:
                half = len(deltas) // 2
                self._send_run(deltas[:half])
                self._send_run(deltas[half:])
            elif len(delta.points) > 1:
                for part in _smaller(delta):
                    self._send_run([part])
            else:
                log.warning("delta_not_sent", extra={"error": str(exc),
                                                     "points": delta.n_points})
            return
        self.metrics.deltas_sent()

    def discard(self) -> None:
        """Drop the queued deltas: their batches were rolled back (an aborted transaction)."""
        self._pending = []

    def settle(self, timeout_s: float = 30.0) -> OnlineGMM:
        """At a clean stop: send the queued deltas, stop this instance's leader thread (when it
        leads, it folds the stats topic to its end and publishes first), then read the state
        to its end. Returns the model for the final checkpoint."""
        self.send()
        try:
            self.sink.flush(timeout_s)
        except TransportError as exc:
            log.warning("deltas_not_flushed", extra={"error": str(exc)})
        self._await_folded(time.monotonic() + timeout_s)
        self._stop_leader()
        self.sync(to_end=True, timeout_s=timeout_s)
        return self.model

    def _await_folded(self, deadline: float) -> None:
        """Wait until this instance leads (stopping it folds the rest) or the leader's
        committed stats offset passes this worker's last delta (a state reflecting it is
        published: the offsets commit in the state's transaction).

        Before the first state the leader commits nothing until its warm-up completes, which
        these deltas alone seldom do: the wait is then :data:`WARMUP_WAIT_S` (a state they
        complete is published within it), and the deltas stay on the stats topic for the
        leader's warm-up."""
        if self.leader is None:
            return
        if not self._loaded:  # the leader still warms up: it commits with its first state
            deadline = min(deadline, time.monotonic() + WARMUP_WAIT_S)
        stats = TopicPartition(self.stats_topic, 0)
        end = self._consumer.end_offsets([stats])[stats]
        group = KafkaConsumer(**{**self.leader.consumer_kwargs, "enable_auto_commit": False,
                                 "group_id": f"{self.leader.group_id}.leader"})
        try:
            while time.monotonic() < deadline:
                if self.leader.leading or (group.committed(stats) or 0) >= end:
                    return
                time.sleep(0.2)
        finally:
            group.close()
        if self._loaded:
            log.warning("deltas_not_folded", extra={"stats_end": end})
        else:
            log.info("deltas_left_to_warm_up", extra={"stats_end": end})

    def _stop_leader(self) -> None:
        if self.leader is not None:
            self.leader.stop.set()
            self.leader.join(timeout=30)

    def close(self) -> None:
        """Send what is queued, stop the leader thread (it publishes first), close."""
        self.send()
        self._stop_leader()
        self._consumer.close()


def _smaller(delta: StatsDelta) -> list[StatsDelta]:
    """A delta too large for one record, made smaller: a warm-up delta as two, one per half of
    its points (the leader learns from all of them); another keeps the last half of the points
    it carries (a suffix, as after coalescing)."""
    half = len(delta.points) // 2
    if delta.warmup:
        return [warmup_delta(delta.covariance_type, delta.n_components, delta.points[:half]),
                warmup_delta(delta.covariance_type, delta.n_components, delta.points[half:])]
    return [replace(delta, points=delta.points[half:])]
