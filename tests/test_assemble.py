"""The composition root: what it builds from a config, and the Kafka topics it sees to."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from kafka import KafkaAdminClient

from streamem import assemble
from streamem.config import load_config
from streamem.io.base import NO_EVENTS
from streamem.io.checkpoint import FileCheckpointStore, KafkaCheckpointStore


def test_checkpoint_stores_get_the_options_of_the_clients_they_use(tmp_path) -> None:
    cfg = load_config(None, [f"checkpoint.path={tmp_path / 'ckpt.npz'}",
                             "checkpoint.kafka_topic=ckpt",
                             "kafka.consumer_options.fetch_min_bytes=7",
                             "kafka.producer_options.linger_ms=9",
                             "kafka.admin_options.connections_max_idle_ms=1000",
                             "kafka.client_options.retry_backoff_ms=50"], environ={})
    file_store, kafka_store = assemble.checkpoint_stores(cfg)
    assert isinstance(file_store, FileCheckpointStore)
    assert isinstance(kafka_store, KafkaCheckpointStore)
    consumer, producer = kafka_store._consumer_kwargs, kafka_store._producer_kwargs
    admin = kafka_store._admin_kwargs
    assert consumer["fetch_min_bytes"] == 7 and "linger_ms" not in consumer
    assert producer["linger_ms"] == 9 and "fetch_min_bytes" not in producer
    assert admin["connections_max_idle_ms"] == 1000 and "linger_ms" not in admin
    assert consumer["retry_backoff_ms"] == producer["retry_backoff_ms"] == 50


def _kafka_config(bootstrap: str, topic: str, *extra: str):
    return load_config(None, [
        f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id=group-{topic}",
        f"kafka.input_topic={topic}", f"kafka.output_topic={topic}-out",
        f"kafka.dead_letter_topic={topic}-dead", "kafka.model_topic=null",
        "checkpoint.path=null", *extra], environ={})


@pytest.mark.kafka
def test_the_anomaly_topic_exists_from_the_start_with_the_inputs_partitions(
        kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory("assemble-in", partitions=3)
    anomalies = f"{topic}-anomalies"
    cfg = _kafka_config(kafka_bootstrap, topic, f"kafka.anomaly_topic={anomalies}")
    sink = assemble.sink(cfg, "kafka", NO_EVENTS, threading.Event())
    assert sink is not None
    sink.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (described,) = admin.describe_topics([anomalies])
        assert len(described["partitions"]) == 3
        admin.delete_topics([anomalies])
    finally:
        admin.close()


@pytest.mark.kafka
def test_a_missing_input_topic_logs_no_error(kafka_bootstrap, caplog) -> None:
    topic = f"assemble-missing-{uuid.uuid4().hex[:12]}"
    cfg = _kafka_config(kafka_bootstrap, topic)
    caplog.set_level(logging.DEBUG, logger="kafka")
    source = assemble.kafka_source(cfg)
    try:
        for _ in range(10):
            source.poll(0.3)
    finally:
        source.close()
    said = [r for r in caplog.records if r.name == "kafka.cluster" and topic in r.getMessage()]
    assert said, "kafka-python did not mention the missing topic (the check would be vacuous)"
    assert all(r.levelno < logging.ERROR for r in caplog.records), [
        (r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.kafka
def test_a_sharing_instance_names_its_group_for_the_alerts(kafka_bootstrap, topic_factory) -> None:
    """``streamem_shared_model_info{group_id}``: the shared-model alerts join on it, one per
    group; an instance that does not share has none."""
    from prometheus_client import CollectorRegistry

    from streamem.metrics import Metrics

    topic = topic_factory("assemble-share")
    cfg = _kafka_config(kafka_bootstrap, topic)
    metrics = Metrics(CollectorRegistry())
    info = "streamem_shared_model_info"
    sink = assemble.sink(cfg, "kafka", metrics, threading.Event())
    assert sink is not None
    try:
        assert metrics.registry.get_sample_value(info, {"group_id": f"group-{topic}"}) is None
        worker = assemble.sharing(cfg, sink, metrics)
        worker.close()
        assert metrics.registry.get_sample_value(info, {"group_id": f"group-{topic}"}) == 1
    finally:
        sink.close()
