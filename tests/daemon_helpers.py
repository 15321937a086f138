"""Run ``python -m streamem run`` as a subprocess against the real broker, and read its topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

WAIT_S = 120.0  # longest wait for outputs; a deadline against hanging, not a speed assertion
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")
"""The values of ``kafka.client``: every daemon test against the broker runs on each."""
client = KAFKA_CLIENTS[0]
"""The ``kafka.client`` of :func:`daemon_settings`, set per test by the ``kafka_client`` fixture."""


@dataclass
class Daemon:
    """A running ``python -m streamem run``; its JSON log lines go to ``log_path``."""

    proc: subprocess.Popen
    log_path: Path

    def events(self, name: str | None = None) -> list[dict]:
        lines = self.log_path.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in events if name is None or e.get("event") == name]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-30:])


def start_daemon(tmp_path: Path, name: str, settings: dict[str, object], *flags: str,
                 env: dict[str, str] | None = None) -> Daemon:
    """Start the daemon with ``--set key=value`` for each setting; stderr goes to a log file.
    ``env``: variables to set beside the test's environment (less its ``STREAMEM_`` ones)."""
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    log_path = tmp_path / f"{name}.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMEM_")},
           **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamem", "run", *args, *flags],
                                stdout=subprocess.DEVNULL, stderr=log, env=env)
    return Daemon(proc, log_path)


def daemon_settings(bootstrap: str, tmp_path: Path, topics: dict[str, str],
                    **extra: object) -> dict[str, object]:
    """Settings for a test daemon; ``extra`` keys use ``__`` for the dot (``input__format``)."""
    return {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.client": client,
        "kafka.group_id": f"group-{topics['input']}",
        "kafka.input_topic": topics["input"],
        "kafka.output_topic": topics["output"],
        "kafka.dead_letter_topic": topics["dead"],
        "kafka.model_topic": "null",
        "kafka.session_timeout_ms": 6000,
        "kafka.heartbeat_interval_ms": 1000,
        "kafka.delivery_timeout_s": 30,
        "runtime.retry_initial_s": 0.2,
        "runtime.retry_max_s": 2,
        "model.n_components": 8,
        "model.random_state": 0,
        "checkpoint.path": tmp_path / "checkpoint.npz",
        "checkpoint.interval_s": 1,
        "metrics.enabled": "false",
        "logging.format": "json",
        **{k.replace("__", "."): v for k, v in extra.items()},
    }


def make_topics(topic_factory: Callable[..., str], partitions: int = 3) -> dict[str, str]:
    return {"input": topic_factory("points", partitions), "output": topic_factory("answers"),
            "dead": topic_factory("dead")}


def make_topics_on(bootstrap: str, prefix: str, partitions: int = 2) -> dict[str, str]:
    """:func:`make_topics` on a broker without a ``topic_factory`` (a stoppable private one)."""
    from streamem.io.kafka_admin import create_topics

    suffix = str(time.monotonic_ns())
    topics = {"input": f"{prefix}-in-{suffix}", "output": f"{prefix}-out-{suffix}",
              "dead": f"{prefix}-dead-{suffix}"}
    admin = {"bootstrap_servers": bootstrap}
    create_topics(admin, [topics["input"]], partitions=partitions, replication_factor=1)
    create_topics(admin, [topics["output"], topics["dead"]], replication_factor=1)
    return topics


class Reader:
    """Reads a topic from the beginning, across calls, with a private consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list = []

    def read_until(self, done: Callable[[list], bool], timeout_s: float = WAIT_S) -> list:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def points_of(records: list) -> list[dict]:
    """The output records (one per point) of JSON output messages."""
    out = []
    for r in records:
        doc = json.loads(r.value)
        out.extend(doc if isinstance(doc, list) else [doc])
    return out


def run_until(bootstrap: str, tmp_path: Path, name: str, settings: dict[str, object], *,
              points: int, dead: int = 0,
              before_stop: Callable[[Daemon], None] | None = None) -> tuple[list, list]:
    """Run a daemon until its output holds ``points`` answered points and its dead-letter topic
    ``dead`` letters (or ``WAIT_S``), then stop it with SIGTERM, which it must obey (exit 0).
    Returns the output records and the dead letters; ``before_stop`` sees the running daemon."""
    daemon = start_daemon(tmp_path, name, settings)
    outputs = Reader(bootstrap, str(settings["kafka.output_topic"]))
    letters = Reader(bootstrap, str(settings["kafka.dead_letter_topic"]))
    try:
        answered = outputs.read_until(lambda rs: len(points_of(rs)) >= points)
        dead_letters = letters.read_until(lambda rs: len(rs) >= dead) if dead else []
        if before_stop is not None:
            before_stop(daemon)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.proc.kill()
        outputs.close()
        letters.close()
    return answered, dead_letters
