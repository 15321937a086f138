"""Local files: the one atomic write (temp file, fsync, rename, fsync the folder), bounded reads.

A temp file is named ``.<name>.tmp-<random>`` next to its target, so that one left behind by a
crash (``kill -9`` between write and rename) is recognisably ours: :func:`remove_stale_temp_files`
deletes those of one target and nothing else.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "state.bin"
>>> atomic_write(target, b"v1"); read_bounded(target, 10)
b'v1'
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

TEMP_MARK = ".tmp-"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{TEMP_MARK}"


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Make ``path`` hold ``data``: afterwards, even after a power cut, it holds the old or the
    new content, never a mix. Creates missing parent folders; raises ``OSError``."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash only once its folder is synced
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files :func:`atomic_write` left next to ``path`` (only ours); those removed.

    Call it before the first write of a process that owns ``path``: any such file then belongs
    to a write that was killed.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    removed: list[Path] = []
    # Also the names earlier versions used: ".<name>." and mkstemp's 8 random characters.
    legacy = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}")
    try:
        candidates = list(folder.glob(f"{_glob_escape(_temp_prefix(target))}*"))
        candidates += [p for p in folder.glob(f".{_glob_escape(target.name)}.*")
                       if legacy.fullmatch(p.name)]
    except OSError:
        return removed
    for stale in candidates:
        if stale.is_file() and not stale.is_symlink():
            try:
                stale.unlink()
                removed.append(stale)
            except FileNotFoundError:
                pass
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The content of ``path``; ``ValueError`` when it is longer than ``max_bytes`` (the file is
    not read then), ``OSError`` when it cannot be read (``FileNotFoundError`` when absent)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{size:,} bytes is more than the limit of {max_bytes:,}")
        parts = [fh.read(size + 1)]  # read(n) allocates n bytes: never ask for more than size
        total = len(parts[0])
        while total > size and (more := fh.read(min(1 << 20, max_bytes + 1 - total))):
            parts.append(more)  # the file grew since fstat
            total += len(more)
    if total > max_bytes:
        raise ValueError(f"more than the limit of {max_bytes:,} bytes")
    return b"".join(parts) if len(parts) > 1 else parts[0]
