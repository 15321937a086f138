"""The formats: every input format, every DecodeError reason, output records and headers."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamem.errors import DecodeError
from streamem.formats import REASONS, decode, decode_all, encode_results, json_in
from streamem.formats.block import (
    anomalous_rows_block,
    decode_result_block,
    encode_block,
    encode_result_block,
)
from streamem.formats.headers import dead_letter_headers, result_headers, wire_size
from streamem.formats.json_out import encode_result
from streamem.formats.points import Limits, Points, finite_log_likelihood

RECORD_KEYS = {"id", "cluster", "probability", "log_likelihood", "anomaly", "warmup",
               "model_version", "topic", "partition", "offset", "index"}


def reason_of(value: bytes | None, fmt: str = "json", n_features: int | None = 2) -> str:
    with pytest.raises(DecodeError) as err:
        decode(value, fmt, n_features)
    assert err.value.reason in REASONS
    return err.value.reason


# --- formats that decode ---------------------------------------------------------------------


def test_single_object_with_id_and_ts():
    p = decode(b'{"id": "sensor-1", "x": [1, 2.5, -3e2], "ts": 1700000000123}', "json", 3)
    np.testing.assert_array_equal(p.X, [[1.0, 2.5, -300.0]])
    assert p.X.dtype == np.float64 and p.X.shape == (1, 3)
    assert p.ids == ["sensor-1"] and not p.multi
    np.testing.assert_array_equal(p.ts_ms, [1700000000123.0])


def test_single_object_without_id_or_ts():
    p = decode(b'{"x": [0.5]}', "json", None)
    assert p.ids == [None] and p.ts_ms is None and len(p) == 1


def test_integer_ids_stay_integers():
    p = decode(b'{"id": 12345678901234, "x": [1, 2]}', "json", 2)
    assert p.ids == [12345678901234] and isinstance(p.ids[0], int)


def test_bare_array_is_one_point():
    p = decode(b"[1, 2, 3]", "json", 3)
    np.testing.assert_array_equal(p.X, [[1, 2, 3]])
    assert p.ids == [None] and p.ts_ms is None and not p.multi


def test_array_of_arrays_is_a_batch():
    p = decode(b"[[1, 2], [3, 4], [5, 6]]", "json", 2)
    np.testing.assert_array_equal(p.X, [[1, 2], [3, 4], [5, 6]])
    assert p.ids == [None, None, None] and p.ts_ms is None and p.multi


def test_one_element_batch_is_still_multi():
    assert decode(b"[[1, 2]]", "json", 2).multi
    assert decode(b'{"points": [{"x": [1, 2]}]}', "json", 2).multi


def test_array_of_objects_is_a_batch_with_ids_and_missing_ts_as_nan():
    p = decode(b'[{"id": "a", "x": [1, 2], "ts": 10}, {"x": [3, 4]}, {"id": 7, "x": [5, 6],'
               b' "ts": 12.5}]', "json", 2)
    np.testing.assert_array_equal(p.X, [[1, 2], [3, 4], [5, 6]])
    assert p.ids == ["a", None, 7] and p.multi
    np.testing.assert_array_equal(p.ts_ms, [10.0, np.nan, 12.5])


def test_points_wrapper():
    p = decode(b'{"points": [[1, 2], [3, 4]]}', "json", 2)
    np.testing.assert_array_equal(p.X, [[1, 2], [3, 4]])
    q = decode(b'{"points": [{"x": [1, 2], "id": "q"}]}', "json", 2)
    assert q.ids == ["q"] and q.multi


def test_extra_keys_are_ignored():
    p = decode(b'{"x": [1, 2], "label": "cat", "meta": {"a": [true]}}', "json", 2)
    np.testing.assert_array_equal(p.X, [[1, 2]])


def test_big_integers_become_floats():
    value = b'{"x": [1, 100000000000000000000000000000]}'
    p = decode(value, "json", 2, Limits(max_abs_value=1e30))
    np.testing.assert_array_equal(p.X, [[1.0, 1e29]])
    with pytest.raises(DecodeError) as err:
        decode(value, "json", 2)
    assert err.value.reason == "out_of_range"


def test_strings_that_say_true_outside_x_do_not_break_decoding():
    p = decode(b'[{"id": "true", "x": [1, 2]}, {"id": "false", "x": [3, 4]}]', "json", 2)
    np.testing.assert_array_equal(p.X, [[1, 2], [3, 4]])
    assert p.ids == ["true", "false"]


@pytest.mark.parametrize(("fmt", "dtype"), [("f32", "<f4"), ("f64", "<f8")])
def test_raw_vectors(fmt, dtype):
    x = np.array([1.5, -2.25, 3e5], dtype=dtype)
    p = decode(x.tobytes(), fmt, 3)
    np.testing.assert_array_equal(p.X, x.astype(np.float64)[None, :])
    assert p.X.dtype == np.float64 and p.ids == [None] and p.ts_ms is None and not p.multi


def test_raw_vector_bytes_are_little_endian():
    assert decode(struct.pack("<2d", 1.0, 2.0), "f64", 2).X.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_block_with_ids(dtype):
    X = np.arange(12, dtype=np.float64).reshape(4, 3) / 4
    p = decode(encode_block(X, ids=[10, 11, 2**64 - 1, 0], dtype=dtype), "block", 3)
    np.testing.assert_array_equal(p.X, X)
    assert p.ids == [10, 11, 2**64 - 1, 0] and p.multi and p.ts_ms is None


def test_block_layout_is_the_documented_one():
    value = encode_block(np.array([[1.0, 2.0]]), ids=[5], dtype="f64")
    assert value[:4] == b"SEM1" and value[4:5] == b"d" and value[5:8] == b"\0\0\0"
    assert struct.unpack_from("<IIQ2d", value, 8) == (1, 2, 5, 1.0, 2.0)
    assert len(value) == 16 + 8 + 16


def test_block_ids_default_to_row_numbers():
    assert decode(encode_block(np.zeros((3, 1))), "block", 1).ids == [0, 1, 2]


def test_decoded_arrays_are_writable_copies():
    value = np.array([1.0, 2.0]).tobytes()
    p = decode(value, "f64", 2)
    p.X[0, 0] = 9.0
    assert decode(value, "f64", 2).X[0, 0] == 1.0


def test_n_features_none_accepts_any_width():
    assert decode(b"[1, 2, 3, 4]", "json", None).X.shape == (1, 4)


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown input format"):
        decode(b"[1]", "csv", None)


# --- every reason ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"{", b"[1, 2", b"nope", b"\xff\xfe\x00", b"{'x': [1]}",
                                   b"[" * 100_000])
def test_bad_json(value):
    assert reason_of(value) == "bad_json"


@pytest.mark.parametrize("value", [
    b'"text"', b"3", b"null", b"true",
    b'{"y": [1, 2]}', b'{"x": 5}', b'{"x": "1,2"}', b'{"x": {"a": 1}}',
    b'{"x": [1, true]}', b'{"x": [true, false]}', b'[1, false]',
    b'{"x": ["1", "2"]}', b'{"x": [1, null]}', b'{"x": [[1, 2]]}', b"[[[1, 2]]]",
    b"[1, [2]]", b'{"x": [1, {"v": 2}]}',
    b'{"x": [1, 2], "id": 1.5}', b'{"x": [1, 2], "id": true}', b'{"x": [1, 2], "id": [1]}',
    b'{"x": [1, 2], "ts": "now"}', b'{"x": [1, 2], "ts": true}', b'{"x": [1, 2], "ts": NaN}',
    b'{"x": [1, 2], "ts": Infinity}',
    b'{"x": [1, 2], "ts": -1}', b'{"x": [1, 2], "ts": -1e307}', b'{"x": [1, 2], "ts": 1e300}',
    b'{"points": 3}', b'{"points": {"x": [1, 2]}}', b'[{"x": [1, "2"]}, [3, 4]]',
    b'[{"id": 1}, {"x": [1, 2], "ts": -5}]', b'[[1, "a"], {"x": [3, 4]}]',
])
def test_bad_schema(value):
    assert reason_of(value) == "bad_schema"


@pytest.mark.parametrize(("value", "bad"), [
    (b'[{"x": [1, 2]}, [3, 4]]', {1: "bad_schema"}),
    (b'[[1, 2], {"x": [3, 4]}]', {1: "bad_schema"}),
    (b'[{"x": [1, 2]}, {"id": 1}]', {1: "bad_schema"}),
    (b'[[1, 2], [3, "4"]]', {1: "bad_schema"}),
    (b'[[1, 2], [3, true]]', {1: "bad_schema"}),
    (b'[{"x": [1, 2]}, 5]', {1: "bad_schema"}),
    (b'[{"x": [1, 2], "ts": -1e307}, {"x": [3, 4], "ts": 5}]', {0: "bad_schema"}),
    (b'[[1, 2], [3]]', {1: "wrong_dimension"}),
    (b'{"points": [[1], [2, 3], [4, 5]]}', {0: "wrong_dimension"}),
    (b'[[1, 2], [NaN, 1], [3, 4], [1e999, 0], [-Infinity, 5], [1e200, 0], [0, -2e15]]',
     {1: "non_finite", 3: "non_finite", 4: "non_finite", 5: "out_of_range", 6: "out_of_range"}),
    (b'[[1, 2], [' + b"0, " * 2000 + b"0]]", {1: "too_many_features"}),
    (b'[[1, 2], [3, 1' + b"0" * 400 + b"]]", {1: "out_of_range"}),
    (b'[[1, 2], []]', {1: "empty"}),
])
def test_a_multi_point_message_keeps_its_good_points(value, bad):
    p = decode(value, "json", 2)
    n = len(p) + len(bad)
    assert [pos for pos, _, _ in p.rejected] == sorted(bad)
    assert {pos: reason for pos, reason, _ in p.rejected} == bad
    assert p.positions().tolist() == [i for i in range(n) if i not in bad]
    assert p.X.shape == (len(p), 2) and len(p.ids) == len(p)
    assert np.isfinite(p.X).all()


def test_good_points_of_a_block_are_kept_with_their_positions():
    X = np.arange(12, dtype=float).reshape(6, 2)
    X[1, 0], X[4, 1] = np.nan, 1e16
    p = decode(encode_block(X, ids=[10, 11, 12, 13, 14, 15], dtype="f64"), "block", 2)
    assert p.ids == [10, 12, 13, 15] and p.positions().tolist() == [0, 2, 3, 5]
    assert [(pos, reason) for pos, reason, _ in p.rejected] == [(1, "non_finite"),
                                                                 (4, "out_of_range")]


@pytest.mark.parametrize(("value", "fmt"), [
    (b"", "json"), (None, "json"), (b"[]", "json"), (b'{"x": []}', "json"),
    (b'{"points": []}', "json"), (b"[[]]", "json"), (b"[[], []]", "json"),
    (b"", "f32"), (b"", "f64"), (b"", "block"),
])
def test_empty(value, fmt):
    assert reason_of(value, fmt) == "empty"


def test_empty_block():
    assert reason_of(encode_block(np.zeros((0, 2))), "block") == "empty"
    assert reason_of(encode_block(np.zeros((3, 0))), "block") == "empty"


@pytest.mark.parametrize(("value", "fmt"), [
    (b"[1, 2, 3]", "json"), (b'{"x": [1]}', "json"), (b"[[1, 2, 3], [4, 5, 6]]", "json"),
    (np.zeros(3, "<f4").tobytes(), "f32"), (np.zeros(1, "<f8").tobytes(), "f64"),
    (encode_block(np.zeros((2, 3))), "block"),
])
def test_wrong_dimension(value, fmt):
    assert reason_of(value, fmt, n_features=2) == "wrong_dimension"


@pytest.mark.parametrize("value", [b"[[1, 2], [3]]", b'[{"x": [1, 2]}, {"x": [3, 4, 5]}]',
                                   b'{"points": [[1], [2, 3]]}'])
def test_ragged_rows_are_wrong_dimension_even_without_n_features(value):
    p = decode(value, "json", None)
    assert [reason for _, reason, _ in p.rejected] == ["wrong_dimension"]


def test_non_finite_names_the_rows():
    with pytest.raises(DecodeError) as err:
        decode(b"[[1e300, 2], [NaN, 1], [3e15, 4], [1e999, 0], [-Infinity, 5]]", "json", 2)
    assert err.value.reason == "out_of_range"
    assert "rows 0, 2" in err.value.detail
    with pytest.raises(DecodeError) as err:
        decode(b"[[NaN, 1], [3e15, 4], [1e999, 0], [-Infinity, 5]]", "json", 2)
    assert err.value.reason == "non_finite"
    assert "rows 0, 2, 3" in err.value.detail


def test_non_finite_lists_at_most_ten_rows():
    X = np.full((25, 2), np.nan)
    with pytest.raises(DecodeError) as err:
        decode(encode_block(X, dtype="f64"), "block", 2)
    assert err.value.reason == "non_finite"
    assert "rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more" in err.value.detail


@pytest.mark.parametrize(("value", "fmt"), [
    (b'{"x": [1, NaN]}', "json"), (b"[Infinity, 1]", "json"), (b"[1e999, 1]", "json"),
    (np.array([1, np.inf], "<f4").tobytes(), "f32"),
    (np.array([np.nan, 1]).tobytes(), "f64"),
])
def test_non_finite(value, fmt):
    assert reason_of(value, fmt) == "non_finite"


def _block(magic=b"SEM1", code=b"f", reserved=b"\0\0\0", n=2, d=2, tail_delta=0):
    body = bytes(8 * n + (4 if code == b"f" else 8) * n * d + tail_delta)
    return struct.pack("<4sc3sII", magic, code, reserved, n, d) + body


@pytest.mark.parametrize(("value", "fmt"), [
    (b"\0\0\0", "f32"), (bytes(7), "f32"), (bytes(12), "f64"),
    (b"SEM", "block"), (bytes(15), "block"),
    (_block(magic=b"SEM2"), "block"), (_block(magic=b'{"x"'), "block"),
    (_block(code=b"h"), "block"), (_block(reserved=b"\0\1\0"), "block"),
    (_block(tail_delta=-1), "block"), (_block(tail_delta=4), "block"),
    (_block(code=b"d")[:-8], "block"),
])
def test_bad_binary(value, fmt):
    assert reason_of(value, fmt) == "bad_binary"


# --- bounds: checked before the memory they guard is claimed --------------------------------


def _huge_block(n: int, d: int) -> bytes:
    return struct.pack("<4sc3sII", b"SEM1", b"d", bytes(3), n, d) + bytes(64)


@pytest.mark.parametrize(("value", "fmt", "reason"), [
    (_huge_block(2**32 - 1, 2), "block", "too_many_points"),
    (_huge_block(2, 2**32 - 1), "block", "too_many_features"),
    (_huge_block(10_001, 1), "block", "too_many_points"),
    (_huge_block(1, 1025), "block", "too_many_features"),
    (bytes(4 * 1025), "f32", "too_many_features"),
    (b"[" + b"0," * 100_000 + b"0]", "json", "too_many_features"),
    (b'{"x": [' + b"0," * 1024 + b"0]}", "json", "too_many_features"),
    (b"[" + b"[0]," * 10_000 + b"[0]]", "json", "too_many_points"),
    (b'{"points": [' + b'{"x": [0]},' * 10_000 + b'{"x": [0]}]}', "json", "too_many_points"),
    (b"[" + b" " * (4 << 20) + b"0]", "json", "too_large"),
    (bytes((4 << 20) + 8), "f64", "too_large"),
    (b'{"x": [1, 1e16]}', "json", "out_of_range"),
    (b'{"x": [1, -1e200]}', "json", "out_of_range"),
    (b'{"x": [1, 1' + b"0" * 400 + b"]}", "json", "out_of_range"),
    (np.array([1, 3e38], "<f4").tobytes(), "f32", "out_of_range"),
])
def test_bounds_without_n_features(value, fmt, reason):
    with mock.patch("numpy.array", side_effect=AssertionError("no array may be built")) \
            if reason.startswith("too_") else mock.patch("builtins.id"):
        assert reason_of(value, fmt, n_features=None) == reason


def test_limits_are_configurable():
    limits = Limits(max_bytes=100, max_points=3, max_features=4, max_abs_value=10.0)
    assert decode(b"[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 1, 2]]", "json", None, limits).X.shape \
        == (3, 4)
    for value, reason in [(b"[1, 2, 3, 4, 5]", "too_many_features"),
                          (b"[[1], [2], [3], [4]]", "too_many_points"),
                          (b"[" + b" " * 100 + b"1]", "too_large"), (b"[10.5]", "out_of_range")]:
        with pytest.raises(DecodeError) as err:
            decode(value, "json", None, limits)
        assert err.value.reason == reason
    out = decode_all([b"[10.5]", b"[10]", b'{"x": [3], "ts": -1}'], "json", 1, limits)
    assert [getattr(o, "reason", None) for o in out] == ["out_of_range", None, "bad_schema"]


def test_block_whose_n_times_d_does_not_match_the_length():
    good = encode_block(np.zeros((2, 2)))
    lying = good[:8] + struct.pack("<II", 4, 1) + good[16:]  # 4×1 floats need 48 bytes, not 64
    assert reason_of(lying, "block", None) == "bad_binary"


def test_errors_carry_a_readable_detail():
    with pytest.raises(DecodeError) as err:
        decode(b'{"x": [1, true]}', "json", 2)
    assert err.value.detail == '"x", feature 1: expected a number, got a boolean'
    assert str(err.value) == f"bad_schema: {err.value.detail}"


# --- round-trips -----------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
ANY_FINITE = Limits(max_abs_value=float(np.finfo(np.float64).max))  # the format, not the bounds


@settings(max_examples=100, deadline=None)
@given(X=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
                    elements=finite),
       dtype=st.sampled_from(["f32", "f64"]), data=st.data())
def test_block_round_trip(X, dtype, data):
    ids = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(X), max_size=len(X)))
    p = decode(encode_block(X, ids=ids, dtype=dtype), "block", X.shape[1], ANY_FINITE)
    np.testing.assert_array_equal(p.X, X)  # float32-representable elements survive either dtype
    assert p.ids == ids and p.multi


@settings(max_examples=100, deadline=None)
@given(X=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
                    elements=st.floats(allow_nan=False, allow_infinity=False)),
       ids=st.lists(st.none() | st.integers(-(2**63), 2**63) | st.text(max_size=5),
                    min_size=20, max_size=20))
def test_json_objects_round_trip(X, ids):
    doc = [{"x": row, "id": ident} for row, ident in zip(X.tolist(), ids, strict=False)]
    p = decode(json.dumps(doc).encode(), "json", X.shape[1], ANY_FINITE)
    np.testing.assert_array_equal(p.X, X)
    assert p.ids == ids[:len(X)]


@settings(max_examples=50, deadline=None)
@given(x=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30))
def test_bare_json_array_round_trip(x):
    np.testing.assert_array_equal(decode(json.dumps(x).encode(), "json", len(x), ANY_FINITE).X,
                                  [x])


# --- output ----------------------------------------------------------------------------------


def stand_in_result(n: int, k: int = 4, seed: int = 0) -> SimpleNamespace:
    """A batch result with the model's attribute arrays, random but consistent."""
    rng = np.random.default_rng(seed)
    resp = rng.dirichlet(np.ones(k), size=n)
    labels = resp.argmax(axis=1)
    return SimpleNamespace(
        labels=labels, probabilities=resp[np.arange(n), labels], responsibilities=resp,
        log_likelihood=rng.normal(-5, 2, size=n), anomaly=rng.random(n) < 0.3,
        warmup=rng.random(n) < 0.5)


