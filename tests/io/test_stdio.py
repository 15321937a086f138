"""The stdin source: one message per line, read linearly, a line over the limit dead-lettered."""

from __future__ import annotations

import base64
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from prometheus_client import CollectorRegistry

from streamem.config import load_config
from streamem.io.base import Record
from streamem.io.memory import MemorySink
from streamem.io.stdio import MAX_LINE_BYTES, StdinSource
from streamem.metrics import Metrics
from streamem.runtime import Runtime, restore_model


@contextmanager
def piped(chunks: list[bytes], **kwargs: object) -> Iterator[StdinSource]:
    """A source reading what a thread writes, chunk by chunk, into a pipe."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")

    def write() -> None:
        with os.fdopen(write_fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield StdinSource(reader, **kwargs)  # type: ignore[arg-type]
    finally:
        writer.join(60)
        reader.close()


def read_all(source: StdinSource) -> list[Record]:
    records: list[Record] = []
    while not source.exhausted:
        records += source.poll(1.0)
    return records


def test_lines_become_records_numbered_by_line() -> None:
    chunks = [b'[1, 2]\n\n{"x": [3', b', 4]}\r\n', b"  \n[5, 6]"]  # no newline at the end
    with piped(chunks) as source:
        records = read_all(source)
    assert [(r.offset, r.value, r.too_large) for r in records] == [
        (0, b"[1, 2]", 0), (2, b'{"x": [3, 4]}', 0), (4, b"[5, 6]", 0)]


def test_binary_lines_are_base64() -> None:
    payload = np.arange(3, dtype="<f4").tobytes()
    with piped([base64.b64encode(payload) + b"\n", b"not base64!\n"], binary=True) as source:
        records = read_all(source)
    assert [r.value for r in records] == [payload, b"not base64!"]


def test_a_line_over_the_limit_is_marked_too_large_and_not_held() -> None:
    """A 30 MB line with a 1 MB limit: skipped in bounded memory, the lines around it kept."""
    limit, long_line = 1 << 20, 30_000_000
    piece = b"x" * (1 << 20)
    chunks = [b"[1, 2]\n", b"[3, 4]\n" + piece[:10]]
    chunks += [piece] * (long_line // len(piece))
    chunks += [piece[: long_line - 10 - len(piece) * (long_line // len(piece))] + b"\n[5]",
               b"\n" + b"y" * limit + b"\n" + b"z" * (limit + 1)]
    tracemalloc.start()
    try:
        with piped(chunks, max_line_bytes=limit) as source:
            records = read_all(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(r.offset, len(r.value), r.too_large) for r in records] == [
        (0, 6, 0), (1, 6, 0), (2, 0, long_line), (3, 3, 0), (4, limit, 0), (5, 0, limit + 1)]
    assert peak < 4 * limit + 2 * len(piece)  # the writer's chunks are traced too


def test_the_default_limit_is_16_mib() -> None:
    assert MAX_LINE_BYTES == 16 * 1024 * 1024


def test_the_runtime_dead_letters_a_too_large_line_and_goes_on() -> None:
    cfg = load_config(None, ["checkpoint.path=null", "model.n_components=1",
                             "model.warmup=2", "kafka.model_topic=null"], environ={})
    lines = [b"[1.0, 2.0]", b"[" + b"1.0, " * 300 + b"2.0]", b"[3.0, 4.0]", b"[5.0, 1.0]"]
    sink, registry = MemorySink(), CollectorRegistry()
    with piped([line + b"\n" for line in lines], max_line_bytes=100) as source:
        model, _ = restore_model(cfg, ())
        assert Runtime(cfg, source, sink, model, Metrics(registry)).run() == 0
    answered = [json.loads(value)["offset"] for _, _, value, _ in sink.on(cfg.kafka.output_topic)]
    assert answered == [0, 2, 3]
    [(_, _, value, header_items)] = sink.on(cfg.kafka.dead_letter_topic)
    headers = dict(header_items)
    assert value == b"" and headers["streamem.reason"] == b"too_large"
    assert headers["streamem.source.offset"] == b"1"
    assert registry.get_sample_value("streamem_dead_letter_messages_total",
                                     {"reason": "too_large"}) == 1
