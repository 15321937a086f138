"""The one place the daemon is put together: from a :class:`~streamem.config.Config`, its
source, sink, checkpoint stores, metrics, model and loop.

``streamem run``, ``streamem demo`` and ``streamem bench kafka`` build through here, so they
connect the same way. The transports (:mod:`streamem.io`) take plain values and a
:class:`~streamem.io.base.ClientEvents` (the :class:`~streamem.metrics.Metrics`); the client
settings come from :mod:`streamem.clients`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamem.clients import kafka_python
from streamem.errors import TransportError
from streamem.io.base import NO_EVENTS, Backoff, ClientEvents, Sink, Source
from streamem.io.checkpoint import (
    Checkpoint,
    CheckpointStore,
    FileCheckpointStore,
    KafkaCheckpointStore,
)
from streamem.io.kafka import (
    KafkaSink,
    KafkaSource,
    SinkT,
    SourceT,
    TransactionalKafkaSink,
    connect,
)
from streamem.metrics import Metrics, MetricsServer
from streamem.model import OnlineGMM
from streamem.runtime import Runtime, restore_model
from streamem.sharing.leader import Leader
from streamem.sharing.worker import Worker

if TYPE_CHECKING:
    from streamem.config import Config

log = logging.getLogger(__name__)



def backoff(cfg: Config) -> Backoff:
    """The reconnect back-off: ``runtime.retry_initial_s`` doubling up to ``retry_max_s``."""
    return Backoff(cfg.runtime.retry_initial_s, cfg.runtime.retry_max_s)


def serve_metrics(metrics: Metrics, cfg: Config) -> MetricsServer | None:
    """Serve ``metrics`` as ``metrics.*`` says; None when ``metrics.enabled`` is false."""
    m = cfg.metrics
    if not m.enabled:
        return None
    return metrics.serve(m.host, m.port, max_connections=m.max_connections,
                         client_timeout_s=m.client_timeout_s)


def checkpoint_stores(cfg: Config) -> list[CheckpointStore]:
    """The file store (``checkpoint.path``) and the Kafka store (``checkpoint.kafka_topic``)
    the config names, in that order."""
    stores: list[CheckpointStore] = []
    if cfg.checkpoint.path:
        stores.append(FileCheckpointStore(cfg.checkpoint.path))
    if cfg.checkpoint.kafka_topic:
        k = cfg.kafka
        stores.append(KafkaCheckpointStore(
            cfg.checkpoint.kafka_topic, k.group_id, k.client_kwargs(),
            consumer_kwargs=k.kwargs_for("consumer"), producer_kwargs=k.kwargs_for("producer"),
            admin_kwargs=kafka_python.admin_settings(cfg)))
    return stores


def fresh_model(cfg: Config) -> OnlineGMM:
    """A fresh model with ``model.*``."""
    return OnlineGMM(**cfg.model_kwargs())


def restore(cfg: Config, stores: Sequence[CheckpointStore], *, ignore: bool,
            log: logging.Logger, stop: threading.Event,
            ) -> tuple[OnlineGMM | None, Checkpoint | None]:
    """:func:`~streamem.runtime.restore_model`, retried while a Kafka store is unreachable;
    ``(None, None)`` when ``stop`` is set first."""
    wait = backoff(cfg)
    while not stop.is_set():
        try:
            return restore_model(cfg, stores, ignore=ignore, logger=log)
        except TransportError as exc:
            log.warning("checkpoint_unreachable", extra={"error": str(exc)})
            wait.wait(stop)
    return None, None


def kafka_source(cfg: Config, events: ClientEvents = NO_EVENTS, *,
                 cls: type[SourceT] = KafkaSource) -> SourceT:  # type: ignore[assignment]
    """The input topic's consumer, connected once (KafkaTimeoutError if no broker answers)."""
    k = cfg.kafka
    return cls.create(kafka_python.consumer_settings(cfg), [k.input_topic],
                      commit_timeout_s=k.request_timeout_ms / 1000,
                      rejoin_after_s=k.unassigned_rejoin_s, events=events)


