"""Cluster a synthetic drifting stream end to end and summarise the result against the truth.

A known mixture (K=5 components in 4-D) with ~0.5% uniform outliers, which drifts abruptly to a
new mixture half-way through, runs through the daemon's own loop (the same Runtime as
streamem run): in memory by default, or through Kafka with --kafka (fresh topics on the
broker, deleted afterwards). The Prometheus endpoint is live while it runs. Progress is a live
panel on a terminal, one line per second otherwise (or with --plain). It stops by itself after
--points or --seconds, whichever comes first, and prints a summary: adjusted Rand index,
held-out log-likelihood against the true mixture's, anomalies caught (precision/recall against
the known outliers) and how the drift was handled.

examples:
  streamem demo
  streamem demo --points 1000000 --seconds 120
  streamem demo --kafka --bootstrap-servers 127.0.0.1:9092
  streamem demo --plain --metrics-port 0 --checkpoint demo.npz && streamem inspect demo.npz

exit codes: 0 done, 1 runtime or Kafka failure, 2 bad usage, 130 interrupted twice.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from streamem.commands.arguments import positive_float, positive_int

if TYPE_CHECKING:
    from streamem.config import Config
    from streamem.demo import Answers, DemoSettings, Summary, Truth
    from streamem.metrics import Metrics
    from streamem.runtime import Runtime

BATCH_POINTS = 2000  #: points per poll batch (as messages of --points-per-message)
BOOTSTRAP_TIMEOUT_MS = 10_000
#: The model warms up on its first 1000 points; the drift comes after a settled stretch.
MIN_POINTS = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=_enough_points, default=300_000, metavar="N",
                        help=f"points in the stream, at least {MIN_POINTS} (default: 300000); "
                             "the drift is at N/2")
    parser.add_argument("--seconds", type=positive_float, default=45.0, metavar="S",
                        help="stop after S seconds if the points are not all done (default: 45)")
    parser.add_argument("--kafka", action="store_true",
                        help="go through the Kafka broker instead of in-memory transports")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", default=None,
                        help="with --kafka (default: $STREAMEM_KAFKA__BOOTSTRAP_SERVERS or "
                             "127.0.0.1:9092)")
    parser.add_argument("--metrics-port", type=int, default=9400, metavar="P",
                        help="Prometheus endpoint port on 127.0.0.1 (default: 9400; 0: any free)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the mixtures, the stream and the model (default: 0)")
    parser.add_argument("--plain", action="store_true",
                        help="one progress line per second even on a terminal")
    parser.add_argument("--rate", type=float, default=0.0, metavar="PTS_PER_S",
                        help="pace the stream (default 0: as fast as the loop goes)")
    parser.add_argument("--format", choices=_multi_point_formats(), default="json",
                        help="message format (default: json)")
    parser.add_argument("--points-per-message", type=positive_int, default=200, metavar="M",
                        help="points per message (default: 200)")
    parser.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="write the final checkpoint here (for streamem inspect)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override a config value of the loop, e.g. model.halflife=5000")


def main(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from streamem import demo
    from streamem.errors import ConfigError, TransportError
    from streamem.metrics import Metrics

    settings = demo.DemoSettings(points=args.points, seconds=args.seconds, seed=args.seed,
                                 rate=args.rate, format=args.format,
                                 points_per_message=args.points_per_message)
    try:
        cfg = _config(args, settings)
    except ConfigError as exc:
        print(f"streamem demo: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    try:
        server = metrics.serve("127.0.0.1", args.metrics_port)
    except OSError as exc:
        print(f"streamem demo: cannot serve metrics on 127.0.0.1:{args.metrics_port}: {exc}; "
              "pass --metrics-port 0 for any free port", file=sys.stderr)
        return 2
    try:
        summary, transport = run(args, settings, cfg, metrics, server.url, sys.stdout)
    except (KafkaError, TransportError) as exc:
        print(f"streamem demo: Kafka at {cfg.kafka.bootstrap_servers} failed: {exc}",
              file=sys.stderr)
        return 1
    finally:
        server.close()
    print(demo.format_summary(summary, transport), flush=True)
    return 0


def run(args: argparse.Namespace, settings: DemoSettings, cfg: Config, metrics: Metrics,
        metrics_url: str, out: Any) -> tuple[Summary, str]:
    """Draw the stream, run the loop under the progress view until done, and summarise."""
    from streamem import demo
    from streamem.runtime import stop_on_signals

    truth = demo.Truth(settings)
    answers = demo.Answers(settings.points)
    stop = threading.Event()
    transport = (f"Kafka at {cfg.kafka.bootstrap_servers} (topic {cfg.kafka.input_topic})"
                 if args.kafka else "in-memory source and sink")
    print(demo.describe(settings, transport), file=out)
    print(f"metrics: {metrics_url}/metrics", file=out, flush=True)
    view = demo.make_view(out, args.plain)
    with stop_on_signals(stop):
        if args.kafka:
            runtime, seconds = _run_kafka(cfg, truth, answers, metrics, stop, view)
        else:
            runtime = _memory_runtime(cfg, truth, answers, metrics, stop)
            seconds = _watch(runtime, truth, metrics, view, lambda: False)
    return demo.summarise(truth, answers, runtime.model, seconds), transport


def _watch(runtime: Runtime, truth: Truth, metrics: Metrics, view: Any,
           done: Callable[[], bool]) -> float:
    """Run the loop in a thread, refresh ``view`` until it ends; stop it at the time limit or
    when ``done()``. Returns the seconds it ran; re-raises the loop's exception, if any."""
    from streamem.demo import take_snapshot

    failure: list[BaseException] = []

    def loop() -> None:
        try:
            runtime.run()
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
            runtime.request_stop()

    thread = threading.Thread(target=loop, name="streamem-demo-loop", daemon=True)
    started = time.monotonic()
    thread.start()
    snap = None
    try:
        while thread.is_alive():
            thread.join(view.interval_s)
            elapsed = time.monotonic() - started
            snap = take_snapshot(metrics, runtime.model, truth, elapsed, snap)
            view.update(snap)
            if elapsed >= truth.settings.seconds or done():
                runtime.request_stop()
        # the loop may end between a snapshot and the check: the last frame shows its end
        view.update(take_snapshot(metrics, runtime.model, truth, time.monotonic() - started,
                                  snap))
    finally:
        runtime.request_stop()
        thread.join()
        view.close()
    if failure:
        raise failure[0]
    return time.monotonic() - started


