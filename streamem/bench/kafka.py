"""``streamem bench kafka``: the daemon's loop beside a pass-through consumer → producer.

For each message shape the topic is produced once, then read by (a) a pass-through that forwards
every value untouched and (b) the daemon's :class:`~streamem.runtime.Runtime`, each in its own
consumer group, both through :class:`~streamem.io.kafka.KafkaSource` and
:class:`~streamem.io.kafka.KafkaSink` built from the same config (so the same client settings),
both flushing and committing after every poll batch. (a) is the transport's ceiling; the ratio
(b)/(a) is what decoding, fitting and encoding cost.

Rows: one point per message (JSON in, JSON out); ``n`` points per message in ``block`` format
with ``block`` output; and the same with JSON output, to show what JSON costs.

Two phases per row and side:

* **throughput**: the backlog of pre-produced messages is read as fast as it goes; points/s
  counts once the side has answered the first :data:`WARMUP_SHARE` of the backlog, until its
  end or for at most :data:`MAX_SECONDS`. The same messages are left out on both sides: the
  group join, the first fetch, and a start-up burst (a librdkafka pass-through answered the
  first ~250k single-point messages at ~270k/s, the rest at ~140k/s: what librdkafka fetched
  ahead, up to ``queued.min.messages``, is drained faster than the broker then sustains). Its
  latency is per batch: poll returned → outputs acknowledged. Each side runs :data:`REPEATS`
  times, alternating with the other, and its best run counts: other work on the machine only
  ever slows a run down.
* **latency**: a separate process produces a fresh topic at a steady rate (half the daemon's
  throughput, the same for both sides) while the side reads it; end-to-end latency is per
  point, from the record's Kafka timestamp (stamped by the producer at send) to the
  acknowledgement of its output. The feeder is librdkafka's producer when the ``rdkafka``
  extra is installed (kafka-python's could not keep up with the faster rows' rates, and its
  backlog would count as latency).

Without a broker at ``--bootstrap-servers`` the bench starts one with
``deploy/kafka/kafka-local.sh`` (:class:`~streamem.io.kafka_admin.LocalBroker`: free port,
temporary data dir) and stops it at the end.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamem import assemble
from streamem.clients import kafka_python
from streamem.config import Config, load_config
from streamem.formats import OUTPUT_FORMATS, input_format
from streamem.io import kafka_admin
from streamem.io.base import Headers, Record
from streamem.io.kafka import KafkaSink, KafkaSource, TransactionalKafkaSink
from streamem.metrics import BatchReport, Metrics
from streamem.runtime import freeze_heap
from streamem.synthetic import Mixture

MAX_SECONDS = 10.0  #: longest throughput measurement of one side (after its warm-up)
WARMUP_SHARE = 0.25  #: share of the backlog a side answers before its throughput counts
_TIMESTAMP, _OFFSET = attrgetter("timestamp_ms"), attrgetter("offset")
_PARTITION = attrgetter("topic", "partition")
REPEATS = 2  #: throughput runs per side, alternating; the best counts (the machine is shared)
LATENCY_SECONDS = 5.0  #: how long the steady producer runs in the latency phase
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Row:
    """One message shape: points per message, input and output formats."""

    points_per_message: int
    output_format: str

    @property
    def input_format(self) -> str:
        return _input_format(self.points_per_message)

    @property
    def name(self) -> str:
        return (f"{self.points_per_message} pt/msg, {self.input_format} in, "
                f"{self.output_format} out")


@dataclass
class Side:
    """What one side (pass-through or daemon) measured."""

    points: int = 0
    seconds: float = float("nan")
    batch_latencies: list[np.ndarray] = field(default_factory=list)
    e2e_latencies: list[np.ndarray] = field(default_factory=list)

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.points and self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        return {"points": self.points, "seconds": self.seconds, "points_per_s": self.points_per_s,
                **_percentiles("batch_latency", self.batch_latencies),
                **_percentiles("e2e_latency", self.e2e_latencies)}


def _percentiles(name: str, latencies: list[np.ndarray]) -> dict[str, float]:
    lat = np.concatenate(latencies) if latencies else np.array([np.nan])
    return {f"{name}_p50_s": float(np.percentile(lat, 50)),
            f"{name}_p99_s": float(np.percentile(lat, 99))}


# --- timing wrappers: the same for both sides -------------------------------------------------


class _Timed:
    """Times a source's polls: each poll's records wait in :attr:`waiting` until the commit
    that covers them (the loop commits once their answers are acknowledged, and a pipelined
    loop only after polling the next batch), which records their latencies into ``side``.

    Also remembers the last poll's return time and Kafka timestamps (``polled_at``,
    ``created_ms``) for :class:`_TimedTxnSink`, whose offsets commit in the transaction.
    """

    polled_at = 0.0
    created_ms: np.ndarray = np.empty(0)
    points_per_message = 1
    side: Side | None = None
    e2e = False
    count_from = 0.0
    """Polls made before this time (epoch s) record no latency."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: deque[tuple[float, np.ndarray, dict[tuple[str, int], int]]] = deque()

    def poll(self, timeout_s: float) -> list[Record]:
        records: list[Record] = super().poll(timeout_s)  # type: ignore[misc]
        if records:
            self.polled_at = time.time()
            self.created_ms = np.array([ts or 0 for ts in map(_TIMESTAMP, records)],
                                       dtype=np.float64)
            if self.side is not None:
                last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
                self.waiting.append((self.polled_at, self.created_ms, last))
        return records

    def commit(self, offsets: Any) -> None:
        acked_at, side, per_point = time.time(), self.side, self.points_per_message
        while side is not None and self.waiting and all(
                offsets.get(tp, -1) > offset for tp, offset in self.waiting[0][2].items()):
            polled_at, created_ms, _ = self.waiting.popleft()
            if polled_at < self.count_from:
                continue
            if self.e2e:
                side.e2e_latencies.append(np.repeat(acked_at - created_ms / 1000.0, per_point))
            else:
                side.batch_latencies.append(np.full(created_ms.size * per_point,
                                                    acked_at - polled_at))
        super().commit(offsets)  # type: ignore[misc]


