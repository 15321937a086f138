"""The pipelined loop (a sink that delivers on its own threads): the next batch is worked on
while this one is delivered, and offsets still commit only after their outputs are
acknowledged, in order; a failure, a checkpoint, a revocation and a stop keep that."""

from __future__ import annotations

import json
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from streamem.config import load_config
from streamem.io.base import TopicPartition
from streamem.io.checkpoint import FileCheckpointStore
from streamem.io.memory import MemorySink, MemorySource
from streamem.metrics import Metrics
from streamem.runtime import Runtime, restore_model
from streamem.synthetic import Mixture

X, _ = Mixture.random(3, 2, random_state=5).sample(600, random_state=1)
VALUES = [json.dumps({"id": i, "x": X[i].tolist()}).encode() for i in range(len(X))]


class BackgroundSink(MemorySink):
    """A memory sink that says it delivers in the background, so the runtime pipelines."""

    delivers_in_background = True


class CheckedSource(MemorySource):
    """Checks at every commit that each offset before it has its answer acknowledged, and
    notes how many polls had been made by then."""

    def __init__(self, values: list[bytes], sink: MemorySink, batch_size: int) -> None:
        super().__init__(values, batch_size=batch_size)
        self.sink = sink
        self.polls = 0
        self.polls_at_commit: list[int] = []

    def poll(self, timeout_s: float) -> list:
        self.polls += 1
        return super().poll(timeout_s)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        done = offsets[("memory", 0)]
        previous = self.commits[-1][("memory", 0)] if self.commits else 0
        assert done > previous, "commits go forward"
        acknowledged = {int(dict(h)["streamem.source.offset"]) if topic == "streamem.dead-letter"
                        else json.loads(v)["offset"] for topic, _, v, h in self.sink.sent}
        assert set(range(done)) <= acknowledged, "a commit before its outputs were acknowledged"
        self.polls_at_commit.append(self.polls)
        super().commit(offsets)


def run(sink: MemorySink, *overrides: str, batch_size: int = 50, stores: tuple = ()
        ) -> tuple[Runtime, CheckedSource]:
    cfg = load_config(None, ["model.n_components=3", "model.random_state=0",
                             "checkpoint.path=null", "runtime.retry_initial_s=0.01",
                             *overrides], environ={})
    source = CheckedSource(VALUES, sink, batch_size)
    model, _ = restore_model(cfg, stores)
    runtime = Runtime(cfg, source, sink, model, Metrics(CollectorRegistry()), stores)
    assert runtime.run() == 0
    return runtime, source


def answered(sink: MemorySink) -> list[int]:
    return sorted(json.loads(v)["id"] for topic, _, v, _ in sink.sent
                  if topic == "streamem.assignments")


def test_a_batch_commits_after_the_next_one_was_polled_and_only_once_acknowledged() -> None:
    sink = BackgroundSink()
    runtime, source = run(sink)
    assert answered(sink) == list(range(len(X)))
    assert source.commits[-1] == {("memory", 0): len(X)}, "the stop settled the last batch"
    # Batch k committed after batch k+1 was polled: the two overlapped.
    assert source.polls_at_commit[:3] == [2, 3, 4]
    assert runtime.model.n_seen_ == len(X)


def test_without_background_delivery_each_batch_commits_before_the_next_poll() -> None:
    sink = MemorySink()
    _, source = run(sink)
    assert answered(sink) == list(range(len(X)))
    assert source.polls_at_commit[:3] == [1, 2, 3]


def test_a_failed_delivery_commits_nothing_and_both_batches_are_answered_again() -> None:
    sink = BackgroundSink(fail_flushes=1)
    runtime, source = run(sink)
    assert answered(sink) == list(range(len(X)))
    # The first batch's delivery failed while the second was decoded: both were read again.
    assert source.commits[0] == {("memory", 0): 50}
    assert runtime.model.n_seen_ == len(X) + 2 * 50