def _config(args: argparse.Namespace, settings: DemoSettings) -> Config:
    """The loop's config: the demo's model, no checkpoint unless asked, unique Kafka names,
    no shared model (its answers would wait for a leader's publications, and its topics
    would outlive the demo)."""
    import os
    import uuid

    from streamem.config import load_config

    name = f"streamem-demo-{uuid.uuid4().hex[:10]}"
    per_batch = max(1, BATCH_POINTS // settings.points_per_message)
    overrides = [
        f"model.n_components={settings.components}", f"model.random_state={settings.seed}",
        f"input.format={settings.format}", f"input.n_features={settings.features}",
        f"checkpoint.path={args.checkpoint or 'null'}", "checkpoint.interval_s=3600",
        f"kafka.max_poll_records={per_batch}", "kafka.model_topic=null",
        f"kafka.input_topic={name}.points", f"kafka.output_topic={name}.assignments",
        f"kafka.dead_letter_topic={name}.dead-letter", f"kafka.group_id={name}",
        "kafka.client_id=streamem-demo", "kafka.session_timeout_ms=6000",
        "kafka.heartbeat_interval_ms=1000", "kafka.delivery_timeout_s=30",
        "sharing.enabled=false",  # one process on its own group: nobody to share with
    ]
    if args.bootstrap_servers:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap_servers}")
    env = {k: v for k, v in os.environ.items() if k.startswith("STREAMEM_KAFKA__")}
    return load_config(None, overrides + list(args.set), env)