class _TimedSource(_Timed, KafkaSource):
    """A KafkaSource timed by :class:`_Timed`."""


def _clients(cfg: Config, side: Side, ppm: int, *, e2e: bool) -> tuple[Any, Any]:
    if cfg.kafka.client == "confluent-kafka":
        return _rdkafka_clients(cfg, side, ppm, e2e=e2e)
    source = assemble.kafka_source(cfg, cls=_TimedSource)
    sink: KafkaSink = assemble.kafka_sink(cfg)
    source.points_per_message, source.side, source.e2e = ppm, side, e2e
    return source, sink


class _Counter(Metrics):
    """Metrics that count the points answered and note when partitions are assigned."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.n_points = 0
        self.assigned = threading.Event()

    def observe_batch(self, report: BatchReport, model: Any) -> None:
        super().observe_batch(report, model)
        self.n_points += report.n_points

    def set_ready(self, ready: bool) -> None:
        super().set_ready(ready)
        if ready:
            self.assigned.set()


# --- the two sides --------------------------------------------------------------------------


class _PassThrough:
    """Forward every value to the output topic; flush and commit after every poll."""

    def __init__(self, cfg: Config, side: Side, ppm: int, *, e2e: bool) -> None:
        self.cfg = cfg
        self.source, self.sink = _clients(cfg, side, ppm, e2e=e2e)
        self.ppm = ppm
        self.n_points = 0
        self.assigned = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        k = self.cfg.kafka
        no_headers: Headers = ()
        try:
            while not self._stop.is_set():
                records = self.source.poll(k.poll_timeout_ms / 1000)
                if self.source.assignment():
                    self.assigned.set()
                if not records:
                    continue
                for r in records:
                    self.sink.send(k.output_topic, r.key, r.value, no_headers)
                self.sink.flush(k.delivery_timeout_s)
                offsets: dict[tuple[str, int], int] = {}
                for r in records:
                    offsets[(r.topic, r.partition)] = r.offset + 1
                self.source.commit(offsets)
                self.n_points += len(records) * self.ppm
        finally:
            self.source.close()
            self.sink.close()

    def request_stop(self) -> None:
        self._stop.set()


class _Daemon:
    """The daemon's Runtime over the timed clients."""

    def __init__(self, cfg: Config, side: Side, ppm: int, *, e2e: bool) -> None:
        self.metrics = _Counter()
        self.source, sink = _clients(cfg, side, ppm, e2e=e2e)
        self.runtime = assemble.runtime(cfg, self.source, sink, self.metrics, stores=[])
        self.assigned = self.metrics.assigned

    @property
    def n_points(self) -> int:
        return self.metrics.n_points

    def run(self) -> None:
        self.runtime.run()

    def request_stop(self) -> None:
        self.runtime.request_stop()


