"""Exactly once through a broker stop and start (a private broker: this test stops it)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import daemon_settings, make_topics_on, start_daemon
from kafka_helpers import KafkaBroker, free_port, produce
from test_exactly_once import EO, MIX, CommittedReader, assert_each_once, block_messages
from test_outage import stoppable_broker  # noqa: F401  (the fixture)

BOUND_S = 3.0


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(url: str, want: bool, timeout_s: float) -> float:
    start = time.monotonic()
    while ready(url) != want:
        assert time.monotonic() - start < timeout_s, f"/readyz did not become {want}"
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.kafka
def test_broker_stop_and_start_answers_each_input_once_and_readyz_follows(
        stoppable_broker: KafkaBroker, tmp_path: Path) -> None:  # noqa: F811
    bootstrap = stoppable_broker.bootstrap
    topics = make_topics_on(bootstrap, "eo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = daemon_settings(bootstrap, tmp_path, topics, input__format="block",
                               metrics__enabled="true", metrics__port=port,
                               kafka__request_timeout_ms=3000, kafka__delivery_timeout_s=10,
                               **{**EO, "delivery__transaction_timeout_s": BOUND_S,
                                  "delivery__transaction_min_s": 2})
    X, _ = MIX.sample(9000, random_state=8)
    values = block_messages(X, 100)
    daemon = start_daemon(tmp_path, "outage", settings)
    reader = None
    stopped = False
    try:
        produce(bootstrap, topics["input"], values[:40])
        reader = CommittedReader(bootstrap, topics["output"], topics["dead"])
        reader.read_until(lambda rs: len(rs) >= 40)
        wait_ready(url, True, 30)
        produce(bootstrap, topics["input"], values[40:60])
        time.sleep(0.5)  # answered and sent, in a transaction not yet committed
        stoppable_broker.stop()
        stopped = True
        # Committing needs the broker: the bounded call gives up, the instance is not ready.
        went_down_s = wait_ready(url, False, 4 * BOUND_S + 5)
        time.sleep(2 * BOUND_S)
        assert not ready(url)
        assert daemon.proc.poll() is None, daemon.log_tail()
        stoppable_broker.start()
        stopped = False
        produce(bootstrap, topics["input"], values[60:])
        wait_ready(url, True, 60)
        assert_each_once(reader, topics, bootstrap)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        if stopped:
            stoppable_broker.start()
        daemon.proc.kill()
        if reader is not None:
            reader.close()
    aborted = daemon.events("transaction_aborted")
    assert aborted, "the open transaction was aborted"
    print(json.dumps({"not_ready_after_s": round(went_down_s, 2)}))
