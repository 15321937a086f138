"""The confluent-kafka (librdkafka) source and sink against the real broker, and the
Config → librdkafka mapping: keys, headers and timestamps survive the round trip, commits are
explicit, a full local queue is back-pressure, every failed delivery fails the flush, dead letters
of any size arrive (or arrive without their value, counted), and options are checked by name."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

pytest.importorskip("confluent_kafka")  # the rdkafka extra; CI installs it

from kafka import KafkaAdminClient  # noqa: E402
from kafka_helpers import committed_offsets, consume_all, free_port, produce  # noqa: E402

from streamem.clients import confluent  # noqa: E402
from streamem.config import load_config  # noqa: E402
from streamem.errors import ConfigError, TransportError  # noqa: E402
from streamem.io.base import VALUE_DROPPED_HEADER, RecordTooLarge  # noqa: E402
from streamem.io.rdkafka import RdKafkaSink, RdKafkaSource  # noqa: E402

WAIT_S = 60.0  # a deadline against hanging, not a speed assertion


class Events:
    """Counts every event a transport reports."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.up: list[bool] = []

    def kafka_error(self, kind: str) -> None:
        self.counts[f"error:{kind}"] += 1

    def set_kafka_up(self, up: bool) -> None:
        self.up.append(up)

    def reconnect(self) -> None:
        self.counts["reconnect"] += 1

    def rejoin(self) -> None:
        self.counts["rejoin"] += 1

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        self.counts[f"healthy:{healthy}"] += 1

    def dead_letter_value_dropped(self) -> None:
        self.counts["value_dropped"] += 1


def config(bootstrap: str, topic: str, *extra: str):
    return load_config(None, [
        "kafka.client=confluent-kafka", f"kafka.bootstrap_servers={bootstrap}",
        f"kafka.group_id=group-{topic}", f"kafka.input_topic={topic}",
        f"kafka.output_topic={topic}-out", f"kafka.dead_letter_topic={topic}-dead",
        "kafka.session_timeout_ms=6000", "kafka.heartbeat_interval_ms=1000",
        "kafka.delivery_timeout_s=20", "runtime.retry_initial_s=0.2", "runtime.retry_max_s=1",
        *extra], environ={})


def create_topic(bootstrap: str, prefix: str, partitions: int = 1,
                 max_message_bytes: int | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    configs = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                    "configs": configs}}, wait_for_metadata=True)
    finally:
        admin.close()
    return name


def poll_until(source: RdKafkaSource, n: int) -> list:
    records: list = []
    deadline = time.monotonic() + WAIT_S
    while len(records) < n and time.monotonic() < deadline:
        records.extend(source.poll(0.2))
    return records


# -- the mapping ----------------------------------------------------------------------------


def test_every_kafka_key_maps_to_its_librdkafka_name() -> None:
    cfg = load_config(None, [
        "kafka.client=confluent-kafka", "kafka.bootstrap_servers=a:1,b:2", "kafka.client_id=c",
        "kafka.group_id=g", "kafka.auto_offset_reset=latest", "kafka.session_timeout_ms=7000",
        "kafka.heartbeat_interval_ms=700", "kafka.max_poll_interval_ms=70000",
        "kafka.request_timeout_ms=9000", "kafka.delivery_timeout_s=12",
        "kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-256",
        "kafka.sasl_plain_username=u", "kafka.sasl_plain_password=p", "kafka.ssl_cafile=/ca",
        "kafka.ssl_certfile=/cert", "kafka.ssl_keyfile=/key", "kafka.ssl_password=kp",
        "kafka.ssl_check_hostname=false", "runtime.retry_initial_s=0.25",
        "runtime.retry_max_s=4"], environ={})
    consumer, producer = confluent.consumer_conf(cfg), confluent.producer_conf(cfg)
    for conf in (consumer, producer):
        assert conf["bootstrap.servers"] == "a:1,b:2"
        assert conf["client.id"] == "c"
        assert conf["security.protocol"] == "sasl_ssl"
        assert conf["sasl.mechanisms"] == "SCRAM-SHA-256"
        assert (conf["sasl.username"], conf["sasl.password"]) == ("u", "p")
        assert conf["ssl.ca.location"] == "/ca"
        assert conf["ssl.certificate.location"] == "/cert"
        assert conf["ssl.key.location"] == "/key"
        assert conf["ssl.key.password"] == "kp"
        assert conf["ssl.endpoint.identification.algorithm"] == "none"
        assert conf["socket.timeout.ms"] == 9000
        assert (conf["reconnect.backoff.ms"], conf["reconnect.backoff.max.ms"]) == (250, 4000)
        assert (conf["retry.backoff.ms"], conf["retry.backoff.max.ms"]) == (250, 4000)
    assert consumer["group.id"] == "g"
    assert consumer["auto.offset.reset"] == "latest"
    assert (consumer["session.timeout.ms"], consumer["heartbeat.interval.ms"],
            consumer["max.poll.interval.ms"]) == (7000, 700, 70000)
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert producer["delivery.timeout.ms"] == 12000
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    dead = confluent.dead_letter_conf(cfg)
    assert dead["enable.idempotence"] is False
    assert dead["message.max.bytes"] >= 64 * 1024 * 1024


