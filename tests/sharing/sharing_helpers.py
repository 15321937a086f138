"""What the shared-model daemon tests read back: leaders from the logs, the state topic's
writers and versions, the deltas on the stats topic, and how well ids match the truth."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from daemon_helpers import Daemon, Reader
from kafka import KafkaConsumer, TopicPartition
from scipy.optimize import linear_sum_assignment

from streamem.formats.block import encode_block
from streamem.model.delta import StatsDelta
from streamem.sharing.records import VERSION_HEADER, WRITER_HEADER, header
from streamem.synthetic import Mixture


def wave(mix: Mixture, start: int, n_messages: int, per_message: int
         ) -> tuple[list[bytes], list[bytes], dict[int, int]]:
    """Block messages of points with ids from ``start``; their true clusters by id."""
    X, y = mix.sample(n_messages * per_message, random_state=start)
    values = [encode_block(X[i * per_message:(i + 1) * per_message],
                           ids=range(start + i * per_message, start + (i + 1) * per_message))
              for i in range(n_messages)]
    keys = [b"key-%d" % (start + i) for i in range(n_messages)]
    return values, keys, {start + i: int(c) for i, c in enumerate(y)}


def leaders(daemons: list[Daemon]) -> list[int]:
    """Which daemons lead now, by their last leader_gained/leader_lost event."""
    out = []
    for i, d in enumerate(daemons):
        events = [e["event"] for e in d.events() if e.get("event") in ("leader_gained",
                                                                         "leader_lost")]
        if events and events[-1] == "leader_gained":
            out.append(i)
    return out


def wait_for(what: Callable[[], Any], timeout_s: float, message: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(message())


class CommittedReader(Reader):
    """A :class:`Reader` with ``isolation_level=read_committed``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      isolation_level="read_committed")
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list = []


def _read(bootstrap: str, topic: str, *, committed: bool) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed" if committed
                             else "read_uncommitted", max_partition_fetch_bytes=16 << 20,
                             fetch_max_bytes=16 << 20)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list = []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                out += records
        return out
    finally:
        consumer.close()


def state_log(bootstrap: str, topic: str) -> list[tuple[str, int]]:
    """(writer, version) of every committed record of the state topic, in log order."""
    return [(str(header(r.headers, WRITER_HEADER)), int(header(r.headers, VERSION_HEADER) or -1))
            for r in _read(bootstrap, topic, committed=True)]


def delta_points(bootstrap: str, topic: str) -> dict[str, int]:
    """The points the committed deltas on the stats topic stand for, by sending instance."""
    out: dict[str, int] = {}
    for r in _read(bootstrap, topic, committed=True):
        name = r.key.decode()
        out[name] = out.get(name, 0) + StatsDelta.from_bytes(r.value).n_points
    return out


def instance(daemon: Daemon) -> str:
    return str(daemon.events("sharing_model")[0]["instance"])


def collapsed(names: list[str]) -> list[str]:
    """``names`` without consecutive repeats."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(any(n == m for m in rest) for n in part)


def one_to_one(answers: list[dict], truth: dict[int, int], n_true: int
               ) -> tuple[float, dict[int, int]]:
    """The share of answers a one-to-one map from true cluster to id gets right, and that map."""
    table = np.zeros((n_true, 64), dtype=np.int64)
    for a in answers:
        table[truth[int(a["id"])], a["cluster"]] += 1
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum()), dict(zip(rows.tolist(), cols.tolist(),
                                                                   strict=True))
