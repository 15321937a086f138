"""``.npz`` archives in memory: written by numpy, read back with every size bounded first.

:func:`dumps` writes what ``np.savez`` writes (uncompressed members, no pickles).
:class:`Archive` reads only that: a member that is compressed, unknown, duplicated, declares more
bytes than its caller allows, or whose ``.npy`` header does not match its length is refused
with ``ValueError`` before anything is decompressed or allocated, so a hostile archive (a zip
bomb, a header claiming a huge shape) costs no more memory than its own bytes.

>>> a = Archive(dumps({"x": np.arange(3.0)}), allowed={"x"})
>>> a.array("x", max_bytes=1024, dtypes=("<f8",))
array([0., 1., 2.])
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Collection, Mapping

import numpy as np

#: numpy's .npy header is at most this long (format 1.0: 64 KiB; later formats rarely more).
MAX_HEADER_BYTES = 1 << 16


def dumps(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The arrays as an uncompressed ``.npz`` archive."""
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


class Archive:
    """The members of an ``.npz`` archive held in ``data``, read one array at a time.

    Parameters
    ----------
    data : the archive's bytes.
    allowed : member names (without ``.npy``) that may appear; any other is an error.
    """

    def __init__(self, data: bytes, allowed: Collection[str]) -> None:
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ValueError(f"not a readable .npz archive ({exc})") from None
        if infos and min(info.header_offset for info in infos) != 0:
            # Only an archive inside another (the model in a truncated checkpoint) looks so.
            raise ValueError("not a readable .npz archive (it does not start at byte 0)")
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename.removesuffix(".npy")
            if name not in allowed or not info.filename.endswith(".npy"):
                raise ValueError(f"unexpected member {info.filename!r}")
            if name in self._members:
                raise ValueError(f"member {info.filename!r} appears twice")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise ValueError(f"member {info.filename!r} is compressed (streamem never "
                                 "compresses, so it was not written by streamem)")
            self._members[name] = info

    @property
    def names(self) -> set[str]:
        return set(self._members)

    def array(self, name: str, max_bytes: int, dtypes: Collection[str]) -> np.ndarray:
        """Member ``name`` as a new writable array.

        Raises ``ValueError`` when it is missing, longer than ``max_bytes``, not one of
        ``dtypes`` (``np.dtype.str``, e.g. ``"<f8"``; ``"U"``: any text), or damaged.
        """
        info = self._members.get(name)
        if info is None:
            raise ValueError(f"array {name!r} is missing")
        if info.file_size > max_bytes:
            raise ValueError(f"array {name!r} declares {info.file_size:,} bytes, more than the "
                             f"{max_bytes:,} its shape allows")
        try:
            with self._zip.open(info) as fh:
                raw = fh.read(info.file_size)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ValueError(f"array {name!r} cannot be read ({exc})") from None
        return _parse_npy(name, raw, dtypes)


def _parse_npy(name: str, raw: bytes, dtypes: Collection[str]) -> np.ndarray:
    """An ``.npy`` file's array, checking its header against its length before any copy."""
    fp = io.BytesIO(raw[:MAX_HEADER_BYTES])
    try:
        major, _ = np.lib.format.read_magic(fp)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fp)
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError) as exc:
        raise ValueError(f"array {name!r} has a damaged header ({exc})") from None
    text = dtype.kind == "U" and "U" in dtypes
    if dtype.hasobject or not (text or dtype.str in dtypes):
        raise ValueError(f"array {name!r} has dtype {dtype.str}, expected one of "
                         f"{', '.join(sorted(dtypes))}")
    if any(int(n) < 0 for n in shape):
        raise ValueError(f"array {name!r} has a negative dimension in shape {tuple(shape)}")
    count = 1
    for n in shape:
        count *= int(n)
    start = fp.tell()
    if count * dtype.itemsize != len(raw) - start:
        raise ValueError(f"array {name!r}: shape {tuple(shape)} needs {count * dtype.itemsize:,} "
                         f"bytes, the member holds {len(raw) - start:,}")
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")