def test_single_message_gives_one_record_object():
    points = decode(b'{"id": "p", "x": [1, 2]}', "json", 2)
    res = stand_in_result(5)
    out = encode_result(points, res, slice(3, 4), top_k=0, model_version=7, topic="in",
                        partition=2, offset=41)
    record = json.loads(out)
    assert set(record) == RECORD_KEYS
    assert record == {
        "id": "p", "cluster": int(res.labels[3]),
        "probability": pytest.approx(res.probabilities[3], abs=1e-6),
        "log_likelihood": pytest.approx(res.log_likelihood[3], abs=1e-6),
        "anomaly": bool(res.anomaly[3]), "warmup": bool(res.warmup[3]), "model_version": 7,
        "topic": "in", "partition": 2, "offset": 41, "index": 0}
    assert type(record["cluster"]) is int and type(record["anomaly"]) is bool


def test_multi_message_gives_one_array_in_row_order():
    points = decode(b'[{"id": "a", "x": [1, 2]}, {"x": [3, 4]}, {"id": 9, "x": [5, 6]}]',
                    "json", 2)
    res = stand_in_result(10)
    records = json.loads(encode_result(points, res, slice(4, 7), top_k=0, model_version=1,
                                       topic="t", partition=0, offset=5))
    assert isinstance(records, list) and len(records) == 3
    assert [r["id"] for r in records] == ["a", None, 9]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["cluster"] for r in records] == res.labels[4:7].tolist()
    assert all(r["offset"] == 5 and set(r) == RECORD_KEYS for r in records)


