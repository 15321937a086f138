"""The leader's side of a shared model: fold the stats topic's deltas, publish the state.

The leader is whichever instance owns partition 0 of the stats topic in the group
``<group_id>.leader`` (Kafka's group protocol elects it). It reads committed deltas only (a
worker's aborted transaction teaches nothing). Each publication is one transaction: the state
record (the model's checkpoint bytes, one key, strictly increasing versions, a header naming
the writer), the JSON parameters on ``kafka.model_topic`` when set, and the stats offsets the
state reflects. The transactional id is the role's, so a new leader's ``init_transactions``
fences an old one that comes back: its next publication fails with ProducerFencedError and it
stands down. A new leader restores the newest committed state and resumes from the offsets
committed with it, so no delta is folded twice or lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamem.errors import MissingCodec
from streamem.io.kafka import learn_topics, poll
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.model.delta import StatsDelta
from streamem.sharing.records import state_headers, state_key
from streamem.width import InputWidth, match_warm_up, model_width

log = logging.getLogger(__name__)


class _Generations(ConsumerRebalanceListener):
    """Counts assignments, so a fenced leader waits for a new one before leading again."""

    def __init__(self) -> None:
        self.count = 0

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.count += 1


class Leader(threading.Thread):
    """Stands by, or leads while this instance owns the stats topic's partition 0.

    Parameters
    ----------
    fresh : callable
        A fresh model, when the state topic holds none yet.
    consumer_kwargs, producer_kwargs : dict
        kafka-python settings; the group and transactional ids are set here.
    group_id : str
        The input's group: the state's key; the role's group is ``<group_id>.leader``.
    """

    def __init__(self, fresh: Callable[[], OnlineGMM], consumer_kwargs: dict[str, Any],
                 producer_kwargs: dict[str, Any], group_id: str, stats_topic: str,
                 state_topic: str, instance: str, metrics: Metrics, *,
                 model_topic: str | None = None, publish_interval_s: float = 1.0) -> None:
        super().__init__(name="streamem-leader", daemon=True)
        self.fresh = fresh
        self.consumer_kwargs = consumer_kwargs
        self.producer_kwargs = {**producer_kwargs,
                                "transactional_id": f"streamem.{group_id}.leader"}
        self.group_id = group_id
        self.stats = TopicPartition(stats_topic, 0)
        self.state_topic = state_topic
        self.model_topic = model_topic
        self.instance = instance
        self.metrics = metrics
        self.publish_interval_s = publish_interval_s
        self.stop = threading.Event()
        self.model: OnlineGMM | None = None
        self._width = InputWidth(None)  # the model's, once it leads (see ``_vote_width``)
        self.published_version = -1
        self._producer: KafkaProducer | None = None
        self._last_publish = 0.0
        self._unpublished = False
        self._fenced_at = -1  # the assignment count when last fenced

    @property
    def leading(self) -> bool:
        return self._producer is not None

    def run(self) -> None:
        generations = _Generations()
        consumer = KafkaConsumer(**{**self.consumer_kwargs,
                                    "group_id": f"{self.group_id}.leader",
                                    "enable_auto_commit": False,
                                    "auto_offset_reset": "earliest",
                                    "isolation_level": "read_committed"})
        learn_topics(consumer, [self.stats.topic])
        consumer.subscribe([self.stats.topic], listener=generations)
        try:
            while not self.stop.is_set():
                try:
                    self._step(consumer, generations)
                except MissingCodec as exc:  # this consumer cannot read on: others may lead
                    log.error("leader_stopped", extra={"error": str(exc)})
                    self._resign(consumer, "error")  # not leading: nothing polls it again
                    break
                except KafkaError as exc:
                    log.warning("leader_error", extra={"error": repr(exc)})
                    self._resign(consumer, "error")
                    self.stop.wait(1.0)
                except Exception:  # a bug or an unreadable state: stand down, try again later
                    log.exception("leader_failed")
                    self._resign(consumer, "error")
                    self.stop.wait(5.0)
        finally:
            if self.leading:
                try:
                    self._drain(consumer)
                    self._publish(consumer)
                except KafkaError:
                    pass
            self._resign(consumer, "stopped")
            consumer.close()

    def _step(self, consumer: KafkaConsumer, generations: _Generations) -> None:
        batches = poll(consumer, 200)
        owns = self.stats in consumer.assignment()
        if owns and not self.leading and generations.count != self._fenced_at:
            self._become(consumer)
            return  # the batch in hand was fetched before the seek to the committed offset
        elif not owns and self.leading:
            self._resign(consumer, "rebalance")
        if not self.leading:
            return
        records = batches.get(self.stats, [])
        for record in records:
            self._fold(record)
        if self._unpublished and time.monotonic() - self._last_publish >= \
                self.publish_interval_s:
            try:
                self._publish(consumer)
            except KafkaError as exc:  # ProducerFencedError: another instance leads now
                log.warning("leader_fenced", extra={"instance": self.instance,
                                                    "error": repr(exc)})
                self._fenced_at = generations.count
                self._resign(consumer, "fenced")

    def _drain(self, consumer: KafkaConsumer, timeout_s: float = 10.0) -> None:
        """Fold the stats topic to its end as of now (a clean stop: the last deltas)."""
        end = consumer.end_offsets([self.stats])[self.stats]
        deadline = time.monotonic() + timeout_s
        while consumer.position(self.stats) < end and time.monotonic() < deadline:
            for record in poll(consumer, 200).get(self.stats, []):
                self._fold(record)

    def _become(self, consumer: KafkaConsumer) -> None:
        producer = KafkaProducer(**self.producer_kwargs)
        producer.init_transactions()  # fences the previous leader, aborts its open transaction
        self.model, version = self._restore()
        self._width = InputWidth(None, model_width(self.model))
        committed = consumer.committed(self.stats)
        consumer.seek(self.stats, committed if committed is not None else 0)
        self._producer = producer
        self.published_version = version
        self._unpublished = False
        self.metrics.set_leader(True)
        log.info("leader_gained", extra={"instance": self.instance, "version": version,
                                         "stats_offset": committed or 0})

    def _restore(self) -> tuple[OnlineGMM, int]:
        """The newest committed state on the state topic (a fresh model if none) and its
        version."""
        consumer = KafkaConsumer(**{**self.consumer_kwargs, "group_id": None,
                                    "enable_auto_commit": False,
                                    "isolation_level": "read_committed"})
        try:
            tp = TopicPartition(self.state_topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            last = None
            while consumer.position(tp) < end:
                for records in poll(consumer, 500).values():
                    if records:
                        last = records[-1]
        finally:
            consumer.close()
        if last is None:
            return self.fresh(), -1
        model = OnlineGMM.from_bytes(last.value)
        return model, int(model.version_)

    def _fold(self, record: Any) -> None:
        assert self.model is not None
        try:
            delta = StatsDelta.from_bytes(record.value)
            self._vote_width(delta)
            self.model.fold(delta)
        except ValueError as exc:  # ModelRejected included: the model is unchanged
            log.warning("delta_refused", extra={"offset": record.offset, "error": str(exc)})
            return
        self._unpublished = True
        self.metrics.deltas_folded(1, time.time() - record.timestamp / 1000)

    def _vote_width(self, delta: StatsDelta) -> None:
        """While the model warms up, each delta's points vote for their width; one that has
        more points than the model's starts its warm-up again on it (see
        :mod:`streamem.width`: the workers revise their own width the same way)."""
        assert self.model is not None
        if not self._width.provisional(self.model):
            return
        self._width.count({delta.n_features: max(delta.n_points, 1)})
        was = model_width(self.model)
        if match_warm_up(self.model, self._width.value):
            log.warning("n_features_revised", extra={"n_features": self._width.value,
                                                     "was": was})

    def _publish(self, consumer: KafkaConsumer) -> None:
        """One transaction: the state, the JSON parameters, the stats offsets it reflects.

        Nothing while the version has not moved (a model warming up keeps version 0): the
        offsets commit only with a state that reflects them, so a new leader folds again
        whatever no published state holds.
        """
        assert self.model is not None and self._producer is not None
        self._last_publish = time.monotonic()
        self._unpublished = False
        version = int(self.model.version_)
        if version <= self.published_version or not self.model.initialized_:
            return
        producer = self._producer
        producer.begin_transaction()
        producer.send(self.state_topic, key=state_key(self.group_id), value=self.model.to_bytes(),
                      headers=state_headers(self.instance, version))
        if self.model_topic:
            params = json.dumps(self.model.params_dict(), allow_nan=False).encode()
            producer.send(self.model_topic, key=state_key(self.group_id), value=params,
                          headers=state_headers(self.instance, version))
        offsets = {self.stats: OffsetAndMetadata(consumer.position(self.stats), "", -1)}
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        producer.commit_transaction()
        self.published_version = version
        self.metrics.model_published()

    def _resign(self, consumer: KafkaConsumer, why: str) -> None:
        if self._producer is None:
            return
        producer, self._producer, self.model = self._producer, None, None
        try:
            producer.close(timeout=1)
        except Exception:  # closing a fenced producer is best effort
            pass
        self.metrics.set_leader(False)
        log.info("leader_lost", extra={"instance": self.instance, "why": why})
