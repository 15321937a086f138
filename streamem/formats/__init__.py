"""Message formats: registries of input and output formats, one module each.

:data:`INPUT_FORMATS` and :data:`OUTPUT_FORMATS` map a format's name (``input.format``,
``output.format``, ``streamem produce --format``) to the module attribute that implements it,
an :class:`~streamem.formats.points.InputFormat` or
:class:`~streamem.formats.points.OutputFormat`. The modules are imported on first use, so the
config and the command line read the names without loading numpy. A new format is one new
module (and its tests) plus its line here.

Shared by every format (:mod:`streamem.formats.points`): :class:`Points` (the checked points of
one message), :class:`Limits` (what one message may claim, checked before it is claimed) and
the checks. Headers of output and dead-letter messages: :mod:`streamem.formats.headers`.

>>> p = decode(b'{"id": "a", "x": [1, 2.5], "ts": 1700000000000}', "json", 2)
>>> p.X, p.ids, p.multi
(array([[1. , 2.5]]), ['a'], False)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamem.errors import DecodeError
    from streamem.formats.points import InputFormat, Limits, OutputFormat, Points

#: Input formats: name -> ``module:attribute`` of its :class:`InputFormat`.
INPUT_FORMATS: dict[str, str] = {
    "json": "streamem.formats.json_in:FORMAT",
    "f32": "streamem.formats.binary:F32",
    "f64": "streamem.formats.binary:F64",
    "block": "streamem.formats.block:INPUT",
}
#: Output formats: name -> ``module:attribute`` of its :class:`OutputFormat`.
OUTPUT_FORMATS: dict[str, str] = {
    "json": "streamem.formats.json_out:FORMAT",
    "block": "streamem.formats.block:OUTPUT",
}
#: Dead-letter reasons of a message that does not decode (:class:`~streamem.errors.DecodeError`).
REASONS = ("bad_json", "bad_schema", "empty", "wrong_dimension", "non_finite", "bad_binary",
           "too_large", "too_many_points", "too_many_features", "out_of_range")
#: Dead-letter reasons the runtime adds: the model refused the points (after its rollback),
#: decoding or encoding the message failed unexpectedly (a bug, logged with its traceback), or
#: the Kafka client could not read the message (a record batch that does not decompress).
RUNTIME_REASONS = ("model_rejected", "internal_error", "unreadable")


def _load(registry: dict[str, str], name: str, what: str) -> Any:
    try:
        module, _, attribute = registry[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown {what} format {name!r}; expected one of "
                         f"{tuple(registry)}") from None
    return getattr(importlib.import_module(module), attribute)


def input_format(name: str) -> InputFormat:
    """The input format called ``name``; ValueError when there is none (a programming error)."""
    fmt: InputFormat = _load(INPUT_FORMATS, name, "input")
    return fmt


def output_format(name: str) -> OutputFormat:
    """The output format called ``name``; ValueError when there is none."""
    fmt: OutputFormat = _load(OUTPUT_FORMATS, name, "output")
    return fmt


def decode(value: bytes | None, fmt: str, n_features: int | None,
           limits: Limits | None = None) -> Points:
    """One message value as checked points; see :meth:`InputFormat.decode`."""
    return input_format(fmt).decode(value, n_features, limits)


def decode_all(values: Sequence[bytes | None], fmt: str, n_features: int | None,
               limits: Limits | None = None) -> list[Points | DecodeError]:
    """Every value of a poll batch decoded; see :meth:`InputFormat.decode_all`."""
    return input_format(fmt).decode_all(values, n_features, limits)


def encode_results(messages: Sequence[Points], result: Any, *, fmt: str, top_k: int,
                   model_version: int, sources: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """The output messages of a poll batch; see :meth:`OutputFormat.encode_all`."""
    return output_format(fmt).encode_all(messages, result, top_k=top_k,
                                         model_version=model_version, sources=sources)