def test_output_is_compact_json():
    points = decode(b"[1, 2]", "json", 2)
    out = encode_result(points, stand_in_result(1), slice(0, 1), top_k=2, model_version=0,
                        topic="t", partition=0, offset=0)
    assert b" " not in out and out.startswith(b'{"id":null,"cluster":')


def test_floats_are_rounded():
    res = stand_in_result(1)
    res.probabilities = np.array([0.123456789])
    res.log_likelihood = np.array([-12.3456789123])
    record = json.loads(encode_result(decode(b"[1]", "json", 1), res, slice(0, 1), top_k=0,
                                      model_version=0, topic="t", partition=0, offset=0))
    assert record["probability"] == 0.123457 and record["log_likelihood"] == -12.345679


def strict_json(value: bytes):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(value, parse_constant=refuse)


@pytest.mark.parametrize("n", [2, 40])  # both the few-rows and the vectorised path
def test_rounding_and_unbounded_log_likelihoods_are_clamped(n):
    res = stand_in_result(n)
    res.log_likelihood = np.full(n, -12.3456789123)
    res.log_likelihood[0] = -np.inf
    res.log_likelihood[1] = -1.7e308  # rounding to 6 decimals would overflow
    res.probabilities = np.full(n, 0.123456789)
    points = decode(encode_block(np.zeros((n, 1))), "block", 1)
    records = strict_json(encode_result(points, res, slice(0, n), top_k=0, model_version=0,
                                        topic="t", partition=0, offset=0))
    assert [r["log_likelihood"] for r in records] == [-1e30, -1e30] + [-12.345679] * (n - 2)
    assert {r["probability"] for r in records} == {0.123457}
    block = decode_result_block(encode_result_block(points, res, slice(0, n), top_k=0,
                                                    model_version=0, partition=0, offset=0))
    assert np.isfinite(block["log_likelihood"]).all()
    assert block["log_likelihood"][:2].tolist() == [np.float32(-1e30)] * 2