def _best(best: Side, measure: Any) -> Side:
    """Measure a fresh Side; return it if it beat ``best`` (or ``best`` had none)."""
    side = Side()
    measure(side)
    return side if not best.points or side.points_per_s > best.points_per_s else best


def _measure_throughput(make: Any, side: Side, n_points: int) -> None:
    """Run a side over the backlog: points/s from the end of the batch that completes its
    first :data:`WARMUP_SHARE` of n_points (at least one batch) to n_points (or time)."""
    loop = make(side, e2e=False)
    freeze_heap()  # as ``streamem run`` does once started; the same for both sides
    thread = threading.Thread(target=loop.run, name="bench-loop")
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    warmup = max(int(WARMUP_SHARE * n_points), 1)
    try:
        while loop.n_points < warmup and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.001)
        side.batch_latencies.clear()  # the warm-up's batches (the first waited for the group
        loop.source.count_from = time.time()  # join), and the next, pipelined, for them
        first, started = loop.n_points, time.perf_counter()
        stop_at = min(time.monotonic() + MAX_SECONDS, deadline)
        while loop.n_points < n_points and time.monotonic() < stop_at and thread.is_alive():
            time.sleep(0.005)
        side.points, side.seconds = loop.n_points - first, time.perf_counter() - started
    finally:
        loop.request_stop()
        thread.join()


def _measure_latency(make: Any, side: Side, bootstrap: str, topic: str, row: Row,
                     rate_points_s: float, d: int, k: int) -> None:
    """Run a side on a fresh topic fed at a steady rate; record end-to-end latencies."""
    loop = make(side, e2e=True)
    freeze_heap()
    thread = threading.Thread(target=loop.run, name="bench-loop")
    thread.start()
    try:
        if not loop.assigned.wait(60):
            raise RuntimeError("the consumer was not assigned the latency topic within 60 s")
        n_messages = max(1, int(rate_points_s * LATENCY_SECONDS / row.points_per_message))
        producer = multiprocessing.get_context("spawn").Process(
            target=_produce_steadily,
            args=(bootstrap, topic, row.points_per_message, n_messages,
                  rate_points_s / row.points_per_message, d, k))
        producer.start()
        producer.join(TIMEOUT_S)
        deadline = time.monotonic() + 60
        want = n_messages * row.points_per_message
        while loop.n_points < want and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
    finally:
        loop.request_stop()
        thread.join()


# --- producing ------------------------------------------------------------------------------


def _input_format(ppm: int) -> str:
    """The input format of messages of ``ppm`` points: JSON for one, blocks for more."""
    return "json" if ppm == 1 else "block"


def _values(n_points: int, ppm: int, d: int, k: int, seed: int) -> Iterator[bytes]:
    X, _ = Mixture.random(k, d, random_state=0).sample(n_points, random_state=seed)
    codec = input_format(_input_format(ppm))
    for s in range(0, n_points, ppm):
        chunk = X[s:s + ppm]
        yield codec.encode(chunk, range(s, s + len(chunk)), None, ppm > 1)


