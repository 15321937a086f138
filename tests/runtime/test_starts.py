"""Stalls are bounded: 50 consecutive starts of the real daemon each hold their partitions within
the session timeout of connecting (kafka-python can leave a member out of its group for good;
the daemon re-joins after ``kafka.unassigned_rejoin_s``), and each stops cleanly."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from daemon_helpers import daemon_settings, make_topics, start_daemon

STARTS = 50
RDKAFKA_STARTS = 10
"""librdkafka re-joins on its own; fewer starts keep the suite's time (tests/conftest.py runs
this test once per kafka.client)."""
SESSION_TIMEOUT_MS = 6000
WAIT_S = 30.0  # a deadline against hanging; the bound asserted is the session timeout


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


@pytest.mark.kafka
def test_consecutive_starts_each_get_their_partitions_within_the_session_timeout(
        kafka_bootstrap, topic_factory, tmp_path, kafka_client) -> None:
    starts = STARTS if kafka_client == "kafka-python" else RDKAFKA_STARTS
    topics = make_topics(topic_factory, partitions=2)
    settings = daemon_settings(kafka_bootstrap, tmp_path, topics,
                               kafka__session_timeout_ms=SESSION_TIMEOUT_MS,
                               kafka__unassigned_rejoin_s=2, checkpoint__path="null")
    waits, rejoins = [], 0
    for i in range(starts):
        daemon = start_daemon(tmp_path, f"start-{i}", settings)
        try:
            deadline = time.monotonic() + WAIT_S
            while not [e for e in daemon.events("partitions_assigned") if e["partitions"]]:
                assert daemon.proc.poll() is None, daemon.log_tail()
                assert time.monotonic() < deadline, f"start {i}: no partitions\n" + \
                    daemon.log_tail()
                time.sleep(0.05)
            connected = next(e for e in daemon.events("kafka_connected")
                             if e["client"] == "consumer")
            assigned = next(e for e in daemon.events("partitions_assigned") if e["partitions"])
            waits.append(ts(assigned) - ts(connected))
            rejoins += len(daemon.events("group_rejoin"))
            assert daemon.stop() == 0, daemon.log_tail()
        finally:
            daemon.proc.kill()
    print(f"{starts} starts: partitions after {min(waits):.2f}..{max(waits):.2f}s, "
          f"{rejoins} re-joins")
    assert max(waits) < SESSION_TIMEOUT_MS / 1000, waits