def test_answers_of_a_partly_refused_message_carry_each_point_index():
    X = np.zeros((5, 1))
    X[1], X[3] = np.nan, 1e20
    points = decode(encode_block(X, ids=[50, 51, 52, 53, 54], dtype="f64"), "block", 1)
    res = stand_in_result(3)
    records = strict_json(encode_results([points], res, fmt="json", top_k=0, model_version=0,
                                         sources=[("t", 0, 9)])[0])
    assert [(r["id"], r["index"]) for r in records] == [(50, 0), (52, 2), (54, 4)]
    block = decode_result_block(encode_results([points], res, fmt="block", top_k=0,
                                               model_version=0, sources=[("t", 0, 9)])[0])
    assert block["index"].tolist() == [0, 2, 4] and block["id"].tolist() == [50, 52, 54]
    assert decode_result_block(anomalous_rows_block(encode_result_block(
        points, res, slice(0, 3), top_k=0, model_version=0, partition=0, offset=9)))["index"] \
        .tolist() == [i for i, a in zip([0, 2, 4], res.anomaly, strict=True) if a]


@pytest.mark.parametrize("n", [1, 5, 30])
@pytest.mark.parametrize("top_k", [1, 2, 3, 4, 6])
def test_top_k_pairs_are_the_largest_sorted_descending(top_k, n):
    k = 4
    res = stand_in_result(n, k, seed=top_k)
    points = decode(encode_block(np.zeros((n, 1))), "block", 1)
    records = json.loads(encode_result(points, res, slice(0, n), top_k=top_k, model_version=0,
                                       topic="t", partition=0, offset=0))
    for record, resp in zip(records, res.responsibilities, strict=True):
        pairs = record["top_k"]
        expected = np.argsort(-resp, kind="stable")[:min(top_k, k)]
        assert [c for c, _ in pairs] == expected.tolist()
        assert [r for _, r in pairs] == pytest.approx(resp[expected], abs=1e-6)
        assert pairs[0][0] == record["cluster"]
        assert all(isinstance(c, int) for c, _ in pairs)


