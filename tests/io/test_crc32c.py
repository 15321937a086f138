"""The numpy CRC-32C against kafka-python's own pure-Python one, and its installation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record import default_records, util
from kafka.record._crc32c import crc as reference_crc
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from streamem.io import crc32c


def test_check_value():
    assert crc32c.crc32c(b"123456789") == 0xE3069283


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000))
def test_equals_kafka_pythons_crc(data):
    assert crc32c.crc32c(data) == reference_crc(data)


@pytest.mark.parametrize("n", [0, 1, 4, 64, 65, 255, 256, 257, 1000, 65_536, 1_000_003])
def test_lengths_around_the_chunk_and_tree_edges(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c.crc32c(data) == reference_crc(data)
    assert crc32c.crc32c(memoryview(bytearray(data))[0:]) == reference_crc(data)


def test_installed_kafka_python_builds_batches_it_can_verify():
    installed = crc32c.install()
    assert installed == (util.crc32c_c is None)  # the C package, when present, is faster still
    assert (default_records.calc_crc32c is crc32c._calc_crc32c) == installed
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i in range(300):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=b"v%d" % i * 7,
                       headers=[])
    buffer = bytes(builder.build())
    batch = DefaultRecordBatch(buffer)
    assert batch.crc == reference_crc(memoryview(buffer)[DefaultRecordBatch.ATTRIBUTES_OFFSET:])
    assert batch.validate_crc()
