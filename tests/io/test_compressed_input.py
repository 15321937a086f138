"""Input in compressed record batches: answered in full, or the daemon stops with the remedy.

A batch is compressed by its producer or by the broker, for a topic whose ``compression.type``
names a codec (here the topic's: the broker recompresses what it is sent). kafka-python reads
snappy, lz4 and zstd only with their libraries (the ``codecs`` extra); librdkafka has them built
in. Without the library, kafka-python's consumer spins on the batch at full CPU, deaf to
SIGTERM, so the daemon stops at it instead (exit code 2), committing nothing past it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daemon_helpers import WAIT_S, Daemon, daemon_settings, points_of, run_until, start_daemon
from kafka import KafkaProducer
from kafka_helpers import committed_offsets, produce

from streamem.synthetic import Mixture

MIX = Mixture.random(3, 4, random_state=11)
N_POINTS = 600
BOMB_MIB = 160


def compressed_input(bootstrap: str, topic_factory, codec: str) -> dict[str, str]:
    """Topics whose input holds ``N_POINTS`` single-point messages in ``codec`` batches."""
    topics = {"input": topic_factory("points", 2, configs={"compression.type": codec}),
              "output": topic_factory("answers"), "dead": topic_factory("dead")}
    X, _ = MIX.sample(N_POINTS, random_state=3)
    produce(bootstrap, topics["input"],
            [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(N_POINTS)])
    return topics


def answer_all(bootstrap: str, tmp_path: Path, name: str, settings: dict) -> list[dict]:
    """Run a daemon until every point is answered, stop it cleanly, and return the answers."""
    return points_of(run_until(bootstrap, tmp_path, name, settings, points=N_POINTS)[0])


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_point_of_a_compressed_topic_is_answered_once(
        kafka_bootstrap, topic_factory, tmp_path, kafka_client, codec) -> None:
    topics = compressed_input(kafka_bootstrap, topic_factory, codec)
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=3)
    answers = answer_all(kafka_bootstrap, tmp_path, codec, settings)
    assert sorted(a["id"] for a in answers) == list(range(N_POINTS))


def test_without_the_codec_library_the_daemon_stops_with_the_remedy_and_loses_nothing(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    topics = compressed_input(kafka_bootstrap, topic_factory, "zstd")
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, kafka__client="kafka-python",
                               model__n_components=3)
    hidden = tmp_path / "without-zstd"  # kafka-python imports zstandard in a try/except
    hidden.mkdir()
    (hidden / "zstandard.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    daemon = start_daemon(tmp_path, "without", settings, env={"PYTHONPATH": path})
    try:
        code = daemon.proc.wait(WAIT_S)  # before the fix it spun at full CPU, never exiting
    finally:
        daemon.proc.kill()
    assert code == 2, daemon.log_tail()
    [warned] = daemon.events("kafka_codecs_missing")
    assert "zstd" in warned["codecs"] and "streamem[codecs]" in warned["remedy"]
    [stopped] = daemon.events("cannot_continue")
    assert "streamem[codecs]" in stopped["error"] and "zstd" in stopped["error"].lower()
    assert not any(committed_offsets(kafka_bootstrap, settings["kafka.group_id"],
                                     topics["input"]).values())

    answers = answer_all(kafka_bootstrap, tmp_path, "with", settings)  # the library is back
    assert sorted(a["id"] for a in answers) == list(range(N_POINTS))


def test_a_compression_bomb_is_dead_lettered_and_its_neighbours_answered(
        kafka_bootstrap, topic_factory, tmp_path, kafka_client) -> None:
    """A 160 MiB message that zstd packs into a few KB: the broker takes it (it checks the
    compressed size). Neither client decompresses it past the bound (a fetch's size): before,
    librdkafka refused it but fetched it again forever, stalling the partition, and kafka-python
    claimed ~650 MB for it."""
    topics = {"input": topic_factory("points"), "output": topic_factory("answers"),
              "dead": topic_factory("dead")}
    X, _ = MIX.sample(N_POINTS, random_state=4)
    points = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(N_POINTS)]
    bomb = b'{"id": "bomb", "x": [' + b" " * (BOMB_MIB << 20) + b"1, 2, 3, 4]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="zstd",
                             max_request_size=len(bomb) + (1 << 20))
    try:
        for value in points[:N_POINTS // 2]:
            producer.send(topics["input"], value)
        bomb_at = producer.send(topics["input"], bomb).get(timeout=60).offset
        for value in points[N_POINTS // 2:]:
            producer.send(topics["input"], value)
        producer.flush()
    finally:
        producer.close()
    del bomb
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=3)
    peak: list[int] = []
    answered, [letter] = run_until(kafka_bootstrap, tmp_path, "bomb", settings, points=N_POINTS,
                                   dead=1, before_stop=lambda d: peak.append(peak_memory_mib(d)))
    assert sorted(a["id"] for a in points_of(answered)) == list(range(N_POINTS))
    headers = dict(letter.headers)
    assert int(headers["streamem.source.offset"]) == bomb_at
    assert headers["streamem.reason"].decode() == "unreadable", headers
    assert peak[0] < BOMB_MIB * 2, f"the daemon's peak memory: {peak[0]} MiB"


def peak_memory_mib(daemon: Daemon) -> int:
    """A running daemon's peak resident memory (Linux's VmHWM), in MiB."""
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_a_corrupt_record_on_the_brokers_disk_is_dead_lettered_and_its_neighbours_answered(
        kafka_broker, kafka_bootstrap, topic_factory, tmp_path, kafka_client) -> None:
    """Bit rot in a log segment: the broker serves it as it is and the checksum fails. The
    kafka-python consumer used to spin on the batch for good (deaf to SIGTERM); librdkafka
    answered the corrupt record (it checked no checksum), and once checking, fetched it again
    and again."""
    if kafka_broker.external:
        pytest.skip("corrupts a log segment: needs the private broker's files")
    topics = {"input": topic_factory("points"), "output": topic_factory("answers"),
              "dead": topic_factory("dead")}
    X, _ = MIX.sample(N_POINTS, random_state=5)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:  # one batch per message: the corruption stays with one message
        offsets = [producer.send(topics["input"], json.dumps({"id": i, "x": X[i].tolist()})
                                 .encode()).get(timeout=30).offset for i in range(N_POINTS)]
    finally:
        producer.close()
    [segment] = kafka_broker.data_dir.glob(f"**/{topics['input']}-0/*.log")
    data = bytearray(segment.read_bytes())
    at = data.index(b'{"id": 300, "x": [') + len(b'{"id": 300, "x": [')
    data[at] = ord("7") if data[at] != ord("7") else ord("8")  # still valid JSON, other bytes
    segment.write_bytes(bytes(data))
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, model__n_components=3)
    answered, [letter] = run_until(kafka_bootstrap, tmp_path, "corrupt", settings,
                                   points=N_POINTS - 1, dead=1)
    assert sorted(a["id"] for a in points_of(answered)) == [i for i in range(N_POINTS) if i != 300]
    headers = dict(letter.headers)
    assert headers["streamem.reason"] == b"unreadable", headers
    assert int(headers["streamem.source.offset"]) == offsets[300]
    assert b"crc" in headers["streamem.detail"].lower()
