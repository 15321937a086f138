"""The README's "Messages" section is enough to read and write the formats without Python.

The ``SEMR`` decoder here knows nothing but the offsets, sizes and types written in the README's
tables; it must read what streamem writes.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streamem.formats import INPUT_FORMATS, OUTPUT_FORMATS, decode, encode_results
from streamem.formats.block import anomalous_rows_block, decode_result_block, encode_block

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MESSAGES = README[README.index("## Messages"):README.index("**Bounds.**")]
TYPES = {"bytes": None, "uint8": "<u1", "int32": "<i4", "uint32": "<u4", "uint64": "<u8",
         "int64": "<i8", "float32": "<f4"}


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table whose header row starts with ``heading``."""
    lines = MESSAGES[MESSAGES.index(heading):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def format_names(after: str) -> list[str]:
    section = MESSAGES[MESSAGES.index(after):]
    return [row[0].strip("`") for row in table_in(section, "| format |")]


def table_in(text: str, heading: str) -> list[list[str]]:
    lines = text[text.index(heading):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_format_tables_list_the_registries():
    assert format_names("**Input**") == list(INPUT_FORMATS)
    assert format_names("**Output**") == list(OUTPUT_FORMATS)


def readme_decode(value: bytes) -> dict:
    """Decode a SEMR message with only the README's header and column tables."""
    header = {}
    for offset, size, kind, field in table("| offset | size | type | field |"):
        name = re.match(r"[a-z_]+", field).group()  # the field's first word names it
        at, size = int(offset), int(size)
        chunk = value[at:at + size]
        header[name] = chunk if kind == "bytes" else int(np.frombuffer(chunk, TYPES[kind])[0])
    assert header["magic"] == b"SEMR" and header["version"] == 1
    n, k, flags = header["n"], header["k"], header["flags"]
    at, out = 32, {}
    for column, kind, per_point, present in table("| column | type | bytes per point |"):
        bit = re.match(r"if flags bit (\d)", present)
        if bit and not flags >> int(bit.group(1)) & 1:
            continue
        count = n * (k if per_point == "4k" else 1)
        width = count * np.dtype(TYPES[kind]).itemsize
        out[column] = np.frombuffer(value, TYPES[kind], count, at)
        at += width
    assert at == len(value)
    return {**header, **out}


def result(n: int, k: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    resp = rng.dirichlet(np.ones(k), size=n)
    labels = resp.argmax(axis=1)
    return SimpleNamespace(labels=labels, probabilities=resp[np.arange(n), labels],
                           responsibilities=resp, log_likelihood=rng.normal(-5, 2, size=n),
                           anomaly=rng.random(n) < 0.5, warmup=rng.random(n) < 0.5)


@pytest.mark.parametrize("ids, refused, top_k", [
    (True, False, 3), (False, False, 0), (True, True, 2), (False, True, 1)])
def test_a_reader_written_from_the_readme_decodes_a_real_block(ids, refused, top_k):
    X = np.random.default_rng(1).normal(size=(9, 2))
    if refused:
        X[4, 0] = 1e300  # refused: the answer then has an index column
    value = encode_block(X, ids=range(100, 109), dtype="f64") if ids else \
        b'{"points": [%s]}' % b",".join(b'{"id": "p%d", "x": [%r, %r]}' % (i, *x)
                                          for i, x in enumerate(X.tolist()))
    points = decode(value, "block" if ids else "json", 2)
    res = result(len(points), 4, seed=2)
    [out] = encode_results([points], res, fmt="block", top_k=top_k, model_version=2**40 + 3,
                           sources=[("in", 5, 2**33)])
    for value in (out, anomalous_rows_block(out)):
        mine, theirs = readme_decode(value), decode_result_block(value)
        assert (mine["model_version"], mine["partition"], mine["offset"]) == \
            (theirs["model_version"], theirs["partition"], theirs["offset"])
        assert ("id" in mine) == ids and ("index" in mine) == (mine["flags"] & 2 == 2)
        for name, column in mine.items():
            if isinstance(column, np.ndarray):
                np.testing.assert_array_equal(column, np.ravel(theirs[name]))
    first = readme_decode(out)
    assert first["n"] == (8 if refused else 9)
    assert first["model_version"] == 2**40 + 3 and first["offset"] == 2**33
    if refused:
        assert first["index"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]


def test_the_worked_example_is_what_streamem_writes():
    example = MESSAGES[MESSAGES.index("```text"):]
    example = example[:example.index("```\n", 4)]
    lines = example.splitlines()[1:]
    written = bytes.fromhex("".join(re.split(r"\s{3,}", line)[0] for line in lines))
    points = decode(encode_block(np.array([[0.5, 1.0], [2.0, -1.0]]), ids=[7, 8]), "block", 2)
    res = SimpleNamespace(labels=np.array([1, 0]), probabilities=np.array([0.75, 1.0]),
                          responsibilities=np.array([[0.25, 0.75], [1.0, 0.0]]),
                          log_likelihood=np.array([-1.5, -40.0]),
                          anomaly=np.array([False, True]), warmup=np.array([False, False]))
    [out] = encode_results([points], res, fmt="block", top_k=1, model_version=42,
                           sources=[("in", 3, 1000)])
    assert written == out and len(out) == 92
    assert readme_decode(written)["anomaly"].tolist() == [0, 1]


def test_the_header_table_has_every_byte():
    rows = table("| offset | size | type | field |")
    at = 0
    for offset, size, _, _ in rows:
        assert int(offset) == at, "a gap or an overlap in the README's SEMR header table"
        at += int(size)
    assert at == 32 == struct.calcsize("<4sBBBBIiQq")