def _producer(bootstrap: str, topic: str, linger_ms: int) -> tuple[Any, Any]:
    """``(send, close)`` of the producer that feeds a topic: librdkafka's when installed (it
    keeps up with every rate measured here, so latencies are the side's, not the feeder's
    backlog), else kafka-python's. Records are stamped at ``send`` and dealt to the topic's
    partitions in turn: left to the client, keyless records stick to one partition for a
    while (librdkafka's ``sticky.partitioning.linger.ms``), and a burst could fill some
    partitions and leave the instances that own the others nothing to do."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                                 batch_size=1 << 20)
        partitions = itertools.cycle(sorted(_wait_for(lambda: producer.partitions_for(topic))))
        return ((lambda value: producer.send(topic, value, partition=next(partitions))),
                (lambda: (producer.flush(), producer.close())))
    rd = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    partitions = itertools.cycle(sorted(_wait_for(
        lambda: rd.list_topics(topic, timeout=5).topics[topic].partitions)))

    def send(value: bytes) -> None:
        partition = next(partitions)
        while True:
            try:
                rd.produce(topic, value, partition=partition)
                break
            except BufferError:  # the local queue is full: let it drain
                rd.poll(0.01)
        rd.poll(0)

    def close() -> None:
        if rd.flush(TIMEOUT_S):
            raise RuntimeError(f"the feeder could not deliver every message to {topic}")

    return send, close


def _wait_for(get: Any) -> Any:
    """``get()`` once it is truthy (a topic's partitions: a new topic's metadata can lag)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (value := get()):
        if time.monotonic() > deadline:
            raise RuntimeError("the topic's partitions did not show up")
        time.sleep(0.1)
    return value


def produce(bootstrap: str, topic: str, n_points: int, ppm: int, d: int, k: int) -> int:
    send, close = _producer(bootstrap, topic, linger_ms=20)
    n = 0
    for value in _values(n_points, ppm, d, k, seed=1):
        send(value)
        n += 1
    close()
    return n


def _produce_steadily(bootstrap: str, topic: str, ppm: int, n_messages: int,
                      messages_per_s: float, d: int, k: int) -> None:
    """Send ``n_messages`` at ``messages_per_s`` (in a child process: no GIL shared)."""
    values = list(_values(n_messages * ppm, ppm, d, k, seed=2))
    send, close = _producer(bootstrap, topic, linger_ms=5)  # as a producer of volume would
    start = time.perf_counter()
    for i, value in enumerate(values):
        delay = start + i / messages_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(value)
    close()


# --- one run --------------------------------------------------------------------------------


def _config(bootstrap: str, topic: str, row: Row, k: int,
            client: str = "kafka-python") -> Config:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return load_config(None, [
        f"kafka.client={client}", f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
        f"kafka.input_topic={topic}", f"kafka.output_topic={topic}.out.{group}",
        f"kafka.dead_letter_topic={topic}.dead.{group}", "kafka.model_topic=null",
        f"input.format={row.input_format}", f"output.format={row.output_format}",
        f"model.n_components={k}", "model.random_state=0", "checkpoint.path=null",
        "metrics.enabled=false",
    ], environ={})


