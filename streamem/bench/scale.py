"""``streamem bench scale``: what sharing one model costs, measured side by side in one run.

**Throughput per instance, sharing off beside on.** ``instances`` real ``streamem run``
processes join one new consumer group on a new, empty topic of ``partitions`` partitions, with
``sharing.enabled`` false, then true, alternating, ``repeats`` times each (the best run of each
counts: other work on the machine only ever slows a run down). Once every instance is ready
(``/readyz``; with sharing, one of them leads), they warm up on :data:`WARM_MESSAGES` messages
or twice the model's warm-up (with sharing, until each answers with a version the leader
published), so the figures are of the steady state in both modes. Then they are paused
(SIGSTOP; a session timeout of 60 s keeps them in the group), ``points`` points are produced in
``block`` messages of ``points_per_message``, and they are resumed together on their shares of
that backlog. Each instance's points answered are read from its ``/metrics``
(``streamem_points_total{outcome="ok"}``) every :data:`SAMPLE_S`; its points/s are its points
over the time from the resumption to its last answer. With sharing on, one of them also leads
(folds the deltas, publishes the state), as in production.

Batches hold at most ``batch_messages`` messages (``kafka.max_poll_records``): with its default,
2000, a batch of 1000-point messages can hold 400 000 points, too few batches to measure, and a
worker's warm-up delta (it carries the batch's points) would exceed what its producer sends
(1 MiB), so the shared model would never start.

**The leader's fold rate** at (K, d) (16, 32 by default): a model warmed up on a mixture, a
worker's copy of it answering batches of ``points_per_delta`` points with ``OnlineGMM.delta``
(the deltas a worker sends, serialised), and those deltas folded by
:class:`~streamem.sharing.leader.Leader`:

* *model only*: through the leader's per-record step (deserialise, ``fold``, count) in this
  process, no Kafka;
* *through the broker*: the deltas pre-produced on a stats topic, a real leader thread
  (``<group>.leader`` group, transactional publications of its state every
  ``sharing.publish_interval_s`` with the stats offsets) folding that backlog; deltas/s from its
  first fold to its last.

Without a broker at ``--bootstrap-servers`` the bench starts one (as ``bench kafka`` does).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamem import assemble
from streamem.bench.kafka import Topics, broker, produce
from streamem.config import Config, load_config
from streamem.io import kafka_admin
from streamem.metrics import Metrics
from streamem.model import OnlineGMM
from streamem.sharing.leader import Leader
from streamem.synthetic import Mixture

SAMPLE_S = 0.05  #: how often each instance's /metrics is read
TIMEOUT_S = 300.0  #: longest run of one trial or one fold measurement
STOP_S = 60.0  #: longest wait for an instance to stop after SIGTERM
SETTLE_S = 0.5  #: the instances are all ready twice this far apart before the backlog
WARM_MESSAGES = 50  #: fewest messages the instances warm up on before the measured backlog
FOLD_GOAL = 100.0  #: deltas/s the leader should fold at (16, 32)
COST_GOAL = 0.9  #: sharing on / off per-instance throughput should be at least this
MODES = {"sharing off": False, "sharing on": True}
_POINTS_OK = re.compile(r'^streamem_points_total\{outcome="ok"\} (\S+)$', re.M)
_LEADER = re.compile(r"^streamem_leader (\S+)$", re.M)
_VERSION = re.compile(r"^streamem_model_version_in_use (\S+)$", re.M)


# --- throughput per instance ------------------------------------------------------------------


@dataclass
class Trial:
    """One run of the instances: per instance, points answered, points/s, whether it led."""

    points: list[int] = field(default_factory=list)
    points_per_s: list[float] = field(default_factory=list)
    leaders: list[bool] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    deltas_dropped: int = 0

    @property
    def mean_points_per_s(self) -> float:
        return float(np.mean(self.points_per_s)) if self.points_per_s else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"points": self.points, "points_per_s": self.points_per_s,
                "mean_points_per_s": self.mean_points_per_s, "leaders": self.leaders,
                "versions": self.versions, "deltas_dropped": self.deltas_dropped}


class _Instance:
    """One ``streamem run`` process (this interpreter, this ``PYTHONPATH``) and its metrics."""

    def __init__(self, settings: list[str], log_path: Path) -> None:
        self.port = kafka_admin.free_port()
        self.log_path = log_path
        argv = [sys.executable, "-m", "streamem", "run", "--set", f"metrics.port={self.port}"]
        for setting in settings:
            argv += ["--set", setting]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS",
                                                                     "1")}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)

    def _get(self, path: str) -> tuple[int, str]:
        """Status and body of ``path`` on its metrics server; (0, "") while it does not serve."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def scrape(self) -> tuple[int, bool, int]:
        """Points answered so far, whether it leads, the shared model's version it answers
        with; (0, False, 0) while it does not serve."""
        text = self._get("/metrics")[1]
        points, leader = _POINTS_OK.search(text), _LEADER.search(text)
        version = _VERSION.search(text)
        return (int(float(points.group(1))) if points else 0,
                bool(leader and float(leader.group(1)) == 1),
                int(float(version.group(1))) if version else 0)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def count(self, event: str) -> int:
        """How many times its log has ``event``."""
        return self.log_path.read_text(errors="replace").count(f'"event": "{event}"')

    def log_tail(self, n_lines: int = 20) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-n_lines:]
        return f"--- {self.log_path}\n" + "\n".join(lines)


