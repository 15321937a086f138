"""Dead letters at any size, through the real broker: a 5 MB message reaches the dead-letter topic
with its original bytes; where the broker refuses that size, it arrives without its value, with
its key, its headers and ``streamem.value_dropped``. Per-client kafka-python options are passed
to their client and checked by name."""

from __future__ import annotations

import threading
import uuid

import pytest
from kafka_helpers import consume_all
from prometheus_client import CollectorRegistry

from streamem import assemble
from streamem.clients.kafka_python import consumer_settings, producer_settings
from streamem.config import Config, load_config
from streamem.errors import ConfigError
from streamem.io.kafka_admin import create_topics
from streamem.metrics import Metrics
from streamem.runtime import Runtime, restore_model

BIG = 5 * 1000 * 1000
TOPIC_LIMIT = 8 * 1024 * 1024


def create_topic(bootstrap: str, prefix: str, max_message_bytes: int | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    configs = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
    create_topics({"bootstrap_servers": bootstrap}, [name], replication_factor=1,
                  configs=configs)
    return name


def daemon_config(bootstrap: str, inp: str, dead: str, *extra: str) -> Config:
    return load_config(None, [
        f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id=group-{inp}",
        f"kafka.input_topic={inp}", f"kafka.output_topic={inp}-out",
        f"kafka.dead_letter_topic={dead}", "kafka.model_topic=null",
        "kafka.session_timeout_ms=6000", "kafka.heartbeat_interval_ms=1000",
        "checkpoint.path=null", "model.n_components=2", "model.random_state=0", *extra,
    ], environ={})


def run_until(cfg: Config, metrics: Metrics, done: threading.Event) -> None:
    source, sink = assemble.kafka_source(cfg, metrics), assemble.kafka_sink(cfg, metrics)
    model, _ = restore_model(cfg, [])
    runtime = Runtime(cfg, source, sink, model, metrics, stop=done)
    runtime.run()


def dead_letter_of(bootstrap: str, cfg: Config, value: bytes, metrics: Metrics):
    """Produce ``value`` (over input.max_bytes: a too_large dead letter); its dead letter."""
    _produce_big(bootstrap, cfg.kafka.input_topic, value)
    done = threading.Event()
    thread = threading.Thread(target=run_until, args=(cfg, metrics, done), daemon=True)
    thread.start()
    try:
        records = consume_all(bootstrap, cfg.kafka.dead_letter_topic, 1, timeout_s=60)
    finally:
        done.set()
        thread.join(60)
    assert len(records) == 1
    return records[0]


def _produce_big(bootstrap: str, topic: str, value: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=TOPIC_LIMIT)
    try:
        producer.send(topic, value=value, key=b"the-key",
                      headers=[("origin", b"test")]).get(timeout=60)
    finally:
        producer.close(timeout=10)


def big_value() -> bytes:
    return b"{" + bytes(range(256)) * (BIG // 256) + b"not json"


@pytest.mark.kafka
def test_a_5mb_message_reaches_the_dead_letters_with_its_original_bytes(kafka_bootstrap) -> None:
    inp = create_topic(kafka_bootstrap, "big-in", TOPIC_LIMIT)
    dead = create_topic(kafka_bootstrap, "big-dead", TOPIC_LIMIT)
    # Per-client options reach their client (a consumer-only and a producer-only key).
    cfg = daemon_config(kafka_bootstrap, inp, dead, "kafka.consumer_options.fetch_min_bytes=1",
                        "kafka.producer_options.linger_ms=2")
    value, metrics = big_value(), Metrics(CollectorRegistry())
    record = dead_letter_of(kafka_bootstrap, cfg, value, metrics)
    assert record.key == b"the-key"
    assert record.value == value
    headers = dict(record.headers)
    assert headers["streamem.reason"] == b"too_large"
    assert "streamem.value_dropped" not in headers
    assert metrics.registry.get_sample_value("streamem_dead_letter_values_dropped_total") == 0


@pytest.mark.kafka
def test_a_dead_letter_the_broker_refuses_keeps_key_and_headers_without_its_value(
        kafka_bootstrap) -> None:
    inp = create_topic(kafka_bootstrap, "big-in", TOPIC_LIMIT)
    dead = create_topic(kafka_bootstrap, "small-dead")  # the broker's default: about 1 MB
    cfg = daemon_config(kafka_bootstrap, inp, dead)
    value, metrics = big_value(), Metrics(CollectorRegistry())
    record = dead_letter_of(kafka_bootstrap, cfg, value, metrics)
    assert record.key == b"the-key"
    assert record.value in (b"", None)
    headers = dict(record.headers)
    assert headers["streamem.reason"] == b"too_large"
    assert headers["streamem.value_dropped"] == str(len(value)).encode()
    assert headers["streamem.source.topic"] == inp.encode()
    assert metrics.registry.get_sample_value("streamem_dead_letter_values_dropped_total") == 1
    assert metrics.registry.get_sample_value(
        "streamem_dead_letter_messages_total", {"reason": "too_large"}) == 1


def test_per_client_options_go_to_their_client_only() -> None:
    cfg = load_config(None, ["kafka.consumer_options.fetch_min_bytes=7",
                             "kafka.producer_options.max_request_size=2000000",
                             "kafka.client_options.linger_ms=9",
                             "kafka.client_options.retry_backoff_ms=50"], environ={})
    consumer, producer = consumer_settings(cfg), producer_settings(cfg)
    assert consumer["fetch_min_bytes"] == 7 and "fetch_min_bytes" not in producer
    assert "linger_ms" not in consumer and producer["linger_ms"] == 9
    assert consumer["retry_backoff_ms"] == producer["retry_backoff_ms"] == 50
    assert "linger_ms" not in cfg.kafka.client_kwargs()  # e.g. for the checkpoint store
    assert producer["max_request_size"] > 64 * 1024 * 1024, "dead letters of any read message"


def test_reconnect_back_off_follows_the_runtime_settings() -> None:
    cfg = load_config(None, ["runtime.retry_initial_s=0.25", "runtime.retry_max_s=4"],
                      environ={})
    for settings in (consumer_settings(cfg), producer_settings(cfg)):
        assert settings["reconnect_backoff_ms"] == 250
        assert settings["reconnect_backoff_max_ms"] == 4000
        assert settings["retry_backoff_ms"] == 250


@pytest.mark.parametrize(("override", "key"), [
    ("kafka.consumer_options.max_request_size=1", "max_request_size"),
    ("kafka.producer_options.fetch_min_bytes=1", "fetch_min_bytes"),
    ("kafka.admin_options.linger_ms=1", "linger_ms"),
    ("kafka.client_options.no_such_option=1", "no_such_option"),
])
def test_an_option_its_client_does_not_accept_is_a_config_error_naming_it(override, key) -> None:
    section = override.split("=")[0].rsplit(".", 1)[0]
    with pytest.raises(ConfigError, match=rf"{section}.*'{key}'"):
        load_config(None, [override], environ={})
