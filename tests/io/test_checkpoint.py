"""Checkpoint stores: a file replaced atomically, and a compacted Kafka topic."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

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
from streamem.model import OnlineGMM


def model_bytes(d: int = 4) -> bytes:
    """A real model of ``d`` features (checkpoints check the model they carry)."""
    return OnlineGMM.from_params([1.0], np.zeros((1, d)), np.eye(d)[None]).to_bytes()


ROOT = Path(__file__).resolve().parents[2]
CKPT = Checkpoint(model_bytes(), {("points", 0): 12, ("points", 2): 7},
                  n_features=4, written_at=1_700_000_000.5)


def test_round_trip_and_atomic_replace(tmp_path) -> None:
    store = FileCheckpointStore(tmp_path / "sub" / "ckpt.npz")
    assert store.load() is None
    store.save(CKPT)
    newer = Checkpoint(model_bytes(), {("points", 0): 99}, 4, CKPT.written_at + 1)
    store.save(newer)
    assert store.load() == newer
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["ckpt.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "format", "empty"])
def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path, damage) -> None:
    store = FileCheckpointStore(tmp_path / "ckpt.npz")
    store.save(CKPT)
    data = store.path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
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


def archive(meta: object, model: bytes) -> bytes:
    """A checkpoint archive of any meta record (``to_bytes`` writes only valid ones)."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), model=np.frombuffer(model, dtype=np.uint8))
    return buf.getvalue()


def good_meta(model: bytes = CKPT.model) -> dict:
    return json.loads(str(np.load(io.BytesIO(Checkpoint(
        model, CKPT.offsets, CKPT.n_features, CKPT.written_at).to_bytes()))["meta"]))


META_DAMAGE = {
    "unknown key": (lambda m: m.update(extra=1), "keys"),
    "missing key": (lambda m: m.pop("written_at"), "keys"),
    "nested offsets": (lambda m: m.update(offsets={"points": {"0": 12}}), "offsets"),
    "offset entry nested": (lambda m: m.update(offsets=[["points", 0, {"o": 1}]]), "offset"),
    "negative offset": (lambda m: m.update(offsets=[["points", 0, -1]]), "offset"),
    "float partition": (lambda m: m.update(offsets=[["points", 0.5, 1]]), "offset"),
    "duplicate partition": (lambda m: m.update(offsets=[["t", 0, 1], ["t", 0, 2]]), "twice"),
    "n_features nested": (lambda m: m.update(n_features=[4]), "n_features"),
    "written_at text": (lambda m: m.update(written_at="yesterday"), "written_at"),
    "checksum not hex": (lambda m: m.update(model_sha256=None), "SHA-256"),
    "version": (lambda m: m.update(version=2), "version 2"),
    "not an object": (lambda m: (m.clear(), m.update(format=[FORMAT])), "format"),
}
FORMAT = "streamem-checkpoint"


@pytest.mark.parametrize("damage", META_DAMAGE)
def test_a_hostile_meta_record_is_a_checkpoint_error(damage) -> None:
    meta = good_meta()
    change, match = META_DAMAGE[damage]
    change(meta)
    with pytest.raises(CheckpointError, match=f"corrupt or not a streamem checkpoint.*{match}"):
        Checkpoint.from_bytes(archive(meta, CKPT.model))
    with pytest.raises(CheckpointError, match="corrupt"):
        Checkpoint.from_bytes(archive([meta], CKPT.model))


def test_a_deeply_nested_meta_record_is_a_checkpoint_error() -> None:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array("[" * 100_000), model=np.frombuffer(CKPT.model, np.uint8))
    with pytest.raises(CheckpointError, match="corrupt"):
        Checkpoint.from_bytes(buf.getvalue())