def _check_alive(procs: list[_Instance]) -> None:
    dead = [p for p in procs if p.proc.poll() is not None]
    if dead:
        raise RuntimeError("an instance exited during the run:\n"
                           + "\n".join(p.log_tail() for p in dead))


def _wait_ready(procs: list[_Instance], deadline: float, *, leader: bool) -> None:
    """Until every instance is ready twice in a row, :data:`SETTLE_S` apart (the group is
    stable), and with ``leader`` one of them leads."""
    settled = 0
    while settled < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the instances did not all get ready"
                               f"{' or none led' if leader else ''}:\n"
                               + "\n".join(p.log_tail() for p in procs))
        _check_alive(procs)
        ready = all(p.ready() for p in procs) and (
            not leader or any(p.scrape()[1] for p in procs))
        settled = settled + 1 if ready else 0
        time.sleep(SETTLE_S)


def _settings(bootstrap: str, topic: str, group: str, *, sharing: bool, k: int,
              batch_messages: int) -> list[str]:
    return [f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
            f"kafka.client_id={group}", f"kafka.max_poll_records={batch_messages}",
            f"kafka.input_topic={topic}",
            f"kafka.output_topic={topic}.out.{group}",
            f"kafka.dead_letter_topic={topic}.dead.{group}", "kafka.model_topic=null",
            "input.format=block", "output.format=block", f"model.n_components={k}",
            "model.random_state=0", "checkpoint.path=null", "metrics.host=127.0.0.1",
            "logging.level=WARNING", "kafka.session_timeout_ms=60000",
            f"sharing.enabled={str(sharing).lower()}",
            f"sharing.stats_topic={topic}.stats.{group}",
            f"sharing.state_topic={topic}.state.{group}"]


def _drain_rates(resumed: float, samples: list[list[tuple[float, int]]]) -> list[float]:
    """Per instance, points/s from the resumption to its last answer; ``samples[i]``: instance
    i's (time, points answered) readings."""
    rates = []
    for i, readings in enumerate(samples):
        times, counts = np.array(readings, dtype=np.float64).T
        rising = np.flatnonzero(np.diff(counts, prepend=0.0) > 0)
        if not rising.size:
            raise RuntimeError(f"instance {i} answered no point (fewer partitions than "
                               "instances?)")
        rates.append(float(counts[-1] / (times[rising[-1]] - resumed)))
    return rates


def _warmup_points(k: int, d: int) -> int:
    """The default warm-up of a model of ``k`` components in ``d`` features (the daemons')."""
    model = OnlineGMM(n_components=k)
    model.partial_fit(np.empty((0, d)))  # fixes d, which warmup_ depends on
    return model.warmup_


def _warm_messages(k: int, d: int, points_per_message: int) -> int:
    """Messages to warm up on: :data:`WARM_MESSAGES`, or more to hold twice the model's
    warm-up."""
    return max(WARM_MESSAGES, math.ceil(2 * _warmup_points(k, d) / points_per_message))