@pytest.mark.parametrize("n", [1, 20])
def test_top_k_ties_order_by_component(n):
    res = stand_in_result(n, 3)
    res.responsibilities = np.tile([0.25, 0.5, 0.25], (n, 1))
    points = decode(encode_block(np.zeros((n, 1))), "block", 1)
    records = json.loads(encode_result(points, res, slice(0, n), top_k=3, model_version=0,
                                       topic="t", partition=0, offset=0))
    assert all(r["top_k"] == [[1, 0.5], [0, 0.25], [2, 0.25]] for r in records)


def test_top_k_zero_adds_no_key():
    record = json.loads(encode_result(decode(b"[1]", "json", 1), stand_in_result(1), slice(0, 1),
                                      top_k=0, model_version=0, topic="t", partition=0, offset=0))
    assert "top_k" not in record


def test_numpy_scalars_in_metadata_are_accepted():
    record = json.loads(encode_result(decode(b"[1]", "json", 1), stand_in_result(1), slice(0, 1),
                                      top_k=0, model_version=np.int64(3), topic="t",
                                      partition=np.int32(1), offset=np.int64(2)))
    assert (record["model_version"], record["partition"], record["offset"]) == (3, 1, 2)


def test_rows_must_match_the_number_of_points():
    with pytest.raises(ValueError, match="rows select 2 results for 1 points"):
        encode_result(decode(b"[1]", "json", 1), stand_in_result(3), slice(0, 2), top_k=0,
                      model_version=0, topic="t", partition=0, offset=0)


