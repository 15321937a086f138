"""Input headers as producers send them: null values, and many of them, on the real broker.

Kafka lets a header's value be null. The answer carries the input's headers on, and a null
value crashed the kafka-python daemon at the send (``len(None)``): it restarted onto the same
message for good.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from daemon_helpers import daemon_settings, make_topics, points_of, run_until

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
    records, _ = run_until(kafka_bootstrap, tmp_path, "headers", settings, points=N_POINTS)
    assert sorted(p["id"] for p in points_of(records)) == list(range(N_POINTS))
    carried = {json.loads(r.value)["id"]: dict(r.headers) for r in records}
    assert carried[100]["trace"] == b"" and carried[100]["tenant"] == b"a"
    assert len([h for h in carried[200] if h.startswith("h")]) == 20_000
    assert carried[200]["h1"] == b"" and carried[200]["h2"] == b"v"


@pytest.mark.kafka
def test_a_message_with_megabytes_of_headers_is_dead_lettered_without_them(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    """Its answer cannot carry its headers (over the output limit) and neither can its dead
    letter (over the dead-letter topic's): the dead letter goes without them, saying how many,
    and the neighbours are answered. Before, the kafka-python daemon retried the batch for good
    (the broker refused the dead letter even without its value)."""
    topics = {"input": topic_factory("points", 1, configs={"max.message.bytes": str(8 << 20)}),
              "output": topic_factory("answers"), "dead": topic_factory("dead")}
    X, _ = MIX.sample(N_POINTS, random_state=2)
    values = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(N_POINTS)]
    heavy = {100: [(f"h{j}", b"v" * 1000) for j in range(2_000)],  # 2 MB of headers
             200: [(f"h{j}", b"w" * 500) for j in range(3_000)]}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 8 << 20})
    for i, value in enumerate(values):
        producer.produce(topics["input"], value, headers=heavy.get(i, []))
    assert producer.flush(60) == 0
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=3)
    answered, letters = run_until(kafka_bootstrap, tmp_path, "heavy", settings,
                                  points=N_POINTS - 2, dead=2)
    assert sorted(a["id"] for a in points_of(answered)) == [i for i in range(N_POINTS)
                                                            if i not in heavy]
    assert sorted(json.loads(letter.value)["id"] for letter in letters) == sorted(heavy)
    for letter in letters:
        headers = dict(letter.headers)
        i = json.loads(letter.value)["id"]
        assert headers["streamem.reason"] == b"too_large", headers
        assert headers["streamem.headers_dropped"] == str(len(heavy[i])).encode()
        assert len(letter.headers) < 20