@dataclass
class _Watch:
    """Readings of the instances' metrics: per instance (time, points answered), whether it
    led, the newest shared version it answered with."""

    procs: list[_Instance]
    samples: list[list[tuple[float, int]]]
    leaders: list[bool]
    versions: list[int]

    @classmethod
    def of(cls, procs: list[_Instance]) -> _Watch:
        n = len(procs)
        return cls(procs, [[] for _ in range(n)], [False] * n, [0] * n)

    def until(self, n_points: int, deadline: float, *, shared: bool = False) -> list[int]:
        """Read every :data:`SAMPLE_S` until ``n_points`` are answered in all (and with
        ``shared`` every instance answers with a published version); the last counts."""
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                n, leads, version = p.scrape()
                self.samples[i].append((time.perf_counter(), n))
                self.leaders[i] = self.leaders[i] or leads
                self.versions[i] = max(self.versions[i], version)
            counts = [readings[-1][1] for readings in self.samples]
            if sum(counts) >= n_points and (not shared or min(self.versions) > 0):
                return counts
            _check_alive(self.procs)
            time.sleep(SAMPLE_S)
        raise RuntimeError(f"{sum(r[-1][1] for r in self.samples)} of {n_points} points "
                           f"answered{' with a shared model' if shared else ''} within "
                           f"{TIMEOUT_S:.0f} s:\n"
                           + "\n".join(p.log_tail() for p in self.procs))


def run_instances(bootstrap: str, topics: Topics, *, n_points: int, instances: int,
                  partitions: int, points_per_message: int, batch_messages: int, k: int, d: int,
                  sharing: bool, log_dir: Path) -> Trial:
    """One trial: the instances join a new group on a new topic and warm up
    (:func:`_warm_messages`; with sharing, until each answers with a published version); they
    are paused while the backlog is produced and measured from their resumption until
    every point of it is answered."""
    topic = topics.new("streamem-bench-scale", partitions=partitions)
    group = f"bench-scale-{uuid.uuid4().hex[:8]}"
    settings = _settings(bootstrap, topic, group, sharing=sharing, k=k,
                         batch_messages=batch_messages)
    procs = [_Instance(settings, log_dir / f"{group}-{i}.log") for i in range(instances)]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        _wait_ready(procs, deadline, leader=sharing)
        warm = _warm_messages(k, d, points_per_message) * points_per_message
        produce(bootstrap, topic, warm, points_per_message, d, k)
        watch = _Watch.of(procs)
        before = watch.until(warm, deadline, shared=sharing)
        for p in procs:
            p.signal(signal.SIGSTOP)
        try:
            produce(bootstrap, topic, n_points, points_per_message, d, k)
        finally:
            for p in procs:
                p.signal(signal.SIGCONT)
        resumed = time.perf_counter()
        measured = _Watch.of(procs)
        after = measured.until(sum(before) + n_points, deadline)
    finally:
        for p in procs:
            p.stop()
    samples = [[(t, n - n0) for t, n in readings]
               for readings, n0 in zip(measured.samples, before, strict=True)]
    return Trial(points=[n - n0 for n, n0 in zip(after, before, strict=True)],
                 points_per_s=_drain_rates(resumed, samples),
                 leaders=[a or b for a, b in zip(watch.leaders, measured.leaders, strict=True)],
                 versions=measured.versions,
                 deltas_dropped=sum(p.count("delta_not_sent") for p in procs))


def measure_throughput(bootstrap: str, topics: Topics, *, repeats: int,
                       **trial: Any) -> dict[str, Trial]:
    """The best trial of each mode (sharing off, on), alternating; ``trial``: see
    :func:`run_instances`."""
    best: dict[str, Trial] = {}
    with tempfile.TemporaryDirectory(prefix="streamem-bench-scale-") as log_dir:
        for _ in range(repeats):
            for mode, sharing in MODES.items():
                result = run_instances(bootstrap, topics, sharing=sharing, log_dir=Path(log_dir),
                                       **trial)
                if mode not in best or result.mean_points_per_s > best[mode].mean_points_per_s:
                    best[mode] = result
    return best


# --- the leader's fold rate -------------------------------------------------------------------


class _FoldClock(Metrics):
    """Metrics that note when each delta is folded and count the publications."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.folded_at: list[float] = []
        self.publications = 0

    def deltas_folded(self, n: int, lag_s: float) -> None:
        super().deltas_folded(n, lag_s)
        self.folded_at += [time.perf_counter()] * n

    def model_published(self) -> None:
        super().model_published()
        self.publications += 1


def deltas(k: int, d: int, n_deltas: int, points_per_delta: int) -> tuple[bytes, list[bytes]]:
    """A model warmed up on a mixture of ``k`` components in ``d`` features (its bytes), and
    ``n_deltas`` serialised deltas of a worker's copy of it on further points of the mixture."""
    warm = max(20_000, 2 * _warmup_points(k, d))
    X, _ = Mixture.random(k, d, random_state=0).sample(warm + n_deltas * points_per_delta,
                                                       random_state=1)
    model = OnlineGMM(n_components=k, random_state=0)
    for s in range(0, warm, 1000):
        model.partial_fit(X[s:s + 1000])
    state = model.to_bytes()
    worker = OnlineGMM.from_bytes(state)
    out = []
    for s in range(warm, len(X), points_per_delta):
        _, delta = worker.delta(X[s:s + points_per_delta])
        out.append(delta.to_bytes())
    return state, out