def _messages(truth: Truth, stop: threading.Event) -> Iterator[tuple[int, bytes]]:
    """The stream's messages, encoded and paced as ``streamem produce`` does."""
    from streamem.commands.produce import TokenBucket, encode_messages

    return truth.messages(stop, encode_messages, TokenBucket(truth.settings.rate).take)


def _memory_runtime(cfg: Config, truth: Truth, answers: Answers, metrics: Metrics,
                    stop: threading.Event) -> Runtime:
    from streamem import assemble
    from streamem.io.memory import MemorySink, MemorySource

    class AnswerSink(MemorySink):
        """Hands each flushed output message to ``answers`` instead of keeping it."""

        def flush(self, timeout_s: float) -> None:
            super().flush(timeout_s)
            for topic, _, value, _ in self.sent:
                if topic == cfg.kafka.output_topic:
                    answers.add(value)
            self.sent.clear()

    source = MemorySource((value for _, value in _messages(truth, stop)),
                          topic=cfg.kafka.input_topic, batch_size=cfg.kafka.max_poll_records)
    return assemble.runtime(cfg, source, AnswerSink(), metrics, stop=stop)


def _run_kafka(cfg: Config, truth: Truth, answers: Answers, metrics: Metrics,
               stop: threading.Event, view: Any) -> tuple[Runtime, float]:
    """Produce the stream to fresh topics while the loop consumes it, then read the answers."""
    from streamem import assemble
    from streamem.commands.produce import KafkaSender
    from streamem.errors import TransportError
    from streamem.io import kafka_admin

    k = cfg.kafka
    kwargs = {"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **k.client_kwargs()}
    topics = [k.input_topic, k.output_topic, k.dead_letter_topic]
    kafka_admin.create_topics(kwargs, topics)
    try:
        produced = threading.Event()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                sender = KafkaSender(kwargs, k.input_topic)
                try:
                    for first, value in _messages(truth, stop):
                        sender(str(first).encode(), value, int(time.time() * 1000))
                finally:
                    sender.close()
            except BaseException as exc:  # handed to the main thread
                failure.append(exc)
                stop.set()
            finally:
                produced.set()

        runtime = assemble.runtime(cfg, assemble.kafka_source(cfg), assemble.kafka_sink(cfg),
                                   metrics, stop=stop)
        producer = threading.Thread(target=produce, name="streamem-demo-produce", daemon=True)
        producer.start()

        def all_answered() -> bool:
            seen = metrics.registry.get_sample_value("streamem_points_total", {"outcome": "ok"})
            return produced.is_set() and (seen or 0) >= truth.drawn

        seconds = _watch(runtime, truth, metrics, view, all_answered)
        stop.set()
        producer.join()
        if failure:
            raise failure[0]
        try:
            for rec in kafka_admin.read_to_end(kwargs, k.output_topic, timeout_s=60.0):
                answers.add(rec.value)
        except TimeoutError:
            raise TransportError(f"timed out reading the answers back from {k.output_topic}"
                                 ) from None
        return runtime, seconds
    finally:
        _delete_topics(kwargs, topics)


def _delete_topics(kwargs: dict[str, Any], topics: list[str]) -> None:
    """Best effort: a demo's topics are not worth an error."""
    from kafka.errors import KafkaError

    from streamem.io.kafka_admin import delete_topics

    try:
        delete_topics(kwargs, topics)
    except KafkaError as exc:
        print(f"streamem demo: could not delete topics {', '.join(topics)}: {exc}",
              file=sys.stderr)


def _enough_points(text: str) -> int:
    value = int(text)
    if value < MIN_POINTS:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_POINTS} (the model warms up on the first 1000 points and the "
            f"stream drifts half-way), got {text}")
    return value


def _multi_point_formats() -> list[str]:
    """The input formats whose messages hold several points (the demo sends batches)."""
    from streamem.formats import INPUT_FORMATS, input_format

    return [name for name in INPUT_FORMATS if input_format(name).max_points_per_message is None]