def kafka_sink(cfg: Config, events: ClientEvents = NO_EVENTS, *,
               cls: type[SinkT] = KafkaSink) -> SinkT:  # type: ignore[assignment]
    """The output producer, connected once (KafkaTimeoutError if no broker answers); a
    transactional one with ``delivery.guarantee: exactly_once``."""
    if cfg.delivery.guarantee == "exactly_once":
        return TransactionalKafkaSink.create_transactional(  # type: ignore[return-value]
            kafka_python.transactional_producer_settings(cfg),
            timeout_s=cfg.delivery.transaction_timeout_s,
            max_message_bytes=kafka_python.output_max_bytes(cfg),
            dead_letter_topic=cfg.kafka.dead_letter_topic, events=events)
    return cls.create(kafka_python.producer_settings(cfg),
                      max_message_bytes=kafka_python.output_max_bytes(cfg),
                      dead_letter_topic=cfg.kafka.dead_letter_topic, events=events)


def source(cfg: Config, kind: str, events: ClientEvents,
           stop: threading.Event) -> Source | None:
    """``stdin`` lines, or the Kafka input retried until it connects (None if stopped first)."""
    if kind == "stdin":
        from streamem.formats import input_format
        from streamem.io.stdio import StdinSource

        binary = input_format(cfg.input.format).binary
        limit = cfg.input.max_bytes  # a binary line is base64: 4 characters per 3 bytes
        return StdinSource(binary=binary, batch_size=cfg.kafka.max_poll_records,
                           max_line_bytes=-(-limit // 3) * 4 if binary else limit)
    if cfg.kafka.client == "confluent-kafka":
        from streamem.clients import confluent
        from streamem.io import rdkafka

        return rdkafka.connect(lambda: confluent.create_source(cfg, events), what="consumer",
                               backoff=backoff(cfg), stop=stop, events=events)
    return connect(lambda: kafka_source(cfg, events), what="consumer", backoff=backoff(cfg),
                   stop=stop, events=events)


def sink(cfg: Config, kind: str, events: ClientEvents, stop: threading.Event) -> Sink | None:
    """``stdout``, or the Kafka producer retried until it connects (None if stopped first)."""
    if kind == "stdout":
        from streamem.io.stdio import StdoutSink

        return StdoutSink(cfg.kafka.output_topic)
    if cfg.kafka.client == "confluent-kafka":
        from streamem.clients import confluent
        from streamem.io import rdkafka

        sink: Sink | None = rdkafka.connect(lambda: confluent.create_sink(cfg, events),
                                            what="producer", backoff=backoff(cfg), stop=stop,
                                            events=events)
    else:
        sink = connect(lambda: kafka_sink(cfg, events), what="producer", backoff=backoff(cfg),
                       stop=stop, events=events)
    if sink is not None:
        ensure_anomaly_topic(cfg)
    return sink


def ensure_anomaly_topic(cfg: Config) -> None:
    """Create ``kafka.anomaly_topic`` (when set and absent) with as many partitions as the
    input topic (the broker's default while that does not exist yet), so that it exists from
    the start. A broker that refuses is told in a warning; the first send then creates it, if
    the broker auto-creates topics."""
    from kafka.errors import KafkaError

    from streamem.io import kafka_admin

    topic = cfg.kafka.anomaly_topic
    if not topic:
        return
    admin = kafka_python.admin_settings(cfg)
    try:
        partitions = kafka_admin.partition_count(admin, cfg.kafka.input_topic) or -1
        kafka_admin.create_topics(admin, [topic], partitions=partitions, exist_ok=True)
    except KafkaError as exc:
        log.warning("anomaly_topic_not_created", extra={"topic": topic, "error": str(exc)})


def runtime(cfg: Config, source: Source, sink: Sink, metrics: Metrics, *,
            model: OnlineGMM | None = None, stores: Sequence[CheckpointStore] | None = None,
            resume: Checkpoint | None = None, log: logging.Logger | None = None,
            stop: threading.Event | None = None) -> Runtime:
    """The loop over ``source`` and ``sink``; a fresh model and the configured checkpoint stores
    unless given.

    With ``sharing.enabled`` and Kafka at both ends, the instance shares its group's model
    (:func:`sharing`): it answers with the leader's state and may lead. The state topic replaces
    the Kafka checkpoint store (keyed by the group, which the instances share); the file
    checkpoint stays the instance's own (the shared model as it last read it).
    """
    model = model if model is not None else fresh_model(cfg)
    stores = checkpoint_stores(cfg) if stores is None else list(stores)
    share = None
    if cfg.sharing.enabled and _kafka_ends(source, sink):
        share = sharing(cfg, sink, metrics, model)
        stores = [s for s in stores if not isinstance(s, KafkaCheckpointStore)]
    return Runtime(cfg, source, sink, model, metrics, stores, log, resume=resume, stop=stop,
                   share=share)


def _kafka_ends(source: Source, sink: Sink) -> bool:
    """Whether the loop reads a Kafka consumer group and writes Kafka, on either client."""
    if isinstance(source, KafkaSource) and isinstance(sink, KafkaSink):
        return True
    try:
        from streamem.io.rdkafka import RdKafkaSink, RdKafkaSource
        from streamem.io.rdkafka_txn import TransactionalRdKafkaSink
    except ImportError:  # no confluent-kafka: no librdkafka source or sink either
        return False
    return isinstance(source, RdKafkaSource) and isinstance(
        sink, (RdKafkaSink, TransactionalRdKafkaSink))


def sharing(cfg: Config, sink: Sink, metrics: Metrics, model: OnlineGMM | None = None
            ) -> Worker:
    """This instance's worker of the group's shared model, its leader thread started (it leads
    while it owns the stats topic's partition); closing the worker stops the leader.

    ``model`` (this instance's restored checkpoint, else fresh) answers until the first state
    arrives, and is where a leader starts when the state topic holds none yet.
    """
    import copy

    from streamem.sharing.records import instance_id

    k, s = cfg.kafka, cfg.sharing
    stats_topic, state_topic = sharing_topics(cfg)
    me = instance_id(k.client_id)
    consumer, producer = sharing_clients(cfg)
    start = model if model is not None else fresh_model(cfg)
    leader = Leader(lambda: copy.deepcopy(start), consumer, producer, k.group_id, stats_topic,
                    state_topic, me, metrics, model_topic=k.model_topic,
                    publish_interval_s=s.publish_interval_s)
    worker = Worker(copy.deepcopy(start), sink, consumer, stats_topic, state_topic, me, metrics,
                    delta_interval_s=s.delta_interval_s, max_staleness=s.max_staleness_versions,
                    leader=leader)
    metrics.shares_model_of(k.group_id)
    metrics.set_leader(False)
    leader.start()
    log.info("sharing_model", extra={"instance": me, "stats_topic": stats_topic,
                                     "state_topic": state_topic})
    return worker


def sharing_topics(cfg: Config) -> tuple[str, str]:
    """The shared model's stats and state topics, created when absent (one partition each,
    records up to ``MAX_RECORD_BYTES``, the state compacted)."""
    from streamem.io import kafka_admin
    from streamem.sharing.records import MAX_RECORD_BYTES

    stats_topic, state_topic = cfg.sharing.topics(cfg.kafka.group_id)
    big = {"max.message.bytes": str(MAX_RECORD_BYTES)}
    admin = kafka_python.admin_settings(cfg)
    kafka_admin.create_topics(admin, [stats_topic], partitions=1, configs=big, exist_ok=True)
    kafka_admin.create_topics(admin, [state_topic], partitions=1, exist_ok=True,
                              configs={**big, "cleanup.policy": "compact"})
    return stats_topic, state_topic


def sharing_clients(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """kafka-python consumer and producer settings of the shared model's clients (records up
    to ``MAX_RECORD_BYTES``)."""
    from streamem.sharing.records import MAX_RECORD_BYTES

    consumer = {**kafka_python.consumer_settings(cfg), "max_partition_fetch_bytes":
                MAX_RECORD_BYTES, "fetch_max_bytes": MAX_RECORD_BYTES}
    producer = {**kafka_python.producer_settings(cfg), "max_request_size": MAX_RECORD_BYTES}
    return consumer, producer