def test_points_is_frozen():
    p = Points(np.zeros((1, 1)), [None], None, multi=False)
    with pytest.raises(AttributeError):
        p.multi = True  # type: ignore[misc]


# --- headers ---------------------------------------------------------------------------------


def test_result_headers():
    assert result_headers(12) == [("streamem.model_version", b"12")]


def test_dead_letter_headers():
    headers = dead_letter_headers("bad_json", "Expecting value", "points", 3, 1234)
    assert headers == [
        ("streamem.reason", b"bad_json"),
        ("streamem.detail", b"Expecting value"),
        ("streamem.source.topic", b"points"),
        ("streamem.source.partition", b"3"),
        ("streamem.source.offset", b"1234"),
    ]


def test_a_dead_letter_carries_incoming_headers_up_to_64_kib_as_kafka_frames_them():
    fits = [("", b"")] * (32 * 1024)  # 2 bytes each in a record: 64 KiB
    assert wire_size(fits) == 64 * 1024
    kept = dead_letter_headers("too_large", "", "t", 0, 0, incoming=fits)
    assert kept[:len(fits)] == fits and "streamem.headers_dropped" not in dict(kept)
    dropped = dead_letter_headers("too_large", "", "t", 0, 0, incoming=[*fits, ("", b"")])
    assert dict(dropped)["streamem.headers_dropped"] == str(len(fits) + 1).encode()
    assert all(name.startswith("streamem.") for name, _ in dropped)
    assert wire_size([("n" * 64, b"v" * 8192)]) == 2 + 64 + 3 + 8192


def test_dead_letter_detail_is_cut_on_a_character_boundary():
    detail = dict(dead_letter_headers("bad_schema", "é" * 1000, "t", 0, 0))["streamem.detail"]
    assert len(detail) <= 1024
    assert detail.decode("utf-8") == "é" * 512


# --- batches: decode_all and encode_results ----------------------------------------------------


def single_point_messages(X: np.ndarray) -> list[bytes]:
    return [json.dumps({"id": i, "x": row, "ts": 1.7e12 + i}).encode()
            for i, row in enumerate(X.tolist())]


def outcome(item):
    """A comparable view of a decode result: the points' fields, or the error's reason."""
    if isinstance(item, DecodeError):
        return ("error", item.reason, item.detail)
    ts = None if item.ts_ms is None else item.ts_ms.tolist()
    return (item.X.tolist(), item.ids, ts, item.multi)


BAD_OR_ODD = [b"", None, b"{oops", b"[1, 2, 3]", b'{"x": "nope"}', b'{"x": [1, true]}',
              b'{"x": [1e999, 0]}', b'{"x": [NaN, 0]}', b'{"id": 1.5, "x": [1, 2]}',
              b'{"x": [1, 2], "ts": 1e999}', b'{"x": [1, 2], "ts": ' + b"9" * 400 + b"}",
              b'[[1, 2], [3, 4]]', b'{"points": [[5, 6]]}', b'{"x": [[1], [2]]}',
              b'{"x": [1, 2], "id": "s", "ts": 12}', b"[7, 8]", b'{"x": [1, "2"]}',
              b'{"x": [' + b"9" * 400 + b', 1]}', b' {"x": [1, 2]} ', b'{"x": [1, 2]}\n',
              b'{"id": "\\ud800", "x": [1, 2]}', b'{"x": [1, 2], "id": "\xff"}',
              b'{"id": ' + b"9" * 30 + b', "x": [1, 2]}', b'{"x": [0, 0], "x": [1, 2]}',
              b'{"x": [1, 2]} {"x": [3, 4]}', b'{"x": [1.5e308, -0.0], "ts": -0.0}',
              b'{"x": [1, 2], "ts": NaN}', b'{"x": [1, 2], "ts": Infinity}', b'[[1, 2]]',
              b'{"x": [1, 2], "id": [1]}', b'{"x": [1, 2], "ts": "5"}', b'{"x": null}',
              b'{"y": [1, 2]}', b'{"x": [1, 2], "ts": 100000000000000}', b'{"x": {"a": 1}}',
              b'{"x": [1, 2], "ts": 99999999999999.5}', b'{"x": [1, 2], "id": 2.0}', b'7']

try:
    import orjson

    PARSERS = [json.loads, orjson.loads]  # the ``fast`` extra, installed by CI
except ImportError:
    PARSERS = [json.loads]


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, len(BAD_OR_ODD) + 5), min_size=1, max_size=40))
def test_decode_all_gives_exactly_what_decode_gives(picks):
    good = single_point_messages(np.arange(12.0).reshape(6, 2))
    values = [BAD_OR_ODD[i] if i < len(BAD_OR_ODD) else good[i - len(BAD_OR_ODD)]
              for i in picks]
    expected = []
    for value in values:
        try:
            expected.append(outcome(decode(value, "json", 2)))
        except DecodeError as exc:
            expected.append(outcome(exc))
    plain = [value for i, value in zip(picks, values, strict=True) if i >= len(BAD_OR_ODD)]
    for parse in PARSERS:
        with mock.patch.object(json_in, "_parse_fast", parse):
            assert [outcome(item) for item in decode_all(values, "json", 2)] == expected
            # and the batch path is taken: it alone decodes every plainly valid message
            out: list = [None] * len(plain)
            json_in._decode_many(plain, 2, Limits(), out)
            assert [outcome(item) for item in out] == \
                [outcome(decode(value, "json", 2)) for value in plain]


