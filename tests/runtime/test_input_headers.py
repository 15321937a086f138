"""Input headers as producers send them: null values, and many of them, on the real broker.

Kafka lets a header's value be null. The answer carries the input's headers on, and a null
value crashed the kafka-python daemon at the send (``len(None)``): it restarted onto the same
message for good.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon

from streamem.synthetic import Mixture

MIX = Mixture.random(3, 4, random_state=13)
N_POINTS = 300


@pytest.mark.kafka
def test_null_header_values_and_many_headers_are_answered_and_carried_on(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=1)
    X, _ = MIX.sample(N_POINTS, random_state=1)
    values = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(N_POINTS)]
    headers = [[] for _ in range(N_POINTS)]
    headers[100] = [("trace", None), ("tenant", b"a")]
    headers[200] = [(f"h{j}", None if j % 2 else b"v") for j in range(20_000)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})  # kafka-python's refuses null
    for value, hs in zip(values, headers, strict=True):
        producer.produce(topics["input"], value, headers=hs)
    assert producer.flush(60) == 0
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=3)
    daemon = start_daemon(tmp_path, "headers", settings)
    outputs = Reader(kafka_bootstrap, topics["output"])
    try:
        records = outputs.read_until(lambda rs: len(points_of(rs)) >= N_POINTS)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        outputs.close()
    assert sorted(p["id"] for p in points_of(records)) == list(range(N_POINTS))
    carried = {json.loads(r.value)["id"]: dict(r.headers) for r in records}
    assert carried[100]["trace"] == b"" and carried[100]["tenant"] == b"a"
    assert len([h for h in carried[200] if h.startswith("h")]) == 20_000
    assert carried[200]["h1"] == b"" and carried[200]["h2"] == b"v"
