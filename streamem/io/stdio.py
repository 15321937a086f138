"""Standard input as a source and standard output as a sink, for pipes and local runs.

Each input line is one message (base64 of the bytes for the binary formats); its offset is its
line number, counted from 0; a line over ``max_line_bytes`` is dead-lettered as ``too_large``.
Output values go to stdout one per line; anything addressed to another topic (dead letters,
anomaly copies, model parameters) goes to stderr as one JSON line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import select
import sys
import time
from collections.abc import Iterable, Mapping
from typing import BinaryIO

from streamem.errors import TransportError
from streamem.io.base import Headers, Message, Record, TopicPartition, send_each

MAX_LINE_BYTES = 16 * 1024 * 1024  #: default longest input line (16 MiB)
READ_BYTES = 1 << 16


class StdinSource:
    """Lines of ``stream`` as records of partition 0 of ``topic``; commits are no-ops.

    Reading is linear in the input and holds at most ``max_line_bytes`` of a line: a longer
    line is skipped to its end and handed on as an empty record marked ``too_large`` (the
    runtime dead-letters it).

    Parameters
    ----------
    stream : binary file with a file descriptor
        Usually ``sys.stdin.buffer``; read with ``select`` so :meth:`poll` honours its timeout.
    binary : bool
        Lines are base64 text of binary messages (``f32``, ``f64``, ``block`` formats).
    batch_size : int
        Most records per :meth:`poll`.
    max_line_bytes : int
        Longest line kept (without its newline).
    """

    def __init__(self, stream: BinaryIO | None = None, *, topic: str = "stdin",
                 binary: bool = False, batch_size: int = 2000,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._fd = (stream or sys.stdin.buffer).fileno()
        self._topic = topic
        self._binary = binary
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes
        self._parts: list[bytes] = []  # the current line so far
        self._held = 0  # bytes in _parts
        self._skipped = 0  # > 0 while skipping a line over the limit: its bytes so far
        self._line_no = 0
        self._eof = False
        self._ready: list[Record] = []

    def poll(self, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        while len(self._ready) < self._batch_size and not self._eof:
            wait = 0.0 if self._ready else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._fd], [], [], wait)
            if not readable:
                break
            self._read_chunk()
        batch, self._ready = self._ready[: self._batch_size], self._ready[self._batch_size:]
        return batch

    def _read_chunk(self) -> None:
        chunk = os.read(self._fd, READ_BYTES)
        if not chunk:
            self._eof = True
            if self._parts or self._skipped:
                self._end_line()
            return
        *complete, tail = chunk.split(b"\n")
        if complete:
            self._add(complete[0])  # ends the line begun in earlier chunks
            self._end_line()
            limit = self._max_line_bytes
            for line in complete[1:]:
                if len(line) <= limit:
                    self._finish(line, 0)
                else:
                    self._finish(b"", len(line))
        self._add(tail)

    def _add(self, piece: bytes) -> None:
        """Append ``piece`` to the current line, or skip it once the line is over the limit."""
        if not piece:
            return
        if self._skipped:
            self._skipped += len(piece)
        elif self._held + len(piece) > self._max_line_bytes:
            self._skipped = self._held + len(piece)
            self._parts, self._held = [], 0
        else:
            self._parts.append(piece)
            self._held += len(piece)

    def _end_line(self) -> None:
        line, skipped = b"".join(self._parts), self._skipped
        self._parts, self._held, self._skipped = [], 0, 0
        self._finish(line, skipped)

    def _finish(self, line: bytes, too_large: int) -> None:
        """Hand on one line (``too_large``: the length of a line that was not kept)."""
        if too_large:
            self._ready.append(Record(self._topic, 0, self._line_no, None, b"",
                                      timestamp_ms=int(time.time() * 1000), too_large=too_large))
        else:
            line = line.rstrip(b"\r")
            if line.strip():
                self._ready.append(Record(self._topic, 0, self._line_no, None, self._value(line),
                                          timestamp_ms=int(time.time() * 1000)))
        self._line_no += 1

    def _value(self, line: bytes) -> bytes:
        if not self._binary:
            return line
        try:
            return base64.b64decode(line, validate=True)
        except binascii.Error:
            return line  # decoding rejects it and it goes to the dead letters

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def seek_to_committed(self) -> None:
        pass  # stdout delivery cannot be retried; what was read stays read

    def assignment(self) -> set[TopicPartition]:
        return {(self._topic, 0)}

    def lags(self) -> dict[TopicPartition, int]:
        return {(self._topic, 0): len(self._ready)}

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._ready

    def close(self) -> None:
        pass


class StdoutSink:
    """Values for ``output_topic`` to ``out``, one per line; other topics to ``err`` as JSON.

    A stderr line looks like ``{"topic": ..., "reason": ..., "key": ..., "value": ...,
    "headers": {...}}``; bytes that are not UTF-8 are shown as base64.
    """

    def __init__(self, output_topic: str, out: BinaryIO | None = None,
                 err: BinaryIO | None = None) -> None:
        self._output_topic = output_topic
        self._out = out or sys.stdout.buffer
        self._err = err or sys.stderr.buffer

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> None:
        """Write one message; lines carry no timestamp, so ``timestamp_ms`` is not written."""
        try:
            if topic == self._output_topic:
                self._out.write(value + b"\n")
            else:
                self._err.write(_side_line(topic, key, value, headers))
        except (BrokenPipeError, ValueError) as exc:
            raise TransportError(f"cannot write to the output stream: {exc}") from exc

    def send_many(self, topic: str, messages: Iterable[Message]) -> list[tuple[int, str]]:
        return send_each(self, topic, messages)

    def flush(self, timeout_s: float) -> None:
        try:
            self._out.flush()
            self._err.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise TransportError(f"cannot flush the output stream: {exc}") from exc

    def close(self) -> None:
        try:
            self.flush(0.0)
        except TransportError:
            pass


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii")


def _side_line(topic: str, key: bytes | None, value: bytes, headers: Headers) -> bytes:
    head = {k: _text(v) for k, v in headers}
    line = {"topic": topic, "reason": head.get("streamem.reason"), "key": _text(key),
            "value": _text(value), "headers": head}
    return json.dumps(line).encode() + b"\n"