def test_decode_all_without_n_features_is_fixed_by_the_first_valid_message():
    out = decode_all([b"{oops", b"[1, 2, 3]", b"[1, 2]", b"[4, 5, 6]"], "json", None)
    assert isinstance(out[0], DecodeError) and out[1].X.shape == (1, 3)
    assert isinstance(out[2], DecodeError) and out[2].reason == "wrong_dimension"
    assert out[3].X.tolist() == [[4, 5, 6]]


def batch_of(messages: list[Points], seed: int = 0, k: int = 4) -> SimpleNamespace:
    return stand_in_result(sum(len(p) for p in messages), k, seed)


MIXED = [b'{"id": "a", "x": [1, 2]}', b"[3, 4]", encode_block(np.ones((20, 2)), ids=range(20)),
         b'[{"id": 7, "x": [1, 2]}, {"x": [3, 4]}]', b'{"id": 12, "x": [5, 6], "ts": 3}']


@pytest.mark.parametrize("top_k", [0, 2])
def test_encode_results_json_matches_encode_result_message_by_message(top_k):
    messages = [decode(v, "block" if v.startswith(b"SEM1") else "json", 2) for v in MIXED]
    res = batch_of(messages)
    sources = [("in", 1, 100 + j) for j in range(len(messages))]
    batch = encode_results(messages, res, fmt="json", top_k=top_k, model_version=4,
                           sources=sources)
    start = 0
    for points, value, (topic, partition, offset) in zip(messages, batch, sources, strict=True):
        alone = encode_result(points, res, slice(start, start + len(points)), top_k=top_k,
                              model_version=4, topic=topic, partition=partition, offset=offset)
        start += len(points)
        assert rounded(json.loads(value)) == rounded(json.loads(alone))


SINGLES = [b'{"id": 3, "x": [1, 2]}', b'{"id": 4, "x": [3, 4]}', b'{"id": "s", "x": [5, 6]}',
           b"[7, 8]", b'{"id": "\\u00e9\\\\", "x": [9, 0]}']


@pytest.mark.parametrize("top_k", [0, 2])
@pytest.mark.parametrize("values", [SINGLES[:2], SINGLES], ids=["int ids", "mixed ids"])
@pytest.mark.parametrize("finite", [True, False])
def test_encode_results_json_of_single_points_is_encode_result_byte_for_byte(top_k, values,
                                                                             finite):
    """The batch path of single-point messages (one bytes format each) writes exactly what
    the per-message path writes; a probability that is not finite is written null."""
    messages = [decode(v, "json", 2) for v in values]
    res = stand_in_result(len(values), seed=3)
    if not finite:
        res.probabilities[0] = np.nan
    sources = [("in", 1, 100 + j) for j in range(len(messages))]
    batch = encode_results(messages, res, fmt="json", top_k=top_k, model_version=4,
                           sources=sources)
    alone = [encode_result(points, res, slice(j, j + 1), top_k=top_k, model_version=4,
                           topic=topic, partition=partition, offset=offset)
             for j, (points, (topic, partition, offset)) in enumerate(zip(messages, sources,
                                                                           strict=True))]
    assert batch == alone
    assert (strict_json(batch[0])["probability"] is None) is not finite


def rounded(doc):
    """``doc`` with every float rounded to 5 decimals (batch and single rounding may differ
    in the 6th on ties)."""
    if isinstance(doc, float):
        return round(doc, 5)
    if isinstance(doc, list):
        return [rounded(v) for v in doc]
    if isinstance(doc, dict):
        return {k: rounded(v) for k, v in doc.items()}
    return doc


def test_encode_results_checks_its_arguments():
    messages = [decode(b"[1, 2]", "json", 2)]
    with pytest.raises(ValueError, match="output format"):
        encode_results(messages, batch_of(messages), fmt="xml", top_k=0, model_version=0,
                       sources=[("t", 0, 0)])
    with pytest.raises(ValueError, match="hold 1 points, the result 3"):
        encode_results(messages, stand_in_result(3), fmt="json", top_k=0, model_version=0,
                       sources=[("t", 0, 0)])


# --- block output ---------------------------------------------------------------------------


