"""``streamem bench kafka``: the daemon's loop beside a pass-through consumer → producer.

Both read the same pre-produced topic (in their own consumer groups) with the same
:class:`~streamem.io.kafka.KafkaSource` / :class:`~streamem.io.kafka.KafkaSink` settings, and both
flush and commit after every poll batch. The pass-through forwards each value untouched; the daemon
decodes, fits, encodes and answers. Their points/s ratio is the price of the clustering; the
latency is per point, from its poll batch returning to its output being acknowledged.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from prometheus_client import CollectorRegistry

from streamem import codec
from streamem.config import Config, load_config
from streamem.io.kafka import KafkaSink, KafkaSource
from streamem.metrics import BatchReport, Metrics
from streamem.synthetic import Mixture

TIMEOUT_S = 600.0


class _Recorder(Metrics):
    """Metrics that also keep every batch's per-point latencies and count the points."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.latencies: list[np.ndarray] = []
        self.n_points = 0

    def observe_batch(self, report: BatchReport, model: Any) -> None:
        super().observe_batch(report, model)
        self.latencies.append(report.latencies_s)
        self.n_points += report.n_points


def _config(bootstrap: str, topic: str, points_per_message: int, k: int) -> Config:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return load_config(None, [
        f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
        f"kafka.input_topic={topic}", f"kafka.output_topic={topic}.out.{group}",
        f"kafka.dead_letter_topic={topic}.dead.{group}", "kafka.model_topic=null",
        f"input.format={'json' if points_per_message == 1 else 'block'}",
        f"model.n_components={k}", "model.random_state=0", "checkpoint.path=null",
        "metrics.enabled=false",
    ], environ={})


def _produce(bootstrap: str, topic: str, X: np.ndarray, points_per_message: int) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    n_messages = 0
    for s in range(0, len(X), points_per_message):
        chunk = X[s:s + points_per_message]
        value = (json.dumps({"id": s, "x": chunk[0].tolist()}).encode()
                 if points_per_message == 1 else codec.encode_block(chunk))
        producer.send(topic, value)
        n_messages += 1
    producer.flush()
    producer.close()
    return n_messages


def _pass_through(cfg: Config, n_messages: int, points_per_message: int) -> dict[str, Any]:
    source, sink = KafkaSource.create(cfg), KafkaSink.create(cfg)
    latencies: list[np.ndarray] = []
    done, first, started = 0, 0, 0.0
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while done < n_messages and time.monotonic() < deadline:
            records = source.poll(cfg.kafka.poll_timeout_ms / 1000)
            if not records:
                continue
            polled_at = time.time()
            for r in records:
                sink.send(cfg.kafka.output_topic, r.key, r.value, ())
            sink.flush(cfg.kafka.delivery_timeout_s)
            offsets: dict[tuple[str, int], int] = {}
            for r in records:
                offsets[(r.topic, r.partition)] = r.offset + 1
            source.commit(offsets)
            done += len(records)
            if not first:  # timing starts after the first batch, as for the daemon
                first, started = done, time.perf_counter()
                continue
            latencies.append(np.full(len(records) * points_per_message, time.time() - polled_at))
        elapsed = time.perf_counter() - started
    finally:
        source.close()
        sink.close()
    return _summary((done - first) * points_per_message, elapsed, latencies)


def _daemon(cfg: Config, n_points: int) -> dict[str, Any]:
    from streamem.model import OnlineGMM
    from streamem.runtime import Runtime

    metrics = _Recorder()
    runtime = Runtime(cfg, KafkaSource.create(cfg), KafkaSink.create(cfg),
                      OnlineGMM(**cfg.model_kwargs()), metrics)
    thread = threading.Thread(target=runtime.run, name="bench-runtime")
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while metrics.n_points == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.perf_counter()
    first = metrics.n_points
    while metrics.n_points < n_points and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    runtime.request_stop()
    thread.join()
    # The first batch's points count as done when timing starts, like the pass-through's.
    return _summary(metrics.n_points - first, elapsed, metrics.latencies[1:])


def _summary(n_points: int, elapsed: float, latencies: list[np.ndarray]) -> dict[str, Any]:
    lat = np.concatenate(latencies) if latencies else np.array([np.nan])
    return {"points": n_points, "seconds": elapsed,
            "points_per_s": n_points / elapsed if elapsed > 0 else float("nan"),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p99_s": float(np.percentile(lat, 99))}


def run(bootstrap: str, *, n_points: int, d: int = 8, k: int = 8,
        points_per_message: int = 1) -> dict[str, Any]:
    """Pre-produce ``n_points`` to a new topic, then measure the pass-through and the daemon.

    Returns ``{"points_per_message", "pass_through": {...}, "daemon": {...}, "ratio"}`` where each
    side has ``points``, ``seconds``, ``points_per_s``, ``latency_p50_s``, ``latency_p99_s``.
    """
    X, _ = Mixture.random(k, d, random_state=0).sample(n_points, random_state=1)
    topic = f"streamem-bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}},
                        wait_for_metadata=True)
    try:
        n_messages = _produce(bootstrap, topic, X, points_per_message)
        passthrough = _pass_through(_config(bootstrap, topic, points_per_message, k), n_messages,
                                    points_per_message)
        cfg = _config(bootstrap, topic, points_per_message, k)
        daemon = _daemon(cfg, n_points)
    finally:
        admin.delete_topics([topic])
        admin.close()
    return {"points_per_message": points_per_message, "pass_through": passthrough,
            "daemon": daemon, "ratio": daemon["points_per_s"] / passthrough["points_per_s"]}


def report(result: dict[str, Any]) -> str:
    lines = [f"points per message: {result['points_per_message']}"]
    for name in ("pass_through", "daemon"):
        r = result[name]
        lines.append(f"  {name:<13} {r['points_per_s']:>11,.0f} points/s   "
                     f"latency p50 {r['latency_p50_s'] * 1e3:8.1f} ms   "
                     f"p99 {r['latency_p99_s'] * 1e3:8.1f} ms")
    lines.append(f"  daemon / pass-through: {result['ratio']:.2f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    for ppm in args.points_per_message:
        print(report(run(args.bootstrap_servers, n_points=args.points, points_per_message=ppm)),
              flush=True)
    return 0
