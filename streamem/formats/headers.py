"""Headers of output and dead-letter messages.

A message streamem writes keeps the headers of the input message it answers (trace ids and the
like) and adds its own ``streamem.*`` headers, which replace any incoming header of the same
name.
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = list[tuple[str, bytes]]
_MAX_DETAIL_BYTES = 1024
#: A dead letter carries its input's headers while they take at most this many bytes in a
#: Kafka record; beyond, none of them (``streamem.headers_dropped`` says how many): a dead
#: letter must go out whatever its input held, value and headers alike.
MAX_CARRIED_BYTES = 64 * 1024


def wire_size(headers: Sequence[tuple[str, bytes]]) -> int:
    """The bytes ``headers`` take in a Kafka record: each name and value after its length
    (a zigzag varint), 2 bytes for an empty header.

    >>> wire_size([("trace", b"abc")]), wire_size([("", b"")] * 1000)
    (10, 2000)
    """
    total = 0
    for name, value in headers:
        n = len(name.encode())
        total += _varint_size(n) + n + _varint_size(len(value)) + len(value)
    return total


def _varint_size(n: int) -> int:
    """Bytes of the zigzag varint of a length ``n`` ≥ 0 (7 bits a byte of 2·n)."""
    return max(1, ((2 * n).bit_length() + 6) // 7)


def merged(incoming: Sequence[tuple[str, bytes]] | None, own: Headers) -> Headers:
    """The ``incoming`` headers without those ``own`` replaces, then ``own``."""
    if not incoming:
        return own
    names = {name for name, _ in own}
    return [(n, v) for n, v in incoming if n not in names] + own


def result_headers(model_version: int, incoming: Sequence[tuple[str, bytes]] | None = None
                   ) -> Headers:
    """Headers of an output message: the input's ``incoming`` ones and the model version."""
    return merged(incoming, [("streamem.model_version", str(int(model_version)).encode())])


def dead_letter_headers(reason: str, detail: str, topic: str, partition: int,
                        offset: int, bad_points: Sequence[int] | None = None,
                        incoming: Sequence[tuple[str, bytes]] | None = None) -> Headers:
    """Headers of a dead-letter message: the input's ``incoming`` ones (none past
    ``MAX_CARRIED_BYTES``) and why it is one; ``detail`` is cut to 1 KiB of UTF-8.

    ``bad_points``: the positions of the refused points of a message whose other points were
    answered, written as ``streamem.bad_points`` ranges (``"1,4-6"``); None for a whole message.
    """
    headers = [
        ("streamem.reason", reason.encode()),
        ("streamem.detail", _cut_utf8(detail, _MAX_DETAIL_BYTES)),
        ("streamem.source.topic", topic.encode()),
        ("streamem.source.partition", str(int(partition)).encode()),
        ("streamem.source.offset", str(int(offset)).encode()),
    ]
    if bad_points is not None:
        headers.append(("streamem.bad_points", _ranges(bad_points).encode()))
    if incoming and wire_size(incoming) > MAX_CARRIED_BYTES:
        headers.append(("streamem.headers_dropped", str(len(incoming)).encode()))
        incoming = None
    return merged(incoming, headers)


def _ranges(positions: Sequence[int]) -> str:
    """Sorted positions as ranges: [1, 4, 5, 6] -> ``"1,4-6"``."""
    out: list[str] = []
    values = sorted(positions)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str) -> list[int]:
    """The positions of a ``streamem.bad_points`` header: ``"1,4-6"`` -> [1, 4, 5, 6]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes without splitting a character."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode()
