"""Checkpoint stores: a file replaced atomically, and a compacted Kafka topic."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka_helpers import produce

from streamem.errors import CheckpointError
from streamem.io.checkpoint import (
    Checkpoint,
    FileCheckpointStore,
    KafkaCheckpointStore,
    load_latest,
)

CKPT = Checkpoint(b"\x00model bytes\xff" * 100, {("points", 0): 12, ("points", 2): 7},
                  n_features=4, written_at=1_700_000_000.5)


def test_round_trip_and_atomic_replace(tmp_path) -> None:
    store = FileCheckpointStore(tmp_path / "sub" / "ckpt.npz")
    assert store.load() is None
    store.save(CKPT)
    newer = Checkpoint(b"newer", {("points", 0): 99}, 4, CKPT.written_at + 1)
    store.save(newer)
    assert store.load() == newer
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["ckpt.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "format"])
def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path, damage) -> None:
    store = FileCheckpointStore(tmp_path / "ckpt.npz")
    store.save(CKPT)
    data = store.path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"\x93NUMPY not a checkpoint"
    else:
        meta = json.loads(str(np.load(io.BytesIO(data))["meta"]))
        if damage == "checksum":
            meta["model_sha256"] = "0" * 64
        else:
            meta["format"] = "something-else"
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)),
                 model=np.frombuffer(CKPT.model, dtype=np.uint8))
        data = buf.getvalue()
    store.path.write_bytes(data)
    with pytest.raises(CheckpointError, match="ckpt.npz is corrupt"):
        store.load()


def test_the_archive_is_a_plain_npz_without_pickles(tmp_path) -> None:
    store = FileCheckpointStore(tmp_path / "ckpt.npz")
    store.save(CKPT)
    assert sorted(zipfile.ZipFile(store.path).namelist()) == ["meta.npy", "model.npy"]
    with np.load(store.path, allow_pickle=False) as archive:
        assert archive["model"].tobytes() == CKPT.model


def test_load_latest_picks_the_newest(tmp_path) -> None:
    old, new = FileCheckpointStore(tmp_path / "a.npz"), FileCheckpointStore(tmp_path / "b.npz")
    old.save(CKPT)
    newer = Checkpoint(b"x", {}, None, CKPT.written_at + 5)
    new.save(newer)
    assert load_latest([old, new]) == newer
    assert load_latest([FileCheckpointStore(tmp_path / "none.npz")]) is None


@pytest.mark.kafka
def test_kafka_store_creates_a_compacted_topic_and_reads_back_the_latest(
        kafka_bootstrap, topic_factory) -> None:
    topic = f"ckpt-{topic_factory('probe')}"
    kwargs = {"bootstrap_servers": [kafka_bootstrap]}
    mine = KafkaCheckpointStore(topic, "group-a", kwargs)
    other = KafkaCheckpointStore(topic, "group-b", kwargs)
    try:
        assert mine.load() is None
        mine.save(CKPT)
        newer = Checkpoint(b"m" * 3_000_000, {("points", 0): 50}, 4, CKPT.written_at + 1)
        mine.save(newer)
        other.save(CKPT)
        assert KafkaCheckpointStore(topic, "group-a", kwargs).load() == newer
        assert KafkaCheckpointStore(topic, "group-b", kwargs).load() == CKPT
    finally:
        mine.close()
        other.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    configs = described["topic"][topic]
    assert configs["cleanup.policy"]["value"] == "compact"
    assert int(configs["max.message.bytes"]["value"]) >= 3_000_000


@pytest.mark.kafka
def test_kafka_store_reports_a_corrupt_value(kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory("ckpt", compacted=True)
    produce(kafka_bootstrap, topic, [b"not a checkpoint"], keys=[b"group-a"])
    store = KafkaCheckpointStore(topic, "group-a", {"bootstrap_servers": [kafka_bootstrap]})
    with pytest.raises(CheckpointError, match=f"topic {topic} is corrupt"):
        store.load()