def fold_rate_model(state: bytes, values: list[bytes]) -> float:
    """Deltas/s through the leader's per-record step (deserialise, fold, count), no Kafka."""
    metrics = _FoldClock()
    leader = Leader(lambda: OnlineGMM.from_bytes(state), {}, {}, "bench", "stats", "state",
                    "bench", metrics)
    leader.model = OnlineGMM.from_bytes(state)
    now_ms = time.time() * 1000
    records = [SimpleNamespace(value=v, offset=i, timestamp=now_ms)
               for i, v in enumerate(values)]
    start = time.perf_counter()
    for record in records:
        leader._fold(record)  # what the leader thread does with each stats record
    seconds = time.perf_counter() - start
    if len(metrics.folded_at) != len(values):
        raise RuntimeError(f"the leader refused {len(values) - len(metrics.folded_at)} deltas")
    return len(values) / seconds


def _leader_config(bootstrap: str, stats_topic: str, k: int) -> Config:
    """A leader's config: a new group (so a new leader group and transactional id)."""
    group = f"bench-scale-leader-{uuid.uuid4().hex[:8]}"
    return load_config(None, [
        f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id={group}",
        "kafka.model_topic=null", f"model.n_components={k}", "model.random_state=0",
        "checkpoint.path=null", "metrics.enabled=false", "sharing.enabled=true",
        f"sharing.stats_topic={stats_topic}", f"sharing.state_topic={stats_topic}.state.{group}",
    ], environ={})


def produce_deltas(bootstrap: str, topics: Topics, values: list[bytes], workers: int) -> str:
    """A new stats topic holding ``values`` in order, keyed by ``workers`` made-up instances."""
    cfg = _leader_config(bootstrap, f"streamem-bench-scale-stats-{uuid.uuid4().hex[:8]}", k=1)
    stats_topic, _ = assemble.sharing_topics(cfg)
    topics.created.append(stats_topic)
    _, producer_kwargs = assemble.sharing_clients(cfg)
    producer = KafkaProducer(**{**producer_kwargs, "linger_ms": 20})
    for i, value in enumerate(values):
        producer.send(stats_topic, key=f"worker-{i % workers}".encode(), value=value)
    producer.flush()
    producer.close()
    return stats_topic


def fold_rate_kafka(bootstrap: str, topics: Topics, stats_topic: str, state: bytes,
                    n_deltas: int, k: int) -> tuple[float, int]:
    """Deltas/s of a real leader thread folding the stats topic's backlog (from its first fold
    to its last), and how many states it published meanwhile."""
    cfg = _leader_config(bootstrap, stats_topic, k)
    _, state_topic = assemble.sharing_topics(cfg)
    topics.created.append(state_topic)
    consumer, producer = assemble.sharing_clients(cfg)
    metrics = _FoldClock()
    leader = Leader(lambda: OnlineGMM.from_bytes(state), consumer, producer, cfg.kafka.group_id,
                    stats_topic, state_topic, "bench-leader", metrics,
                    publish_interval_s=cfg.sharing.publish_interval_s)
    leader.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while (len(metrics.folded_at) < n_deltas and leader.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.01)
    finally:
        leader.stop.set()
        leader.join(STOP_S)
    folded = metrics.folded_at
    if len(folded) < n_deltas:
        raise RuntimeError(f"the leader folded {len(folded)} of {n_deltas} deltas")
    return (len(folded) - 1) / (folded[-1] - folded[0]), metrics.publications


# --- one run ----------------------------------------------------------------------------------


