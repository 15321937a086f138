"""The librdkafka transactional sink against the real broker: commit and abort as a
``read_committed`` reader sees them, fencing by a newer producer, dead letters the broker refuses,
and settings librdkafka refuses."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402
from kafka import KafkaConsumer  # noqa: E402
from test_rdkafka import WAIT_S, Events, config, create_topic  # noqa: E402

from streamem.clients import confluent  # noqa: E402
from streamem.config import load_config  # noqa: E402
from streamem.errors import ConfigError, TransportError  # noqa: E402
from streamem.io import rdkafka  # noqa: E402
from streamem.io.base import VALUE_DROPPED_HEADER, Backoff, TransactionalSink  # noqa: E402
from streamem.io.rdkafka_txn import TransactionalRdKafkaSink  # noqa: E402

EO = ("delivery.guarantee=exactly_once", "delivery.transaction_timeout_s=10")


def committed(bootstrap: str, topic: str) -> list:
    """Every record a ``read_committed`` reader sees on ``topic`` (read to its end)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             isolation_level="read_committed", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        return list(consumer)
    finally:
        consumer.close()


def txn_sink(bootstrap: str, topic: str, *extra: str) -> TransactionalRdKafkaSink:
    sink = confluent.create_sink(config(bootstrap, topic, *EO, *extra), Events())
    assert isinstance(sink, TransactionalRdKafkaSink) and isinstance(sink, TransactionalSink)
    return sink


@pytest.mark.kafka
def test_committed_sends_are_seen_and_aborted_ones_never(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-txn")
    sink = txn_sink(kafka_bootstrap, topic)
    try:
        sink.begin()
        sink.send(topic, b"a", b"kept", [("h", b"1")], timestamp_ms=1_700_000_000_000)
        sink.flush(WAIT_S)
        sink.commit()
        sink.begin()
        sink.send(topic, b"b", b"dropped")
        sink.flush(WAIT_S)
        sink.abort()
        sink.begin()
        sink.send(topic, b"c", b"kept too")
        sink.flush(WAIT_S)
        sink.commit()
    finally:
        sink.close()
    seen = committed(kafka_bootstrap, topic)
    assert [(r.key, r.value) for r in seen] == [(b"a", b"kept"), (b"c", b"kept too")]
    assert seen[0].headers == [("h", b"1")] and seen[0].timestamp == 1_700_000_000_000


@pytest.mark.kafka
def test_a_newer_producer_with_the_same_id_fences_the_old_one(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-txn-fence")
    old = txn_sink(kafka_bootstrap, topic)
    old.begin()
    old.send(topic, b"old", b"zombie")
    old.flush(WAIT_S)
    new = txn_sink(kafka_bootstrap, topic)  # same group and client id: same transactional id
    try:
        new.begin()
        new.send(topic, b"new", b"alive")
        new.flush(WAIT_S)
        new.commit()
        with pytest.raises(TransportError):
            old.commit()
        old.abort()  # never raises; the old producer is rebuilt at its next begin
    finally:
        new.close()
        old.close()
    assert [(r.key, r.value) for r in committed(kafka_bootstrap, topic)] == [(b"new", b"alive")]


@pytest.mark.kafka
def test_a_dead_letter_the_broker_refuses_fails_once_then_goes_without_its_value(
        kafka_bootstrap) -> None:
    dead = create_topic(kafka_bootstrap, "rdk-txn-dead")  # the broker's ~1 MB default limit
    sink = txn_sink(kafka_bootstrap, "in", f"kafka.dead_letter_topic={dead}")
    value = bytes(range(256)) * (3_000_000 // 256)
    try:
        sink.begin()
        sink.send(dead, b"k", value, [("streamem.reason", b"too_large")])
        with pytest.raises(TransportError):
            sink.flush(WAIT_S)
        sink.abort()
        sink.begin()
        sink.send(dead, b"k", value, [("streamem.reason", b"too_large")])
        sink.flush(WAIT_S)
        sink.commit()
    finally:
        sink.close()
    [record] = committed(kafka_bootstrap, dead)
    assert record.value in (b"", None)
    assert dict(record.headers)[VALUE_DROPPED_HEADER] == str(len(value)).encode()


def test_settings_librdkafka_refuses_are_a_config_error_not_a_retry() -> None:
    bad = {"bootstrap.servers": "127.0.0.1:9", "transactional.id": "t",
           "transaction.timeout.ms": 1000, "socket.timeout.ms": 60_000}
    with pytest.raises(ConfigError, match="socket.timeout.ms"):
        rdkafka.connect(lambda: Producer(bad), what="producer", backoff=Backoff(0.01, 0.02),
                        stop=threading.Event())


@pytest.mark.parametrize("extra", [(), ("delivery.transaction_timeout_s=5",),
                                   ("kafka.request_timeout_ms=300000",
                                    "kafka.delivery_timeout_s=600")])
def test_the_transactional_settings_satisfy_librdkafka(extra: tuple[str, ...]) -> None:
    cfg = load_config(None, ["kafka.client=confluent-kafka",
                             "delivery.guarantee=exactly_once", *extra], environ={})
    conf = confluent.transactional_conf(cfg)
    assert conf["transactional.id"] == f"{cfg.kafka.group_id}.{cfg.kafka.client_id}"
    Producer({**conf, "bootstrap.servers": "127.0.0.1:9"}).flush(0)  # librdkafka accepts them