class Topics:
    """Topics this run creates; all deleted at the end (outputs included)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.created: list[str] = []

    def new(self, prefix: str, partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        kafka_admin.create_topics({"bootstrap_servers": self.bootstrap}, [name],
                                  partitions=partitions, replication_factor=1)
        self.created.append(name)
        return name

    def close(self) -> None:
        admin = {"bootstrap_servers": self.bootstrap}
        ours = [t for t in kafka_admin.list_topics(admin)
                if any(t.startswith(c) for c in self.created)]
        kafka_admin.delete_topics(admin, ours)


def run(bootstrap: str, *, n_points: int, points_per_message: int = 1, output_formats:
        tuple[str, ...] | None = None, d: int = 8, k: int = 8,
        latency: bool = True, client: str = "kafka-python") -> list[dict[str, Any]]:
    """Measure the rows of one message shape on one pre-produced topic, with ``client``.

    Returns one dict per output format: ``row``, ``settings``, ``pass_through`` and ``daemon``
    (each ``points``, ``seconds``, ``points_per_s``, ``batch_latency_p50_s``/``_p99_s``,
    ``e2e_latency_p50_s``/``_p99_s``) and ``ratio`` (daemon / pass-through points/s).
    """
    formats = output_formats or (("json",) if points_per_message == 1 else
                                 tuple(sorted(OUTPUT_FORMATS)))
    rows = [Row(points_per_message, f) for f in formats]
    topics = Topics(bootstrap)
    try:
        topic = topics.new(f"streamem-bench-{points_per_message}")
        produce(bootstrap, topic, n_points, points_per_message, d, k)
        ppm = points_per_message
        passthrough, daemons = Side(), [Side() for _ in rows]
        for _ in range(REPEATS):  # alternate the sides; keep each one's best run
            passthrough = _best(passthrough, lambda side: _measure_throughput(
                lambda s, e2e: _PassThrough(_config(bootstrap, topic, rows[0], k, client), s, ppm,
                                            e2e=e2e), side, n_points))
            for j, row in enumerate(rows):
                daemons[j] = _best(daemons[j], lambda side, row=row: _measure_throughput(
                    lambda s, e2e: _Daemon(_config(bootstrap, topic, row, k, client), s, ppm,
                                           e2e=e2e),
                    side, n_points))
        results = []
        for row, daemon in zip(rows, daemons, strict=True):
            if latency:
                rate = 0.5 * daemon.points_per_s
                for side, cls in ((passthrough, _PassThrough), (daemon, _Daemon)):
                    fresh = topics.new(f"streamem-bench-latency-{ppm}")
                    side.e2e_latencies.clear()
                    _measure_latency(
                        lambda s, e2e, cls=cls, fresh=fresh, row=row: cls(
                            _config(bootstrap, fresh, row, k, client), s, ppm, e2e=e2e),
                        side, bootstrap, fresh, row, rate, d, k)
            results.append({"row": row.name, "points_per_message": ppm,
                            "client": client,
                            "settings": _settings_text(_config(bootstrap, topic, row, k, client)),
                            "pass_through": passthrough.summary(), "daemon": daemon.summary(),
                            "ratio": daemon.points_per_s / passthrough.points_per_s})
        return results
    finally:
        topics.close()


def _settings_text(cfg: Config) -> str:
    from kafka.record import util

    if cfg.kafka.client == "confluent-kafka":
        return _rdkafka_settings_text(cfg)
    consumer = kafka_python.consumer_settings(cfg)
    producer = kafka_python.producer_settings(cfg)
    shown = {
        "max_poll_records": consumer["max_poll_records"],
        "max_partition_fetch_bytes": consumer["max_partition_fetch_bytes"],
        "fetch_max_bytes": consumer["fetch_max_bytes"],
        "fetch_min_bytes": consumer.get("fetch_min_bytes", 1),
        "check_crcs": consumer.get("check_crcs", True),
        "linger_ms": producer["linger_ms"], "batch_size": producer["batch_size"],
        "compression_type": producer["compression_type"], "acks": producer["acks"],
        "enable_idempotence": producer["enable_idempotence"],
        "max_in_flight_requests_per_connection":
            producer.get("max_in_flight_requests_per_connection", 5),
        "crc32c": "C (crc32c package)" if util.crc32c_c is not None else "pure Python",
    }
    return " ".join(f"{key}={value}" for key, value in shown.items())


def _side_line(name: str, r: dict[str, float]) -> str:
    """One side's points/s and batch and end-to-end latency percentiles."""
    return (f"  {name:<13} {r['points_per_s']:>11,.0f} points/s   "
            f"batch p50/p99 {r['batch_latency_p50_s'] * 1e3:6.1f}/"
            f"{r['batch_latency_p99_s'] * 1e3:6.1f} ms   "
            f"end-to-end p50/p99 {r['e2e_latency_p50_s'] * 1e3:6.1f}/"
            f"{r['e2e_latency_p99_s'] * 1e3:6.1f} ms")


def report(results: list[dict[str, Any]]) -> str:
    """A table: per row, each side's points/s and latencies, and the ratio."""
    lines = []
    for result in results:
        lines.append(f"{result['row']}, {result.get('client', 'kafka-python')}")
        lines.extend(_side_line(name, result[name]) for name in ("pass_through", "daemon"))
        lines.append(f"  daemon / pass-through: {result['ratio']:.2f}")
    return "\n".join(lines)


