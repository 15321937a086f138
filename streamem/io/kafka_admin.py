"""Kafka plumbing around the daemon, written once: create and delete topics, read a topic to
its end, see whether a broker answers, and start a local broker for development and
benchmarks.

Used by the demo, the Kafka bench, the Kafka checkpoint store and the tests. Every function takes
kafka-python keyword arguments (``bootstrap_servers`` and security settings), never the config.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import TopicAlreadyExistsError

from streamem.io.kafka import poll

KAFKA_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka-local.sh"
"""The script that runs a single-node KRaft broker from a checkout (see deploy/kafka)."""
START_TIMEOUT_S = 240.0
"""Longest wait for ``kafka-local.sh start``, a first Maven fetch included."""


def create_topics(admin_kwargs: Mapping[str, Any], topics: Iterable[str], *, partitions: int = 1,
                  replication_factor: int = -1, configs: Mapping[str, str] | None = None,
                  exist_ok: bool = False) -> None:
    """Create ``topics`` and wait until every partition has a leader.

    ``partitions=-1`` and ``replication_factor=-1`` are the broker's defaults. With
    ``exist_ok`` topics that already exist are left as they are; otherwise kafka-python's
    TopicAlreadyExistsError is raised.
    """
    spec = {"num_partitions": partitions, "replication_factor": replication_factor,
            "configs": dict(configs or {})}
    admin = KafkaAdminClient(**admin_kwargs)
    try:
        wanted = list(topics)
        if exist_ok:
            existing = set(admin.list_topics())
            wanted = [t for t in wanted if t not in existing]
        if wanted:
            admin.create_topics({t: spec for t in wanted}, wait_for_metadata=True)
    except TopicAlreadyExistsError:
        if not exist_ok:
            raise
    finally:
        admin.close()


def partition_count(admin_kwargs: Mapping[str, Any], topic: str) -> int | None:
    """How many partitions ``topic`` has; None when it does not exist."""
    admin = KafkaAdminClient(**admin_kwargs)
    try:
        if topic not in set(admin.list_topics()):
            return None
        (described,) = admin.describe_topics([topic])
        return len(described["partitions"]) or None
    finally:
        admin.close()


def list_topics(admin_kwargs: Mapping[str, Any]) -> list[str]:
    """The names of the cluster's topics."""
    admin = KafkaAdminClient(**admin_kwargs)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def delete_topics(admin_kwargs: Mapping[str, Any], topics: Iterable[str]) -> None:
    """Delete those of ``topics`` that exist."""
    admin = KafkaAdminClient(**admin_kwargs)
    try:
        present = set(admin.list_topics())
        existing = [t for t in topics if t in present]
        if existing:
            admin.delete_topics(existing)
    finally:
        admin.close()


def read_to_end(consumer_kwargs: Mapping[str, Any], topic: str,
                timeout_s: float = 60.0) -> Iterator[Any]:
    """Every record of ``topic`` (all partitions) from its beginning to its end as of now.

    Reads without a group and commits nothing. Raises ``TimeoutError`` when the end is not
    reached within ``timeout_s``, kafka-python's KafkaError when the broker fails.
    """
    consumer = KafkaConsumer(**{**consumer_kwargs, "group_id": None,
                                "enable_auto_commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                        or ())]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out reading topic {topic} to its end")
            for records in poll(consumer, 500).values():
                yield from records
    finally:
        consumer.close()


def reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether the first of the ``host:port[,...]`` bootstrap servers accepts a connection."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerError(RuntimeError):
    """The local broker could not be started or stopped."""


@dataclass
class LocalBroker:
    """A single-node broker run by ``deploy/kafka/kafka-local.sh`` on loopback ports.

    It stores into ``data_dir`` (config and logs too: ``server.log``, ``kafka.out``), so it can
    be stopped and started again with its topics and committed offsets. The script stops it
    when this process exits (``KAFKA_OWNER_PID``).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker (same port and data dir as before) and block until it serves."""
        self._run("start", START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the broker; its topics and committed offsets survive a later :meth:`start`."""
        self._run("stop", 120.0)

    def log_tail(self, n_lines: int = 40) -> str:
        """The last ``n_lines`` of the broker's logs, for failure messages."""
        parts = []
        for name in ("kafka.out", "server.log"):
            path = self.data_dir / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n_lines:]
                parts.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(parts)

    def _run(self, command: str, timeout_s: float) -> None:
        if not KAFKA_LOCAL.exists():
            raise BrokerError(f"no {KAFKA_LOCAL} to {command} a local broker with")
        env = {**os.environ, "KAFKA_PORT": str(self.port),
               "KAFKA_CONTROLLER_PORT": str(self.controller_port),
               "KAFKA_DATA_DIR": str(self.data_dir), "PYTHON": sys.executable,
               "KAFKA_OWNER_PID": str(os.getpid())}
        try:
            proc = subprocess.run(["bash", str(KAFKA_LOCAL), command], env=env,
                                  capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"kafka-local.sh {command} took over {timeout_s:.0f}s") from exc
        if proc.returncode != 0:
            raise BrokerError(f"kafka-local.sh {command} failed (exit {proc.returncode}):\n"
                              f"{proc.stderr.strip()}\n{self.log_tail()}")
