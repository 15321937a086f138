"""Run the daemon: consume points, cluster them with online EM, publish their assignments.

Reads ``kafka.input_topic`` in the consumer group ``kafka.group_id`` (or stdin lines), answers
every message on ``kafka.output_topic`` (or stdout), sends undecodable messages to
``kafka.dead_letter_topic`` with the reason in their headers, and checkpoints the model every
``checkpoint.interval_s``. SIGTERM or Ctrl+C stops it cleanly (exit 0); a second one exits at
once (130).

exit codes: 0 stopped cleanly, 1 runtime failure or the final checkpoint could not be written,
2 bad config or a checkpoint that cannot be read or fails its checks, 130 a second interrupt.

examples:
  streamem run --config config/streamem.yaml
  streamem run --set kafka.bootstrap_servers=broker:9092 --set model.n_components=16
  streamem produce ... | streamem run --source stdin --sink stdout --set checkpoint.path=null
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

    from streamem.config import Config
    from streamem.io.base import Backoff, Sink, Source
    from streamem.io.checkpoint import Checkpoint, CheckpointStore
    from streamem.metrics import Metrics
    from streamem.model import OnlineGMM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="YAML config file (defaults apply "
                        "for what it leaves out)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config value (repeatable; wins over file and env)")
    parser.add_argument("--source", choices=("kafka", "stdin"), default="kafka",
                        help="where points come from (default: kafka)")
    parser.add_argument("--sink", choices=("kafka", "stdout"), default=None,
                        help="where answers go (default: stdout with --source stdin, else kafka)")
    parser.add_argument("--ignore-checkpoint", action="store_true",
                        help="start from a fresh model even if a checkpoint exists")


def main(args: argparse.Namespace) -> int:
    import logging

    from streamem import __version__
    from streamem.config import load_config
    from streamem.errors import CheckpointError, ConfigError
    from streamem.logs import configure_logging
    from streamem.metrics import Metrics
    from streamem.runtime import Runtime, stop_on_signals

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"streamem run: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level, cfg.logging.format)
    log = logging.getLogger("streamem.run")
    log.info("starting", extra={"version": __version__, "source": args.source,
                                "sink": args.sink or _default_sink(args.source),
                                "config": cfg.redacted()})
    metrics = Metrics()
    m = cfg.metrics
    server = metrics.serve(m.host, m.port, max_connections=m.max_connections,
                           client_timeout_s=m.client_timeout_s) if m.enabled else None
    if server is not None:
        log.info("metrics_serving", extra={"url": server.url})
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            stores = _checkpoint_stores(cfg)
            try:
                model, resume = _restore(cfg, stores, args.ignore_checkpoint, log, stop)
            except (CheckpointError, ConfigError) as exc:
                log.error("cannot_start", extra={"error": str(exc)})
                print(f"streamem run: {exc}", file=sys.stderr)
                return 2
            source = _open_source(cfg, args.source, metrics, stop)
            sink = _open_sink(cfg, args.sink or _default_sink(args.source), metrics, stop)
            if model is None or source is None or sink is None:
                log.info("stopped_before_connecting")
                return 0
            runtime = Runtime(cfg, source, sink, model, metrics, stores, log,
                              resume=resume, stop=stop)
            return runtime.run()
    except Exception:
        log.exception("runtime_failed")
        return 1
    finally:
        if server is not None:
            server.close()


def _default_sink(source: str) -> str:
    return "stdout" if source == "stdin" else "kafka"


def _restore(cfg: Config, stores: list[CheckpointStore], ignore: bool, log: logging.Logger,
             stop: threading.Event) -> tuple[OnlineGMM | None, Checkpoint | None]:
    """:func:`~streamem.runtime.restore_model`, retried while a Kafka store is unreachable."""
    from streamem.errors import TransportError
    from streamem.runtime import restore_model

    backoff = _backoff(cfg)
    while not stop.is_set():
        try:
            return restore_model(cfg, stores, ignore=ignore, logger=log)
        except TransportError as exc:
            log.warning("checkpoint_unreachable", extra={"error": str(exc)})
            backoff.wait(stop)
    return None, None


def _checkpoint_stores(cfg: Config) -> list[CheckpointStore]:
    from streamem.io.checkpoint import FileCheckpointStore, KafkaCheckpointStore

    stores: list[CheckpointStore] = []
    if cfg.checkpoint.path:
        stores.append(FileCheckpointStore(cfg.checkpoint.path))
    if cfg.checkpoint.kafka_topic:
        stores.append(KafkaCheckpointStore(cfg.checkpoint.kafka_topic, cfg.kafka.group_id,
                                           cfg.kafka.client_kwargs()))
    return stores


def _backoff(cfg: Config) -> Backoff:
    from streamem.io.base import Backoff

    return Backoff(cfg.runtime.retry_initial_s, cfg.runtime.retry_max_s)


def _open_source(cfg: Config, kind: str, metrics: Metrics,
                 stop: threading.Event) -> Source | None:
    if kind == "stdin":
        from streamem.io.stdio import StdinSource

        binary = cfg.input.format != "json"
        limit = cfg.input.max_bytes  # a binary line is base64: 4 characters per 3 bytes
        return StdinSource(binary=binary, batch_size=cfg.kafka.max_poll_records,
                           max_line_bytes=-(-limit // 3) * 4 if binary else limit)
    if cfg.kafka.client == "confluent-kafka":
        from streamem.clients import confluent

        return confluent.open_source(cfg, metrics, stop)
    from streamem.io.kafka import KafkaSource, connect

    return connect(lambda: KafkaSource.create(cfg, metrics), what="consumer", backoff=_backoff(cfg),
                   stop=stop, metrics=metrics)


def _open_sink(cfg: Config, kind: str, metrics: Metrics, stop: threading.Event) -> Sink | None:
    if kind == "stdout":
        from streamem.io.stdio import StdoutSink

        return StdoutSink(cfg.kafka.output_topic)
    if cfg.kafka.client == "confluent-kafka":
        from streamem.clients import confluent

        return confluent.open_sink(cfg, metrics, stop)
    from streamem.io.kafka import KafkaSink, connect

    return connect(lambda: KafkaSink.create(cfg, metrics), what="producer", backoff=_backoff(cfg),
                   stop=stop, metrics=metrics)
