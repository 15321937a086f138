"""Structured log lines: one event per line, fields from ``extra``."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streamem.logs import configure_logging


@pytest.fixture
def capture():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_the_event_and_its_fields(capture) -> None:
    configure_logging("INFO", "json", capture)
    log = logging.getLogger("streamem.test")
    log.info("checkpoint_saved", extra={"n_seen": 12, "offsets": "t:0=3"})
    log.debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("runtime_failed")
    first, second = (json.loads(line) for line in capture.getvalue().splitlines())
    assert first["event"] == "checkpoint_saved" and first["level"] == "info"
    assert (first["n_seen"], first["offsets"], first["logger"]) == (12, "t:0=3", "streamem.test")
    assert second["event"] == "runtime_failed" and "ValueError: boom" in second["error"]


def test_key_value_lines_quote_what_needs_quoting(capture) -> None:
    configure_logging("INFO", "kv", capture)
    logging.getLogger("streamem.test").warning(
        "transport_error", extra={"kind": "commit", "error": 'a "b" = c', "retry_in_s": 0.5})
    line = capture.getvalue().strip()
    assert "event=transport_error kind=commit" in line
    assert 'error="a \\"b\\" = c" retry_in_s=0.5' in line


def test_kafka_client_chatter_is_held_at_warning(capture) -> None:
    configure_logging("INFO", "json", capture)
    logging.getLogger("kafka.conn").info("connecting")
    assert capture.getvalue() == ""
