"""Run the daemon: consume points, cluster them with online EM, publish their assignments.

Reads ``kafka.input_topic`` in the consumer group ``kafka.group_id`` (or stdin lines), answers
every message on ``kafka.output_topic`` (or stdout), sends undecodable messages to
``kafka.dead_letter_topic`` with the reason in their headers, and checkpoints the model every
``checkpoint.interval_s``. SIGTERM or Ctrl+C stops it cleanly (exit 0); a second one exits at
once (130).

exit codes: 0 stopped cleanly, 1 runtime failure or the final checkpoint could not be written,
2 bad config, a checkpoint that cannot be read or fails its checks, or input compressed with a
codec whose library is not installed (streamem[codecs]), 130 a second interrupt.

examples:
  streamem run --config config/streamem.yaml
  streamem run --set kafka.bootstrap_servers=broker:9092 --set model.n_components=16
  streamem produce ... | streamem run --source stdin --sink stdout --set checkpoint.path=null
"""

from __future__ import annotations

import argparse
import sys
import threading


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

    from streamem import __version__, assemble
    from streamem.config import load_config
    from streamem.errors import CheckpointError, ConfigError
    from streamem.logs import configure_logging
    from streamem.metrics import Metrics
    from streamem.runtime import freeze_heap, stop_on_signals

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"streamem run: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level, cfg.logging.format)
    log = logging.getLogger("streamem.run")
    sink_kind = args.sink or _default_sink(args.source)
    log.info("starting", extra={"version": __version__, "source": args.source,
                                "sink": sink_kind, "config": cfg.redacted()})
    metrics = Metrics()
    server = assemble.serve_metrics(metrics, cfg)
    if server is not None:
        log.info("metrics_serving", extra={"url": server.url})
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            stores = assemble.checkpoint_stores(cfg)
            try:
                model, resume = assemble.restore(cfg, stores, ignore=args.ignore_checkpoint,
                                                 log=log, stop=stop)
            except (CheckpointError, ConfigError) as exc:
                log.error("cannot_start", extra={"error": str(exc)})
                print(f"streamem run: {exc}", file=sys.stderr)
                return 2
            try:
                source = assemble.source(cfg, args.source, metrics, stop)
                sink = assemble.sink(cfg, sink_kind, metrics, stop)
            except ConfigError as exc:
                log.error("cannot_start", extra={"error": str(exc)})
                print(f"streamem run: {exc}", file=sys.stderr)
                return 2
            if model is None or source is None or sink is None:
                log.info("stopped_before_connecting")
                return 0
            runtime = assemble.runtime(cfg, source, sink, metrics, model=model, stores=stores,
                                       resume=resume, log=log, stop=stop)
            freeze_heap()
            try:
                return runtime.run()
            except ConfigError as exc:  # e.g. MissingCodec: an install to fix, not a crash
                log.error("cannot_continue", extra={"error": str(exc)})
                print(f"streamem run: {exc}", file=sys.stderr)
                return 2
    except Exception:
        log.exception("runtime_failed")
        return 1
    finally:
        if server is not None:
            server.close()


def _default_sink(source: str) -> str:
    return "stdout" if source == "stdin" else "kafka"
