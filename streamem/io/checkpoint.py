"""Checkpoints: the model's bytes together with the offsets they reflect, saved atomically.

A checkpoint is one ``.npz`` archive holding two arrays: ``model`` (the bytes of
``OnlineGMM.to_bytes()`` as uint8) and ``meta`` (a flat JSON object: format name and version,
the offsets per ``(topic, partition)``, ``n_features``, the write time and a SHA-256 of the
model bytes). Reading one checks all of it, sizes first (see :mod:`streamem.model.npz`): a
damaged or hostile checkpoint is a :class:`~streamem.errors.CheckpointError`, never a model
that then fails on every batch. :class:`FileCheckpointStore` keeps it in a file;
:class:`KafkaCheckpointStore` in a compacted topic keyed by the consumer group, for pods
without a disk.

>>> from streamem.model import OnlineGMM
>>> ckpt = Checkpoint(OnlineGMM(2).to_bytes(), {("points", 0): 42}, None, written_at=1.0)
>>> Checkpoint.from_bytes(ckpt.to_bytes()) == ckpt
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamem.errors import CheckpointError, TransportError
from streamem.io.files import atomic_write, read_bounded, remove_stale_temp_files
from streamem.model import npz

FORMAT = "streamem-checkpoint"
VERSION = 1
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024  #: the Kafka store's topic and producer allow this much
MAX_FILE_BYTES = 1 << 30  #: a checkpoint file larger than this is refused unread (1 GiB)
MAX_META_BYTES = 16 * 1024 * 1024  #: the meta JSON (offsets of ~100 000 partitions fit)
_META_KEYS = {"format", "version", "offsets", "n_features", "written_at", "model_sha256"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = "delete it or start with --ignore-checkpoint to begin from a fresh model"

log = logging.getLogger(__name__)


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
        return npz.dumps({"meta": np.array(json.dumps(meta)),
                          "model": np.frombuffer(self.model, dtype=np.uint8)})

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "checkpoint", *,
                   check_model: bool = True) -> Checkpoint:
        """Parse and check :meth:`to_bytes` output; anything else raises :class:`CheckpointError`.

        With ``check_model`` the model inside is checked too (:meth:`load_model`), so a
        checkpoint that loads can also learn.
        """
        try:
            if not data:
                raise ValueError("it is empty")
            archive = npz.Archive(data, allowed=("meta", "model"))
            meta = json.loads(str(archive.array("meta", MAX_META_BYTES, ("U",))),
                              parse_constant=_no_constant)
            model = archive.array("model", len(data), ("|u1",)).tobytes()
            ckpt = cls(model, *_check_meta(meta, model))
        except (ValueError, TypeError, RecursionError) as exc:
            raise CheckpointError(f"{where} is corrupt or not a streamem checkpoint ({exc}); "
                                  f"{_FIX}") from None
        if check_model:
            ckpt.load_model(where)
        return ckpt

    def load_model(self, where: str = "checkpoint") -> Any:
        """The ``OnlineGMM`` inside; :class:`CheckpointError` when it is invalid.

        ``OnlineGMM.from_bytes`` checks every array's dtype, shape and finiteness, positive
        definite covariances and valid hyperparameters; here the model must also have the
        checkpoint's ``n_features``.
        """
        from streamem.model import OnlineGMM

        try:
            model = OnlineGMM.from_bytes(self.model)
        except ValueError as exc:
            raise CheckpointError(f"the model in {where} cannot be loaded ({exc}); "
                                  f"{_FIX}") from None
        d = getattr(model, "n_features_in_", None)  # absent until the model has seen points
        if d != self.n_features:
            raise CheckpointError(f"the model in {where} has {d} features "
                                  f"but the checkpoint says {self.n_features}; {_FIX}")
        return model


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _check_meta(meta: Any, model: bytes) -> tuple[dict[tuple[str, int], int], int | None, float]:
    """Offsets, n_features and written_at of a checked meta record (flat, known keys only)."""
    if not isinstance(meta, dict):
        raise ValueError("the meta record is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"format is {_short(meta.get('format'))}, not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"version {_short(meta.get('version'))} is not supported ({VERSION})")
    if set(meta) != _META_KEYS:
        raise ValueError(f"the meta record's keys are {sorted(map(str, meta))[:10]}, expected "
                         f"{sorted(_META_KEYS)}")
    digest = meta["model_sha256"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError("model_sha256 is not a SHA-256 hex digest")
    if hashlib.sha256(model).hexdigest() != digest:
        raise ValueError("the model bytes do not match their checksum")
    raw_offsets = meta["offsets"]
    if not isinstance(raw_offsets, list):
        raise ValueError("offsets is not a list")
    offsets: dict[tuple[str, int], int] = {}
    for entry in raw_offsets:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and entry[0] and all(type(v) is int and v >= 0 for v in entry[1:])):
            raise ValueError(f"offset entry {_short(entry)} is not [topic, partition >= 0, "
                             "offset >= 0]")
        if (entry[0], entry[1]) in offsets:
            raise ValueError(f"offsets name {entry[0]}[{entry[1]}] twice")
        offsets[(entry[0], entry[1])] = entry[2]
    n_features = meta["n_features"]
    if n_features is not None and (type(n_features) is not int or n_features < 1):
        raise ValueError(f"n_features is {_short(n_features)}, not an integer >= 1 or null")
    written_at = meta["written_at"]
    if type(written_at) not in (int, float) or not math.isfinite(written_at) or written_at < 0:
        raise ValueError(f"written_at is {_short(written_at)}, not a time in epoch seconds")
    return offsets, n_features, float(written_at)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    """A checkpoint file, replaced atomically (:func:`streamem.io.files.atomic_write`).

    Before its first write the store deletes temp files a killed write left next to the file
    (``.<name>.tmp-*``, only those). A file over ``max_bytes`` is refused without being read.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.max_bytes = max_bytes
        self._cleaned = False

    def save(self, checkpoint: Checkpoint) -> None:
        try:
            if not self._cleaned:
                removed = remove_stale_temp_files(self.path)
                self._cleaned = True
                if removed:
                    log.warning("stale_temp_files_removed",
                                extra={"files": ",".join(p.name for p in removed)})
            atomic_write(self.path, checkpoint.to_bytes())
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc

    def load(self) -> Checkpoint | None:
        where = f"checkpoint file {self.path}"
        try:
            data = read_bounded(self.path, self.max_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        except ValueError as exc:
            raise CheckpointError(f"{where} is too large ({exc}); {_FIX}") from None
        return Checkpoint.from_bytes(data, where)

    def close(self) -> None:
        pass


class KafkaCheckpointStore:
    """The latest checkpoint as the value of key ``key`` in a compacted, one-partition topic.

    The topic is created (``cleanup.policy=compact``, ``max.message.bytes`` =
    :data:`MAX_CHECKPOINT_BYTES`) when absent. ``client_kwargs`` are kafka-python connection
    settings every client accepts; ``consumer_kwargs``, ``producer_kwargs`` and ``admin_kwargs``
    (each client's own options, :mod:`streamem.clients.kafka_python`) replace them per client.
    """

    def __init__(self, topic: str, key: str, client_kwargs: Mapping[str, Any],
                 timeout_s: float = 30.0, *, consumer_kwargs: Mapping[str, Any] | None = None,
                 producer_kwargs: Mapping[str, Any] | None = None,
                 admin_kwargs: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self.key = key.encode()
        self.name = f"kafka:{topic}"
        self._consumer_kwargs = dict(client_kwargs if consumer_kwargs is None else consumer_kwargs)
        self._producer_kwargs = dict(client_kwargs if producer_kwargs is None else producer_kwargs)
        self._admin_kwargs = dict(client_kwargs if admin_kwargs is None else admin_kwargs)
        self._timeout_s = timeout_s
        self._producer: Any = None

    def ensure_topic(self) -> None:
        from streamem.io.kafka_admin import create_topics

        create_topics(self._admin_kwargs, [self.topic], exist_ok=True, configs={
            "cleanup.policy": "compact", "max.message.bytes": str(MAX_CHECKPOINT_BYTES)})

    def save(self, checkpoint: Checkpoint) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            if self._producer is None:
                self.ensure_topic()
                self._producer = KafkaProducer(**{**self._producer_kwargs, "acks": "all",
                                                  "max_request_size": MAX_CHECKPOINT_BYTES})
            future = self._producer.send(self.topic, key=self.key, value=checkpoint.to_bytes())
            future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise CheckpointError(f"cannot write checkpoint to topic {self.topic}: {exc}") from exc

    def load(self) -> Checkpoint | None:
        from kafka.errors import KafkaError

        from streamem.io.kafka_admin import read_to_end

        kwargs = {**self._consumer_kwargs, "fetch_max_bytes": MAX_CHECKPOINT_BYTES,
                  "max_partition_fetch_bytes": MAX_CHECKPOINT_BYTES}
        latest = None
        try:
            self.ensure_topic()
            for rec in read_to_end(kwargs, self.topic, self._timeout_s):
                if rec.key == self.key:
                    latest = rec.value
        except TimeoutError:
            raise CheckpointError(f"timed out reading checkpoint topic {self.topic}") from None
        except KafkaError as exc:
            raise TransportError(f"cannot read checkpoint topic {self.topic}: {exc}") from exc
        if latest is None:
            return None
        return Checkpoint.from_bytes(latest, f"checkpoint in topic {self.topic}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


def load_latest(stores: Iterable[CheckpointStore]) -> Checkpoint | None:
    """The newest checkpoint among ``stores`` (by write time); None when none holds one."""
    found = [c for c in (store.load() for store in stores) if c is not None]
    return max(found, key=lambda c: c.written_at, default=None)