def test_the_model_inside_is_checked_too() -> None:
    with np.load(io.BytesIO(model_bytes())) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(str(arrays.pop("header")))
    header["n_seen_"] = -header["n_seen_"] - 1
    buf = io.BytesIO()
    np.savez(buf, header=np.array(json.dumps(header)), **arrays)
    header_hostile = buf.getvalue()
    for model, match in [(b"garbage", "cannot be loaded"),
                         (header_hostile, "cannot be loaded.*n_seen_"),
                         (model_bytes(5), "has 5 features but the checkpoint says 4")]:
        with pytest.raises(CheckpointError, match=match):
            Checkpoint.from_bytes(archive(good_meta(model), model))
    loaded = Checkpoint.from_bytes(archive(good_meta(), CKPT.model))
    assert loaded == CKPT and loaded.load_model().n_features_in_ == 4


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("meta.npy", zipfile.ZipFile(io.BytesIO(CKPT.to_bytes())).read("meta.npy"))
        head = io.BytesIO()
        n = 330_000_000
        np.lib.format.write_array_header_1_0(
            head, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
        with bomb.open("model.npy", "w", force_zip64=True) as fh:
            fh.write(head.getvalue())
            zeros = bytes(1 << 20)
            for start in range(0, n, len(zeros)):
                fh.write(zeros[: min(len(zeros), n - start)])
    path = tmp_path / "bomb.npz"
    path.write_bytes(out.getvalue())
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="compressed"):
            FileCheckpointStore(path).load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_empty_oversized_and_unreadable_files_are_checkpoint_errors(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        FileCheckpointStore(path).load()
    FileCheckpointStore(path).save(CKPT)
    size = path.stat().st_size
    with pytest.raises(CheckpointError, match=f"too large.*{size:,} bytes"):
        FileCheckpointStore(path, max_bytes=size - 1).load()
    assert FileCheckpointStore(path, max_bytes=size).load() == CKPT
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="cannot read"):
        FileCheckpointStore(path).load()


def test_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    FileCheckpointStore(tmp_path / "ckpt.npz").save(CKPT)
    assert synced == [False, True]


def test_temp_files_are_named_after_the_checkpoint_and_stale_ones_removed(tmp_path) -> None:
    """A write killed (kill -9) between its temp file and the rename leaves an orphan; the
    next store writing that checkpoint deletes it, and only files of its own pattern."""
    path = tmp_path / "ckpt.npz"
    script = (
        "import os, sys, time\n"
        "from streamem.io import files\n"
        "def stall(fd):\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "os.fsync = stall\n"
        f"files.atomic_write({str(path)!r}, b'x' * 100_000)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline() == b"writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    orphans = list(tmp_path.glob(".ckpt.npz.tmp-*"))
    assert len(orphans) == 1 and not path.exists()
    others = [tmp_path / ".other.npz.tmp-1", tmp_path / "ckpt.npz.tmp-1",
              tmp_path / ".ckpt.npz.bak", tmp_path / "ckpt.npz.old"]
    for other in others:
        other.write_bytes(b"keep")
    orphans.append(tmp_path / ".ckpt.npz.k3x_9abz")  # as named by earlier versions
    orphans[-1].write_bytes(b"stale")
    store = FileCheckpointStore(path)
    assert store.load() is None  # reading (inspect does) removes nothing
    assert all(orphan.exists() for orphan in orphans)
    store.save(CKPT)
    assert not any(orphan.exists() for orphan in orphans)
    assert all(other.exists() for other in others)
    assert store.load() == CKPT
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt.npz", *(other.name for other in others)])


def test_the_archive_is_a_plain_npz_without_pickles(tmp_path) -> None:
    store = FileCheckpointStore(tmp_path / "ckpt.npz")
    store.save(CKPT)
    assert sorted(zipfile.ZipFile(store.path).namelist()) == ["meta.npy", "model.npy"]
    with np.load(store.path, allow_pickle=False) as archive:
        assert archive["model"].tobytes() == CKPT.model


def test_load_latest_picks_the_newest(tmp_path) -> None:
    old, new = FileCheckpointStore(tmp_path / "a.npz"), FileCheckpointStore(tmp_path / "b.npz")
    old.save(CKPT)
    newer = Checkpoint(OnlineGMM(2).to_bytes(), {}, None, CKPT.written_at + 5)
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
        newer = Checkpoint(model_bytes(600), {("points", 0): 50}, 600, CKPT.written_at + 1)
        assert len(newer.model) > 5_000_000
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
