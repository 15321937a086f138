"""Config → librdkafka properties for confluent-kafka (``kafka.client: confluent-kafka``).

Every ``kafka.*`` key maps to its librdkafka name (see the README's table);
``kafka.client_options`` go to the consumer and the producer, ``consumer_options`` and
``producer_options`` to one of them (they win). Group, commit, acknowledgement and
idempotence settings are fixed: the runtime's at-least-once contract depends on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamem.clients.transactions import transaction_timeout_ms, transactional_id
from streamem.io.base import ClientEvents

if TYPE_CHECKING:
    from streamem.config import Config
    from streamem.io.rdkafka import RdKafkaSink, RdKafkaSource
    from streamem.io.rdkafka_txn import TransactionalRdKafkaSink

MiB = 1024 * 1024
RETRY_MAX_MS = 300_000
"""librdkafka's upper bound of ``retry.backoff.max.ms`` (and so of the back-offs here)."""
SOCKET_TIMEOUT_MAX_MS = 300_000
"""librdkafka's upper bound of ``socket.timeout.ms``."""


def common(cfg: Config) -> dict[str, Any]:
    """Connection, security and back-off properties every client gets."""
    k, r = cfg.kafka, cfg.runtime
    initial_ms = min(max(int(r.retry_initial_s * 1000), 1), RETRY_MAX_MS)
    max_ms = min(max(int(r.retry_max_s * 1000), initial_ms), RETRY_MAX_MS)
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": k.client_id,
        "security.protocol": k.security_protocol.lower(),
        "socket.timeout.ms": min(max(k.request_timeout_ms, 10), SOCKET_TIMEOUT_MAX_MS),
        "reconnect.backoff.ms": initial_ms,
        "reconnect.backoff.max.ms": max_ms,
        "retry.backoff.ms": initial_ms,
        "retry.backoff.max.ms": max_ms,
        "ssl.endpoint.identification.algorithm": "https" if k.ssl_check_hostname else "none",
    }
    named = {"sasl.mechanisms": k.sasl_mechanism, "sasl.username": k.sasl_plain_username,
             "sasl.password": k.sasl_plain_password, "ssl.ca.location": k.ssl_cafile,
             "ssl.certificate.location": k.ssl_certfile, "ssl.key.location": k.ssl_keyfile,
             "ssl.key.password": k.ssl_password}
    conf.update((name, v) for name, v in named.items() if v is not None)
    conf.update(k.client_options)
    return conf


def consumer_conf(cfg: Config) -> dict[str, Any]:
    """The consumer's properties: fetches of up to 64 MiB (the largest message the daemon
    reads), 8 MiB per partition; record checksums checked (as by kafka-python and the Java
    client: librdkafka's default would answer a corrupt record); manual commits of explicit
    offsets."""
    from streamem.io.rdkafka import FETCH_MAX_BYTES

    k = cfg.kafka
    conf = {
        "fetch.max.bytes": FETCH_MAX_BYTES,
        "max.partition.fetch.bytes": 8 * MiB,
        "check.crcs": True,
        **common(cfg),
        **k.consumer_options,
        "group.id": k.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": k.auto_offset_reset,
        "isolation.level": ("read_committed" if cfg.delivery.guarantee == "exactly_once"
                            else "read_uncommitted"),
        "session.timeout.ms": k.session_timeout_ms,
        "heartbeat.interval.ms": k.heartbeat_interval_ms,
        "max.poll.interval.ms": k.max_poll_interval_ms,
    }
    conf["receive.message.max.bytes"] = max(int(conf.get("receive.message.max.bytes", 0)),
                                            int(conf["fetch.max.bytes"]) + MiB)
    return conf


def producer_conf(cfg: Config) -> dict[str, Any]:
    """The output producer's properties: ``acks=all``, idempotence, the delivery timeout."""
    k = cfg.kafka
    delivery_ms = int(k.delivery_timeout_s * 1000)
    conf = {"linger.ms": 5, **common(cfg), **k.producer_options,
            "acks": "all", "enable.idempotence": True, "delivery.timeout.ms": delivery_ms}
    linger = int(float(conf.get("linger.ms", 5)))
    conf["request.timeout.ms"] = max(min(int(conf.get("request.timeout.ms", k.request_timeout_ms)),
                                         delivery_ms - linger), 1)
    return conf


