"""The shared model's record conventions: who wrote it, which version, one key per group."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence

WRITER_HEADER = "streamem-writer"
VERSION_HEADER = "streamem-model-version"
#: Larger than any delta or state a bounded batch makes (the topics are created with it).
MAX_RECORD_BYTES = 16 << 20


def instance_id(client_id: str) -> str:
    """A name unique to this process: ``client_id``, host, pid and a random suffix."""
    return f"{client_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def state_key(group_id: str) -> bytes:
    """The state topic's one key: the group's."""
    return group_id.encode()


def state_headers(writer: str, version: int) -> list[tuple[str, bytes]]:
    return [(WRITER_HEADER, writer.encode()), (VERSION_HEADER, str(version).encode())]


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The text of header ``name``; None when absent."""
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None