def assert_block_matches(doc: dict, res, rows: slice, ids, top_k: int) -> None:
    n = len(res.labels[rows])
    assert doc["cluster"].dtype == np.int32 and doc["probability"].dtype == np.float32
    np.testing.assert_array_equal(doc["cluster"], res.labels[rows])
    np.testing.assert_array_equal(doc["probability"], res.probabilities[rows].astype(np.float32))
    clamped = finite_log_likelihood(res.log_likelihood[rows])
    np.testing.assert_array_equal(doc["log_likelihood"], clamped.astype(np.float32))
    np.testing.assert_array_equal(doc["anomaly"], res.anomaly[rows])
    np.testing.assert_array_equal(doc["warmup"], res.warmup[rows])
    np.testing.assert_array_equal(doc["index"], np.arange(n))
    if ids is None:
        assert doc["id"] is None
    else:
        assert doc["id"].dtype == np.uint64 and doc["id"].tolist() == list(ids)
    k = min(top_k, res.responsibilities.shape[1])
    assert doc["top_k_component"].shape == doc["top_k_responsibility"].shape == (n, k)
    resp = res.responsibilities[rows]
    for row, comps, vals in zip(resp, doc["top_k_component"], doc["top_k_responsibility"],
                                strict=True):
        expected = np.argsort(-row, kind="stable")[:k]
        assert comps.tolist() == expected.tolist()
        np.testing.assert_array_equal(vals, row[expected].astype(np.float32))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), start=st.integers(0, 5), top_k=st.integers(0, 6),
       ids=st.sampled_from(["u64", "none", "str", "negative"]), seed=st.integers(0, 2**16),
       data=st.data())
def test_block_output_round_trip(n, start, top_k, ids, seed, data):
    res = stand_in_result(start + n + 3, k=4, seed=seed)
    res.log_likelihood[start] = -np.inf
    id_values = {"u64": data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)),
                 "none": [None] * n, "str": [f"p{i}" for i in range(n)],
                 "negative": [-1] + list(range(n - 1))}[ids]
    points = Points(np.zeros((n, 2)), id_values, None, multi=n > 1)
    rows = slice(start, start + n)
    value = encode_result_block(points, res, rows, top_k=top_k, model_version=2**40 + 3,
                                partition=7, offset=2**40 + 11)
    doc = decode_result_block(value)
    assert (doc["model_version"], doc["partition"], doc["offset"]) == (2**40 + 3, 7, 2**40 + 11)
    assert len(value) == 32 + n * (14 + (8 if ids == "u64" else 0) + 8 * min(top_k, 4))
    assert_block_matches(doc, res, rows, id_values if ids == "u64" else None, top_k)


def test_block_output_header_is_the_documented_one():
    points = Points(np.zeros((2, 1)), [5, 6], None, multi=True)
    value = encode_result_block(points, stand_in_result(2), slice(0, 2), top_k=0,
                                model_version=9, partition=3, offset=77)
    assert value[:32] == struct.pack("<4sBBBBIiQq", b"SEMR", 1, 1, 0, 0, 2, 3, 9, 77)
    assert value[32:48] == struct.pack("<2Q", 5, 6)


def test_encode_results_block_matches_encode_result_block():
    messages = [decode(v, "block" if v.startswith(b"SEM1") else "json", 2) for v in MIXED]
    res = batch_of(messages, seed=3)
    sources = [("in", 0, j) for j in range(len(messages))]
    batch = encode_results(messages, res, fmt="block", top_k=3, model_version=1,
                           sources=sources)
    start = 0
    for points, value, (_, partition, offset) in zip(messages, batch, sources, strict=True):
        rows = slice(start, start + len(points))
        start = rows.stop
        assert value == encode_result_block(points, res, rows, top_k=3, model_version=1,
                                            partition=partition, offset=offset)
    assert decode_result_block(batch[0])["id"] is None  # a string id
    assert decode_result_block(batch[2])["id"].tolist() == list(range(20))


def test_anomalous_rows_keep_their_index():
    res = stand_in_result(10, seed=5)
    points = Points(np.zeros((10, 2)), list(range(100, 110)), None, multi=True)
    full = encode_result_block(points, res, slice(0, 10), top_k=2, model_version=1,
                               partition=0, offset=4)
    doc = decode_result_block(anomalous_rows_block(full))
    flagged = np.flatnonzero(res.anomaly)
    assert doc["index"].tolist() == flagged.tolist()
    assert doc["id"].tolist() == (100 + flagged).tolist()
    assert doc["anomaly"].all() and doc["offset"] == 4
    np.testing.assert_array_equal(doc["cluster"], res.labels[flagged])
    np.testing.assert_array_equal(doc["top_k_component"],
                                  decode_result_block(full)["top_k_component"][flagged])


@pytest.mark.parametrize("value", [b"", b"SEMR", b"XXXX" + bytes(28),
                                   struct.pack("<4sBBBBIiQq", b"SEMR", 2, 0, 0, 0, 0, 0, 0, 0),
                                   struct.pack("<4sBBBBIiQq", b"SEMR", 1, 0, 0, 0, 1, 0, 0, 0)])
def test_bad_result_blocks_are_refused(value):
    with pytest.raises(DecodeError) as err:
        decode_result_block(value)
    assert err.value.reason == "bad_binary"


def test_a_message_of_only_bad_points_is_dead_lettered_with_its_first_points_reason():
    # Found by the hostile-mix property test: a bad "ts" at point 0 and a short point 1 (the
    # width is fixed at 3) reported the second point's wrong_dimension for the whole message.
    value = (b'{"points": [{"x": [0.5, 4.0, 2.0], "ts": -1e307}, {"x": [-3.0, -5.9]}]}')
    with pytest.raises(DecodeError) as err:
        decode(value, "json", 3, Limits())
    assert err.value.reason == "bad_schema" and "point 0" in err.value.detail
    partly = decode(value.replace(b"-1e307", b"0"), "json", 3, Limits())
    assert partly.rejected == [(1, "wrong_dimension", "point 1 has 2 features, expected 3")]