# --- the broker ------------------------------------------------------------------------------


@contextmanager
def broker(bootstrap: str) -> Iterator[str]:
    """``bootstrap`` if a broker answers there, else a local broker started for the run."""
    if kafka_admin.reachable(bootstrap):
        yield bootstrap
        return
    local = kafka_admin.LocalBroker(Path(tempfile.mkdtemp(prefix="streamem-bench-kafka-")))
    print(f"no broker at {bootstrap}: starting one on {local.bootstrap}", file=sys.stderr)
    try:
        local.start()
        yield local.bootstrap
    finally:
        try:
            local.stop()
        finally:
            shutil.rmtree(local.data_dir, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    """Single-point rows use ``--points`` points; multi-point rows 2000 messages' worth.

    Each shape runs on every installed Kafka client (:func:`_kafka_clients`), side by side, and
    on kafka-python at least once beside exactly once (:func:`run_delivery`).
    """
    with broker(args.bootstrap_servers) as bootstrap:
        shown: set[str] = set()
        for ppm in args.points_per_message:
            n_points = args.points if ppm == 1 else max(args.points, 2000 * ppm)
            for client in _kafka_clients():
                results = run(bootstrap, n_points=n_points, points_per_message=ppm,
                              client=client)
                if client not in shown:
                    shown.add(client)
                    print(f"settings ({client}): {results[0]['settings']}", flush=True)
                print(report(results), flush=True)
            print(report_delivery(run_delivery(bootstrap, n_points=n_points,
                                               points_per_message=ppm)), flush=True)
    return 0


# --- librdkafka (kafka.client=confluent-kafka): the same timing over its source and sink ---


def _kafka_clients() -> tuple[str, ...]:
    """kafka-python, and confluent-kafka when the ``rdkafka`` extra is installed."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return ("kafka-python",)
    return ("kafka-python", "confluent-kafka")


def _rdkafka_clients(cfg: Config, side: Side, ppm: int, *, e2e: bool) -> tuple[Any, Any]:
    """An RdKafkaSource timed like :class:`_TimedSource`, and an RdKafkaSink."""
    from streamem.clients import confluent
    from streamem.io.base import NO_EVENTS
    from streamem.io.rdkafka import RdKafkaSink, RdKafkaSource

    class TimedSource(_Timed, RdKafkaSource):
        pass

    k = cfg.kafka
    source = TimedSource(confluent.consumer_conf(cfg), [k.input_topic],
                         max_records=k.max_poll_records, events=NO_EVENTS)
    source.points_per_message, source.side, source.e2e = ppm, side, e2e
    sink = RdKafkaSink(confluent.producer_conf(cfg), confluent.dead_letter_conf(cfg),
                       value_drop_topics=frozenset([k.dead_letter_topic]),
                       max_message_bytes=confluent.output_limit(cfg))
    return source, sink


def _rdkafka_settings_text(cfg: Config) -> str:
    from streamem.clients import confluent

    consumer, producer = confluent.consumer_conf(cfg), confluent.producer_conf(cfg)
    shown = {"max_poll_records": cfg.kafka.max_poll_records,
             **{key: consumer.get(key) for key in ("max.partition.fetch.bytes",
                                                   "fetch.max.bytes", "fetch.min.bytes")},
             **{key: producer.get(key) for key in ("linger.ms", "batch.size",
                                                   "compression.type", "acks",
                                                   "enable.idempotence")}}
    return " ".join(f"{key}={value}" for key, value in shown.items() if value is not None)


# --- at least once beside exactly once ----------------------------------------------------------


class _TimedTxnSink(TransactionalKafkaSink):
    """A TransactionalKafkaSink that records latencies when a transaction commits: only then
    are its outputs visible to ``read_committed`` readers."""

    source: _TimedSource
    side: Side
    e2e = False
    pending: list[tuple[np.ndarray, float]]

    def flush(self, timeout_s: float) -> None:
        super().flush(timeout_s)
        src = self.source
        if src.created_ms.size:
            self.pending.append((src.created_ms, src.polled_at))
            src.created_ms = np.empty(0)

    def commit(self) -> None:
        super().commit()
        acked_at, per_point = time.time(), self.source.points_per_message
        for created_ms, polled_at in self.pending:
            if self.e2e:
                lat = acked_at - created_ms / 1000.0
                self.side.e2e_latencies.append(np.repeat(lat, per_point))
            else:
                self.side.batch_latencies.append(
                    np.full(created_ms.size * per_point, acked_at - polled_at))
        self.pending = []

    def abort(self) -> None:
        super().abort()
        self.pending = []


def _exactly_once(cfg: Config) -> Config:
    return replace(cfg, delivery=replace(cfg.delivery, guarantee="exactly_once"))


class _ExactlyOnceDaemon(_Daemon):
    """The daemon's Runtime with ``delivery.guarantee: exactly_once`` over timed clients."""

    def __init__(self, cfg: Config, side: Side, ppm: int, *, e2e: bool) -> None:
        cfg = _exactly_once(cfg)
        self.metrics = _Counter()
        source = assemble.kafka_source(cfg, cls=_TimedSource)
        sink = _TimedTxnSink.create_transactional(
            kafka_python.transactional_producer_settings(cfg),
            timeout_s=cfg.delivery.transaction_timeout_s,
            max_message_bytes=kafka_python.output_max_bytes(cfg),
            dead_letter_topic=cfg.kafka.dead_letter_topic)
        source.points_per_message = ppm
        sink.source, sink.side, sink.e2e, sink.pending = source, side, e2e, []
        self.source = source
        self.runtime = assemble.runtime(cfg, source, sink, self.metrics, stores=[])
        self.assigned = self.metrics.assigned


DELIVERY = {"at_least_once": _Daemon, "exactly_once": _ExactlyOnceDaemon}


def run_delivery(bootstrap: str, *, n_points: int, points_per_message: int = 1, d: int = 8,
                 k: int = 8, latency: bool = True) -> dict[str, Any]:
    """The daemon at least once and exactly once on one pre-produced topic, default settings.

    Returns ``row``, ``at_least_once`` and ``exactly_once`` (as :meth:`Side.summary`; exactly
    once, latencies end at the transaction's commit) and ``ratio`` (exactly / at least once
    points/s). Both latency phases run at half the slower side's throughput.
    """
    ppm = points_per_message
    row = Row(ppm, "json" if ppm == 1 else "block")
    topics = Topics(bootstrap)
    try:
        topic = topics.new(f"streamem-bench-delivery-{ppm}")
        produce(bootstrap, topic, n_points, ppm, d, k)
        sides = {name: Side() for name in DELIVERY}
        for _ in range(REPEATS):  # alternate; keep each one's best run
            for name, cls in DELIVERY.items():
                sides[name] = _best(sides[name], lambda side, cls=cls: _measure_throughput(
                    lambda s, e2e: cls(_config(bootstrap, topic, row, k), s, ppm, e2e=e2e),
                    side, n_points))
        if latency:
            rate = 0.5 * min(side.points_per_s for side in sides.values())
            for name, cls in DELIVERY.items():
                fresh = topics.new(f"streamem-bench-delivery-latency-{ppm}")
                _measure_latency(lambda s, e2e, cls=cls, fresh=fresh: cls(
                    _config(bootstrap, fresh, row, k), s, ppm, e2e=e2e),
                    sides[name], bootstrap, fresh, row, rate, d, k)
        return {"row": row.name, "points_per_message": ppm,
                **{name: side.summary() for name, side in sides.items()},
                "ratio": sides["exactly_once"].points_per_s / sides["at_least_once"].points_per_s}
    finally:
        topics.close()


def report_delivery(result: dict[str, Any]) -> str:
    """Per delivery guarantee: points/s and latencies, and the ratio."""
    lines = [f"{result['row']}: delivery guarantee"]
    lines.extend(_side_line(name, result[name]) for name in DELIVERY)
    lines.append(f"  exactly / at least once: {result['ratio']:.2f}")
    return "\n".join(lines)