def test_options_go_to_their_client_and_cannot_override_the_commit_contract() -> None:
    cfg = load_config(None, [
        "kafka.client=confluent-kafka", "kafka.client_options.socket.keepalive.enable=true",
        "kafka.consumer_options.fetch.wait.max.ms=50",
        "kafka.consumer_options.enable.auto.commit=true",
        "kafka.producer_options.linger.ms=20", "kafka.producer_options.message.max.bytes=2000000",
    ], environ={})
    consumer, producer = confluent.consumer_conf(cfg), confluent.producer_conf(cfg)
    assert consumer["socket.keepalive.enable"] is True and producer["socket.keepalive.enable"]
    assert consumer["fetch.wait.max.ms"] == 50 and "fetch.wait.max.ms" not in producer
    assert producer["linger.ms"] == 20 and "linger.ms" not in consumer
    assert consumer["enable.auto.commit"] is False
    assert confluent.output_limit(cfg) == 2_000_000


@pytest.mark.parametrize(("override", "key"), [
    ("kafka.client_options.no.such.property=1", "no.such.property"),
    ("kafka.consumer_options.linger_ms=5", "linger_ms"),  # a kafka-python name
    ("kafka.producer_options.linger.ms=soon", "linger.ms"),  # a bad value
    ("kafka.admin_options.retries=1", "admin_options"),  # no admin client with librdkafka
])
def test_a_key_the_chosen_client_does_not_know_is_a_config_error_naming_it(override,
                                                                            key) -> None:
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}"):
        load_config(None, ["kafka.client=confluent-kafka", override], environ={})


def test_librdkafka_names_are_errors_with_kafka_python_and_the_client_is_checked() -> None:
    with pytest.raises(ConfigError, match="fetch.wait.max.ms"):
        load_config(None, ["kafka.consumer_options.fetch.wait.max.ms=5"], environ={})
    with pytest.raises(ConfigError, match="kafka.client"):
        load_config(None, ["kafka.client=librdkafka"], environ={})
    assert load_config(None, [], environ={}).kafka.client == "kafka-python"


# -- the transport, against the broker ------------------------------------------------------


@pytest.mark.kafka
def test_round_trip_keeps_keys_headers_timestamps_and_commits_explicit_offsets(
        kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk", partitions=2)
    cfg = config(kafka_bootstrap, topic)
    events = Events()
    sink = confluent.create_sink(cfg, events)
    before = int(time.time() * 1000)
    stamped = 1_700_000_000_000  # even messages carry an event time, odd ones none
    for i in range(20):
        sink.send(topic, f"k{i % 4}".encode(), f"v{i}".encode(), [("h", str(i).encode())],
                  stamped + i if i % 2 == 0 else None)
    sink.flush(WAIT_S)
    sink.close()
    source = confluent.create_source(cfg, events)
    try:
        records = poll_until(source, 20)
        assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(20))
        for r in records:
            i = r.value[1:]
            assert r.key == f"k{int(i) % 4}".encode()
            assert r.headers == (("h", i),)
            if int(i) % 2 == 0:
                assert r.timestamp_ms == stamped + int(i)
            else:
                assert r.timestamp_ms is not None and r.timestamp_ms >= before - 1000
        by_key = {r.key: r.partition for r in records}
        assert all(r.partition == by_key[r.key] for r in records)
        assert source.assignment() == {(topic, 0), (topic, 1)}
        nxt = {}
        for r in records:
            nxt[(r.topic, r.partition)] = max(nxt.get((r.topic, r.partition), 0), r.offset + 1)
        assert sum(source.lags().values()) == 0
        source.commit(nxt)
        assert committed_offsets(kafka_bootstrap, cfg.kafka.group_id, topic) == {
            p: o for (_, p), o in nxt.items()}
        source.seek_to_committed()
        assert source.poll(1.0) == []  # nothing after the committed offsets
    finally:
        source.close()
    assert events.counts["reconnect"] == 0


