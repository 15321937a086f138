"""The ``f32`` and ``f64`` input formats: one raw little-endian vector per message."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamem.errors import DecodeError
from streamem.formats.points import FloatArray, InputFormat, Limits, Points


def _vector_format(name: str, dtype: np.dtype) -> InputFormat:
    def parse(value: bytes, n_features: int | None, limits: Limits) -> Points:
        if len(value) % dtype.itemsize:
            raise DecodeError("bad_binary", f"{len(value)} bytes is not a whole number of "
                                            f"{dtype.itemsize}-byte floats")
        if len(value) // dtype.itemsize > limits.max_features:
            raise DecodeError("too_many_features",
                              f"{len(value) // dtype.itemsize} features is more than "
                              f"input.max_features ({limits.max_features})")
        X = np.frombuffer(value, dtype=dtype).astype(np.float64).reshape(1, -1)
        return Points(X, [None], None, multi=False)

    def encode(X: FloatArray, ids: Sequence[int], ts_ms: float | None = None,
               multi: bool = False) -> bytes:
        """One point (1, d) as its raw vector (ids and time are not carried)."""
        X = np.asarray(X)
        if X.shape[0] != 1:
            raise ValueError(f"format {name} carries one point per message, not {X.shape[0]}")
        return np.ascontiguousarray(X[0], dtype=dtype).tobytes()

    bits = dtype.itemsize * 8
    return InputFormat(name, f"one point: d little-endian float{bits} (no id, no time)",
                       parse, encode, max_points_per_message=1)


F32 = _vector_format("f32", np.dtype("<f4"))
F64 = _vector_format("f64", np.dtype("<f8"))