def run(bootstrap: str, *, n_points: int = 2_000_000, instances: int = 2, partitions: int = 4,
        points_per_message: int = 1000, batch_messages: int = 10, k: int = 8, d: int = 8,
        repeats: int = 3, fold_size: tuple[int, int] = (16, 32), n_deltas: int = 300,
        points_per_delta: int = 1000, workers: int = 2) -> dict[str, Any]:
    """Measure both parts; returns ``settings``, ``throughput`` (per mode, :meth:`Trial.summary`),
    ``cost_ratio`` (on / off mean per-instance points/s) and ``fold`` (``model_deltas_per_s``,
    ``kafka_deltas_per_s``, ``publications``, ``delta_bytes``)."""
    topics = Topics(bootstrap)
    try:
        trials = measure_throughput(bootstrap, topics, n_points=n_points, instances=instances,
                                    partitions=partitions, points_per_message=points_per_message,
                                    batch_messages=batch_messages, k=k, d=d, repeats=repeats)
        fk, fd = fold_size
        state, values = deltas(fk, fd, n_deltas, points_per_delta)
        model_rate = max(fold_rate_model(state, values) for _ in range(repeats))
        stats_topic = produce_deltas(bootstrap, topics, values, workers)
        kafka_runs = [fold_rate_kafka(bootstrap, topics, stats_topic, state, n_deltas, fk)
                      for _ in range(repeats)]
        kafka_rate, publications = max(kafka_runs)
    finally:
        topics.close()
    return {
        "settings": {"instances": instances, "partitions": partitions, "points": n_points,
                     "points_per_message": points_per_message,
                     "batch_messages": batch_messages, "k": k, "d": d,
                     "repeats": repeats, "fold_k": fk, "fold_d": fd, "deltas": n_deltas,
                     "points_per_delta": points_per_delta},
        "throughput": {mode: trial.summary() for mode, trial in trials.items()},
        "cost_ratio": (trials["sharing on"].mean_points_per_s
                       / trials["sharing off"].mean_points_per_s),
        "fold": {"model_deltas_per_s": model_rate, "kafka_deltas_per_s": kafka_rate,
                 "publications": publications,
                 "delta_bytes": int(np.mean([len(v) for v in values]))},
    }


def report(result: dict[str, Any]) -> str:
    """The two tables: throughput per instance by mode, and the leader's fold rates."""
    s = result["settings"]
    n = s["instances"]
    lines = [f"{n} `streamem run` in one group, {s['partitions']} partitions, {s['points']:,} "
             f"points in blocks of {s['points_per_message']} (block in and out), batches of "
             f"{s['batch_messages']} messages, K={s['k']} d={s['d']}, best of {s['repeats']}",
             f"{'points/s per instance':<22}"
             + "".join(f"{f'instance {i}':>14}" for i in range(n)) + f"{'mean':>14}"]
    for mode, trial in result["throughput"].items():
        led = "".join(f"{v:>13,.0f}{'*' if lead else ' '}"
                      for v, lead in zip(trial["points_per_s"], trial["leaders"], strict=True))
        used = (f"   shared model versions used: up to {max(trial['versions'])}"
                + (f", deltas too large to send: {trial['deltas_dropped']}"
                   if trial["deltas_dropped"] else "") if MODES[mode] else "")
        lines.append(f"  {mode:<20}{led}{trial['mean_points_per_s']:>14,.0f}{used}")
    lines.append(f"  sharing on / off: {result['cost_ratio']:.2f} "
                 f"(goal >= {COST_GOAL:.2f}; * the instance that led)")
    f = result["fold"]
    lines += [f"leader fold rate at K={s['fold_k']} d={s['fold_d']}: {s['deltas']} deltas of "
              f"{s['points_per_delta']} points ({f['delta_bytes'] / 1e3:,.0f} kB each)",
              f"  {'model only (Leader fold step)':<42}{f['model_deltas_per_s']:>10,.0f} "
              "deltas/s",
              f"  {'through the broker (Leader thread)':<42}{f['kafka_deltas_per_s']:>10,.0f} "
              f"deltas/s   (goal >= {FOLD_GOAL:.0f}; states published: {f['publications']})"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    fk, fd = (int(v) for v in args.fold_size.lower().split("x"))
    with broker(args.bootstrap_servers) as bootstrap:
        result = run(bootstrap, n_points=args.points, instances=args.instances,
                     partitions=args.partitions, points_per_message=args.points_per_message,
                     batch_messages=args.batch_messages, k=args.k, d=args.d,
                     repeats=args.repeats, fold_size=(fk, fd),
                     n_deltas=args.deltas, points_per_delta=args.points_per_delta)
    print(report(result), flush=True)
    return 0