def test_a_due_checkpoint_settles_the_batch_in_flight_first(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    store = FileCheckpointStore(path)
    sink = BackgroundSink()
    runtime, source = run(sink, f"checkpoint.path={path}", "checkpoint.interval_s=0.0001",
                          stores=(store,))
    ckpt = store.load()
    assert ckpt is not None and ckpt.offsets == source.commits[-1] == {("memory", 0): len(X)}
    restored, _ = restore_model(runtime.cfg, (store,))
    assert restored.n_seen_ == len(X), "the checkpoint's model holds what its offsets say"


class CountingStore(FileCheckpointStore):
    """A file store that keeps every checkpoint it saves."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.saved: list = []

    def save(self, ckpt) -> None:
        super().save(ckpt)
        self.saved.append(ckpt)


def test_checkpoints_are_written_while_batches_keep_coming(tmp_path) -> None:
    """A loop that always has a batch in flight still writes its periodic checkpoints (not only
    the final one), each holding exactly the batches its offsets say."""
    store = CountingStore(tmp_path / "ckpt.npz")
    sink = BackgroundSink()
    runtime, _ = run(sink, f"checkpoint.path={tmp_path / 'ckpt.npz'}",
                     "checkpoint.interval_s=0.0001", stores=(store,))
    periodic = store.saved[:-1]
    assert len(periodic) >= 5, f"{len(periodic)} periodic checkpoints over 12 batches"
    for ckpt in periodic:
        restored = type(runtime.model).from_bytes(ckpt.model)
        assert restored.n_seen_ == ckpt.offsets[("memory", 0)]


class RevokingSource(CheckedSource):
    """Calls the runtime's ``before_revoke`` hook inside its third poll (a rebalance)."""

    before_revoke = None
    settled_at_revoke: list[dict[TopicPartition, int]] | None = None

    def poll(self, timeout_s: float) -> list:
        if self.polls == 2 and self.before_revoke is not None:
            self.before_revoke()
            self.settled_at_revoke = list(self.commits)
        return super().poll(timeout_s)


def test_a_revocation_inside_the_poll_commits_the_batch_in_flight_first() -> None:
    sink = BackgroundSink()
    cfg = load_config(None, ["model.n_components=3", "model.random_state=0",
                             "checkpoint.path=null"], environ={})
    source = RevokingSource(VALUES, sink, 50)
    runtime = Runtime(cfg, source, sink, restore_model(cfg, ())[0], Metrics(CollectorRegistry()))
    assert source.before_revoke is not None, "the runtime hooked the revocation"
    assert runtime.run() == 0
    # Before the third poll, batch one had committed; batch two was in flight: the hook
    # committed it while the partition was still ours.
    assert source.settled_at_revoke == [{("memory", 0): 50}, {("memory", 0): 100}]
    assert answered(sink) == list(range(len(X)))



class DeliveredSink(BackgroundSink):
    """Says at once that everything sent is delivered (the runtime may settle early)."""

    def undelivered(self) -> int:
        return 0


class SeenAtCommit(CheckedSource):
    """Notes how many points the model had seen at each commit."""

    runtime: Runtime | None = None
    seen_at_commit: list[int]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        assert self.runtime is not None
        self.seen_at_commit.append(int(self.runtime.model.n_seen_))
        super().commit(offsets)


def test_a_batch_already_delivered_commits_before_the_next_one_is_fitted() -> None:
    seen = {}
    for sink in (BackgroundSink(), DeliveredSink()):
        cfg = load_config(None, ["model.n_components=3", "model.random_state=0",
                                 "checkpoint.path=null"], environ={})
        source = SeenAtCommit(VALUES, sink, 50)
        source.seen_at_commit = []
        source.runtime = Runtime(cfg, source, sink, restore_model(cfg, ())[0],
                                 Metrics(CollectorRegistry()))
        assert source.runtime.run() == 0
        assert answered(sink) == list(range(len(X)))
        seen[type(sink).__name__] = source.seen_at_commit[:3]
    # Batch k commits after batch k+1 was fitted, unless it was delivered before that.
    assert seen == {"BackgroundSink": [100, 150, 200], "DeliveredSink": [50, 100, 150]}