@pytest.mark.kafka
def test_uncommitted_records_are_read_again_after_seek_to_committed(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-seek")
    produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(10)])
    source = confluent.create_source(config(kafka_bootstrap, topic), Events())
    try:
        first = poll_until(source, 10)
        source.commit({(topic, 0): 4})
        source.seek_to_committed()
        again = poll_until(source, 6)
        assert [r.offset for r in first] == list(range(10))
        assert [r.offset for r in again] == list(range(4, 10))
    finally:
        source.close()


@pytest.mark.kafka
def test_a_full_local_queue_is_back_pressure_not_loss(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-full")
    cfg = config(kafka_bootstrap, topic, "kafka.producer_options.queue.buffering.max.messages=10")
    sink = confluent.create_sink(cfg, Events())
    try:
        for i in range(500):
            sink.send(topic, None, str(i).encode())
        sink.flush(WAIT_S)
    finally:
        sink.close()
    records = consume_all(kafka_bootstrap, topic, 500)
    assert sorted(int(r.value) for r in records) == list(range(500))


@pytest.mark.kafka
def test_flush_fails_when_any_delivery_fails() -> None:
    topic = f"nowhere-{uuid.uuid4().hex[:8]}"
    cfg = config(f"127.0.0.1:{free_port()}", topic, "kafka.delivery_timeout_s=1",
                 "kafka.request_timeout_ms=600")
    sink = RdKafkaSink(confluent.producer_conf(cfg), confluent.dead_letter_conf(cfg))
    try:
        sink.send(topic, None, b"x")
        with pytest.raises(TransportError, match="1 not acknowledged in time"):
            sink.flush(0.2)
        time.sleep(1.5)
        sink.flush(1)  # the late report belongs to the batch that already failed
        sink.send(topic, None, b"y")
        with pytest.raises(TransportError, match="1 of 1 sends failed"):
            sink.flush(10)  # the delivery timed out
    finally:
        sink.close()


@pytest.mark.kafka
def test_an_output_over_the_limit_is_record_too_large(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-limit")
    sink = confluent.create_sink(config(kafka_bootstrap, topic), Events())
    try:
        with pytest.raises(RecordTooLarge):
            sink.send(topic, None, b"x" * 2_000_000)
    finally:
        sink.close()


@pytest.mark.kafka
def test_dead_letters_of_any_size_arrive_or_arrive_without_their_value(kafka_bootstrap) -> None:
    big_topic = create_topic(kafka_bootstrap, "rdk-dead-big", max_message_bytes=8 * 1024 * 1024)
    small_topic = create_topic(kafka_bootstrap, "rdk-dead-small")  # the broker's ~1 MB default
    value = bytes(range(256)) * (5_000_000 // 256)
    events = Events()
    sinks = []
    for topic in (big_topic, small_topic):
        cfg = config(kafka_bootstrap, "in", f"kafka.dead_letter_topic={topic}")
        sink = confluent.create_sink(cfg, events)
        sinks.append(sink)
        sink.send(topic, b"the-key", value, [("streamem.reason", b"bad_json")])
        sink.flush(WAIT_S)
    for sink in sinks:
        sink.close()
    [kept] = consume_all(kafka_bootstrap, big_topic, 1)
    assert kept.key == b"the-key" and kept.value == value
    assert VALUE_DROPPED_HEADER not in dict(kept.headers)
    [dropped] = consume_all(kafka_bootstrap, small_topic, 1)
    assert dropped.key == b"the-key" and dropped.value in (b"", None)
    assert dict(dropped.headers) == {"streamem.reason": b"bad_json",
                                     VALUE_DROPPED_HEADER: str(len(value)).encode()}
    assert events.counts["value_dropped"] == 1


@pytest.mark.kafka
def test_a_second_member_takes_partitions_and_the_first_tracks_the_revocation(
        kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-group", partitions=2)
    produce(kafka_bootstrap, topic, [b"a", b"b"], partition=0)
    cfg = config(kafka_bootstrap, topic)
    a = confluent.create_source(cfg, Events())
    b = None
    try:
        poll_until(a, 2)
        assert a.assignment() == {(topic, 0), (topic, 1)}
        held_at_revoke: list[set] = []  # the runtime commits its batch in flight there
        a.before_revoke = lambda: held_at_revoke.append(a.assignment())
        b = confluent.create_source(cfg, Events())
        deadline = time.monotonic() + WAIT_S
        while (len(a.assignment()) != 1 or len(b.assignment()) != 1) \
                and time.monotonic() < deadline:
            a.poll(0.1)
            b.poll(0.1)
        assert a.assignment() | b.assignment() == {(topic, 0), (topic, 1)}
        assert not a.assignment() & b.assignment()
        assert held_at_revoke and held_at_revoke[0] == {(topic, 0), (topic, 1)}, \
            "before_revoke runs inside the poll while the partitions are still held"
    finally:
        a.close()
        if b is not None:
            b.close()


def test_no_broker_is_reported_as_down_within_seconds() -> None:
    topic = f"nowhere-{uuid.uuid4().hex[:8]}"
    cfg = config(f"127.0.0.1:{free_port()}", topic)
    events = Events()
    source = RdKafkaSource(confluent.consumer_conf(cfg), [topic], events=events)
    try:
        deadline = time.monotonic() + 10
        while False not in events.up and time.monotonic() < deadline:
            source.poll(0.2)
        assert events.up == [False]
        assert events.counts["error:connect"] >= 2
    finally:
        source.close()


def stats(broker_state: str, group_state: str = "up", join_state: str = "steady",
          partitions: tuple[int, ...] = (0, 1)) -> dict:
    """The parts of librdkafka's statistics the health checks read."""
    return {"brokers": {"b:1/1": {"nodeid": 1, "source": "learned", "state": broker_state},
                        ":0/internal": {"nodeid": -1, "source": "internal", "state": "UP"}},
            "cgrp": {"state": group_state, "join_state": join_state},
            "topics": {"t": {"partitions": {str(p): {} for p in (-1, *partitions)}}}}


def test_health_checks_read_the_statistics_down_up_and_rejoin() -> None:
    cfg = config(f"127.0.0.1:{free_port()}", "t")
    events = Events()
    source = RdKafkaSource(confluent.consumer_conf(cfg), ["t"], events=events,
                           rejoin_after_s=5)
    try:
        source._check(stats("DOWN"), 0.0)
        assert events.up == []  # one failed check may catch a reconnect
        source._check(stats("CONNECT", "query-coord"), 1.0)
        assert events.up == [False] and events.counts["error:connect"] == 2
        source._check(stats("UP", "wait-coord"), 2.0)
        assert events.counts["error:coordinator"] == 1 and events.up == [False]
        source._check(stats("UP"), 3.0)
        assert events.up == [False, True] and events.counts["reconnect"] == 1
        # steady without partitions (more members than partitions): no re-join
        for t in range(4, 20):
            source._check(stats("UP"), float(t))
        # not steady and no partitions for 5 s: re-join at the next poll
        source._check(stats("UP", join_state="wait-join"), 20.0)
        source._check(stats("UP", join_state="wait-join"), 24.0)
        assert events.counts["rejoin"] == 0
        source._check(stats("UP", join_state="wait-join"), 25.5)
        source.poll(0.01)
        assert events.counts["rejoin"] == 1 and source.rejoins == 1
        # a topic without partitions is no reason to re-join
        for t in (30.0, 40.0, 50.0):
            source._check(stats("UP", join_state="wait-join", partitions=()), t)
        source.poll(0.01)
        assert events.counts["rejoin"] == 1
    finally:
        source.close()


@pytest.mark.kafka
def test_send_many_queues_a_batch_and_names_the_messages_too_large(kafka_bootstrap) -> None:
    topic = create_topic(kafka_bootstrap, "rdk-many")
    sink = confluent.create_sink(config(kafka_bootstrap, topic), Events())
    shared = [("streamem.model_version", b"7")]
    messages = [(str(i).encode(), b"v%d" % i, shared if i % 2 else [("h", b"%d" % i)],
                 1_700_000_000_000 + i) for i in range(300)]
    messages[10] = (b"10", b"x" * 2_000_000, shared, None)
    messages[11] = (b"11", b"y", [("big", b"z" * 2_000_000)], None)  # its headers make it large
    try:
        too_large = sink.send_many(topic, iter(messages))
        sink.flush(WAIT_S)
    finally:
        sink.close()
    assert [i for i, _ in too_large] == [10, 11]
    assert "2000025-byte message" in too_large[0][1]  # value, key and shared headers
    records = {r.key: r for r in consume_all(kafka_bootstrap, topic, 298)}
    assert sorted(records) == sorted(key for key, *_ in messages if key not in (b"10", b"11"))
    for key, value, headers, stamp in messages[12:]:
        r = records[key]
        assert (r.value, r.headers, r.timestamp) == (value, [(n, v) for n, v in headers], stamp)
