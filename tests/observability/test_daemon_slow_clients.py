"""Slow clients against the running daemon's metrics endpoint: with 300 idle or half-sent
connections open and only 256 file descriptors allowed, the daemon keeps answering input,
checkpointing, and serving scrapes, without spinning a CPU."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import Daemon, Reader, daemon_settings, make_topics, points_of
from kafka_helpers import free_port, produce

FD_LIMIT, HOSTILE = 256, 300
CLIENT_TIMEOUT_S = 2.0


def start_limited(tmp_path: Path, settings: dict[str, object]) -> Daemon:
    """``python -m streamem run`` allowed only ``FD_LIMIT`` open files."""
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    log_path = tmp_path / "limited.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMEM_")}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamem", "run", *args],
                                stdout=subprocess.DEVNULL, stderr=log, env=env,
                                preexec_fn=limit)
    return Daemon(proc, log_path)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, sample: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=CLIENT_TIMEOUT_S + 5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not exported")


def wave(start: int, n: int) -> list[bytes]:
    return [json.dumps({"id": start + i, "x": [float(i % 5), float(i % 3)]}).encode()
            for i in range(n)]


@pytest.mark.kafka
def test_slow_clients_neither_starve_the_daemon_nor_its_scrapes(kafka_bootstrap, topic_factory,
                                                                 tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics, metrics__enabled="true",
                               metrics__host="0.0.0.0", metrics__port=port,
                               metrics__client_timeout_s=CLIENT_TIMEOUT_S)
    daemon = start_limited(tmp_path, settings)
    reader = Reader(kafka_bootstrap, topics["output"])
    socks: list[socket.socket] = []
    try:
        produce(kafka_bootstrap, topics["input"], wave(0, 200))
        assert len(reader.read_until(lambda rs: len(rs) >= 200)) >= 200, daemon.log_tail()
        for i in range(HOSTILE):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)

        started = time.monotonic()
        assert metric(url, "streamem_kafka_up") == 1.0
        assert time.monotonic() - started < CLIENT_TIMEOUT_S + 3
        with urllib.request.urlopen(url + "/healthz", timeout=CLIENT_TIMEOUT_S + 5) as r:
            assert r.status == 200

        cpu0, wall0 = cpu_seconds(daemon.proc.pid), time.monotonic()
        time.sleep(3.0)
        share = (cpu_seconds(daemon.proc.pid) - cpu0) / (time.monotonic() - wall0)
        assert share < 0.5, f"the daemon burns {share:.0%} of a CPU with idle clients open"

        checkpoints = metric(url, "streamem_checkpoint_last_success_timestamp_seconds")
        produce(kafka_bootstrap, topics["input"], wave(1000, 200))
        records = reader.read_until(lambda rs: len(rs) >= 400)
        time.sleep(2.0)  # checkpoint.interval_s is 1
        assert metric(url, "streamem_checkpoint_failures_total") == 0
        assert metric(url, "streamem_checkpoint_last_success_timestamp_seconds") > checkpoints
        n_open = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
        assert n_open < FD_LIMIT - 64, f"the daemon holds {n_open} files"
        for s in socks:
            s.close()
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        for s in socks:
            s.close()
        reader.close()
        daemon.proc.kill()
    ids = {p["id"] for p in points_of(records)}
    assert ids == set(range(200)) | set(range(1000, 1200))
