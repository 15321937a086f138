"""Checkpoints: the model's bytes together with the offsets they reflect, saved atomically.

A checkpoint is one ``.npz`` archive holding two arrays: ``model`` (the bytes of
``OnlineGMM.to_bytes()`` as uint8) and ``meta`` (a JSON string: format name and version, the
offsets per ``(topic, partition)``, ``n_features``, the write time and a SHA-256 of the model
bytes). :class:`FileCheckpointStore` keeps it in a file; :class:`KafkaCheckpointStore` in a
compacted topic keyed by the consumer group, for pods without a disk.

>>> ckpt = Checkpoint(b"model", {("points", 0): 42}, n_features=3, written_at=1.0)
>>> Checkpoint.from_bytes(ckpt.to_bytes()) == ckpt
True
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamem.errors import CheckpointError, TransportError

FORMAT = "streamem-checkpoint"
VERSION = 1
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024  #: the Kafka store's topic and producer allow this much


@dataclass(frozen=True)
class Checkpoint:
    """The model bytes and the next offset per ``(topic, partition)`` they reflect."""

    model: bytes
    offsets: Mapping[tuple[str, int], int]
    n_features: int | None
    written_at: float  # epoch seconds

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "offsets": [[t, p, o] for (t, p), o in sorted(self.offsets.items())],
            "n_features": self.n_features,
            "written_at": self.written_at,
            "model_sha256": hashlib.sha256(self.model).hexdigest(),
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)),
                 model=np.frombuffer(self.model, dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "checkpoint") -> Checkpoint:
        """Parse :meth:`to_bytes` output; anything else raises :class:`CheckpointError`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                model = archive["model"].tobytes()
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise ValueError(f"version {meta.get('version')!r} is not supported ({VERSION})")
            if hashlib.sha256(model).hexdigest() != meta["model_sha256"]:
                raise ValueError("the model bytes do not match their checksum")
            offsets = {(str(t), int(p)): int(o) for t, p, o in meta["offsets"]}
            return cls(model, offsets, meta["n_features"], float(meta["written_at"]))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(
                f"{where} is corrupt or not a streamem checkpoint ({exc}); delete it or start "
                "with --ignore-checkpoint to begin from a fresh model") from exc


class CheckpointStore(Protocol):
    """Somewhere to keep the latest checkpoint."""

    name: str

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the stored checkpoint; raises :class:`CheckpointError` on failure."""
        ...

    def load(self) -> Checkpoint | None:
        """The stored checkpoint, None if there is none; a corrupt one is a CheckpointError."""
        ...

    def close(self) -> None: ...


class FileCheckpointStore:
    """A checkpoint file, replaced atomically (temp file in the same folder, fsync, rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def save(self, checkpoint: Checkpoint) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(checkpoint.to_bytes())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc

    def load(self) -> Checkpoint | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        return Checkpoint.from_bytes(data, f"checkpoint file {self.path}")

    def close(self) -> None:
        pass


class KafkaCheckpointStore:
    """The latest checkpoint as the value of key ``key`` in a compacted, one-partition topic.

    The topic is created (``cleanup.policy=compact``, ``max.message.bytes`` =
    :data:`MAX_CHECKPOINT_BYTES`) when absent. ``client_kwargs`` are kafka-python connection
    settings (``Config.kafka.client_kwargs()``).
    """

    def __init__(self, topic: str, key: str, client_kwargs: Mapping[str, Any],
                 timeout_s: float = 30.0) -> None:
        self.topic = topic
        self.key = key.encode()
        self.name = f"kafka:{topic}"
        self._kwargs = dict(client_kwargs)
        self._timeout_s = timeout_s
        self._producer: Any = None

    def ensure_topic(self) -> None:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(**self._kwargs)
        try:
            if self.topic in admin.list_topics():
                return
            spec = {"num_partitions": 1, "replication_factor": -1, "configs": {
                "cleanup.policy": "compact", "max.message.bytes": str(MAX_CHECKPOINT_BYTES)}}
            admin.create_topics({self.topic: spec}, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def save(self, checkpoint: Checkpoint) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            if self._producer is None:
                self.ensure_topic()
                self._producer = KafkaProducer(**self._kwargs, acks="all",
                                               max_request_size=MAX_CHECKPOINT_BYTES)
            future = self._producer.send(self.topic, key=self.key, value=checkpoint.to_bytes())
            future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise CheckpointError(f"cannot write checkpoint to topic {self.topic}: {exc}") from exc

    def load(self) -> Checkpoint | None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        try:
            self.ensure_topic()
            consumer = KafkaConsumer(**self._kwargs, group_id=None, enable_auto_commit=False,
                                     fetch_max_bytes=MAX_CHECKPOINT_BYTES,
                                     max_partition_fetch_bytes=MAX_CHECKPOINT_BYTES)
        except KafkaError as exc:
            raise TransportError(f"cannot read checkpoint topic {self.topic}: {exc}") from exc
        try:
            tps = [TopicPartition(self.topic, p)
                   for p in consumer.partitions_for_topic(self.topic) or ()]
            latest = _latest_value(consumer, tps, self.key, self._timeout_s)
        except KafkaError as exc:
            raise TransportError(f"cannot read checkpoint topic {self.topic}: {exc}") from exc
        finally:
            consumer.close()
        if latest is None:
            return None
        return Checkpoint.from_bytes(latest, f"checkpoint in topic {self.topic}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


def _latest_value(consumer: Any, tps: list[Any], key: bytes, timeout_s: float) -> bytes | None:
    """Read ``tps`` from the beginning to their current end; the last value stored at ``key``."""
    if not tps:
        return None
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    latest = None
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < end[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise CheckpointError(f"timed out reading checkpoint topic {tps[0].topic}")
        for records in consumer.poll(timeout_ms=500).values():
            for rec in records:
                if rec.key == key:
                    latest = rec.value
    return latest


def load_latest(stores: Iterable[CheckpointStore]) -> Checkpoint | None:
    """The newest checkpoint among ``stores`` (by write time); None when none holds one."""
    found = [c for c in (store.load() for store in stores) if c is not None]
    return max(found, key=lambda c: c.written_at, default=None)