def dead_letter_conf(cfg: Config) -> dict[str, Any]:
    """The dead-letter producer's: not idempotent (a broker's refusal must not stall it), one
    request in flight, ``message.max.bytes`` that fits any message read."""
    from streamem.io.rdkafka import DEAD_LETTER_MAX_BYTES

    conf = producer_conf(cfg)
    conf.update({"enable.idempotence": False, "max.in.flight.requests.per.connection": 1,
                 "client.id": f"{conf['client.id']}-dead-letters",
                 "message.max.bytes": max(int(conf.get("message.max.bytes", 0)),
                                          DEAD_LETTER_MAX_BYTES)})
    return conf


def transactional_conf(cfg: Config) -> dict[str, Any]:
    """The transactional producer's properties (``delivery.guarantee: exactly_once``): the
    output producer's, with the transactional id and transaction timeout kafka-python's gets
    (:func:`streamem.clients.kafka_python.transactional_producer_settings`); librdkafka wants
    the socket and delivery timeouts no longer than the transaction timeout."""
    conf = producer_conf(cfg)
    conf["transactional.id"] = transactional_id(cfg)
    txn_ms = conf["transaction.timeout.ms"] = transaction_timeout_ms(cfg)
    for bounded in ("socket.timeout.ms", "delivery.timeout.ms"):
        conf[bounded] = min(int(conf[bounded]), txn_ms)
    linger = int(float(conf.get("linger.ms", 5)))
    conf["request.timeout.ms"] = max(min(int(conf["request.timeout.ms"]),
                                         conf["delivery.timeout.ms"] - linger), 1)
    return conf


def output_limit(cfg: Config) -> int:
    """The largest output message: the producer's ``message.max.bytes``."""
    from streamem.io.rdkafka import OUTPUT_MAX_BYTES

    return int(producer_conf(cfg).get("message.max.bytes", OUTPUT_MAX_BYTES))


def _connect_timeout_s(cfg: Config) -> float:
    return min(cfg.kafka.request_timeout_ms, 10_000) / 1000


def create_source(cfg: Config, events: ClientEvents) -> RdKafkaSource:
    """A source that has seen a broker answer (raises TransportError if none does)."""
    from streamem.io.rdkafka import RdKafkaSource

    k = cfg.kafka
    source = RdKafkaSource(consumer_conf(cfg), [k.input_topic], max_records=k.max_poll_records,
                           commit_timeout_s=k.request_timeout_ms / 1000, events=events,
                           rejoin_after_s=k.unassigned_rejoin_s)
    try:
        source.wait_for_metadata(_connect_timeout_s(cfg))
    except BaseException:
        source.close()
        raise
    return source


def create_sink(cfg: Config,
                events: ClientEvents) -> RdKafkaSink | TransactionalRdKafkaSink:
    """A sink that has seen a broker answer (raises TransportError if none does); a
    transactional one with ``delivery.guarantee: exactly_once``."""
    from streamem.io.rdkafka import RdKafkaSink
    from streamem.io.rdkafka_txn import TransactionalRdKafkaSink

    k = cfg.kafka
    drop = frozenset([k.dead_letter_topic])
    sink: RdKafkaSink | TransactionalRdKafkaSink
    if cfg.delivery.guarantee == "exactly_once":
        sink = TransactionalRdKafkaSink(transactional_conf(cfg),
                                        timeout_s=cfg.delivery.transaction_timeout_s,
                                        value_drop_topics=drop,
                                        max_message_bytes=output_limit(cfg), events=events)
    else:
        sink = RdKafkaSink(producer_conf(cfg), dead_letter_conf(cfg), value_drop_topics=drop,
                           max_message_bytes=output_limit(cfg),
                           enqueue_timeout_s=k.delivery_timeout_s, events=events)
    try:
        sink.wait_for_metadata(_connect_timeout_s(cfg))
    except BaseException:
        sink.close()
        raise
    return sink
