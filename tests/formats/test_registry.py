"""The registries: each name loads its format; the config and `produce` offer exactly them."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

from streamem.commands import produce
from streamem.config import load_config
from streamem.errors import ConfigError
from streamem.formats import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    decode,
    input_format,
    output_format,
)
from streamem.formats.headers import merged, result_headers


@pytest.mark.parametrize("name", list(INPUT_FORMATS))
def test_each_input_format_reads_what_it_writes(name):
    fmt = input_format(name)
    assert fmt.name == name and fmt.summary
    X = np.array([[0.5, -2.0, 3.25]])
    points = decode(fmt.encode(X, [9], None, False), name, 3)
    np.testing.assert_array_equal(points.X, X)


@pytest.mark.parametrize("name", list(OUTPUT_FORMATS))
def test_each_output_format_is_registered_under_its_name(name):
    assert output_format(name).name == name and output_format(name).summary


def test_unknown_names_are_programming_errors():
    with pytest.raises(ValueError, match="unknown input format 'xml'"):
        input_format("xml")
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        output_format("xml")


def test_config_and_produce_offer_the_registered_formats():
    for name in INPUT_FORMATS:
        assert load_config(None, [f"input.format={name}"], environ={}).input.format == name
    for name in OUTPUT_FORMATS:
        assert load_config(None, [f"output.format={name}"], environ={}).output.format == name
    with pytest.raises(ConfigError):
        load_config(None, ["input.format=xml"], environ={})
    parser = argparse.ArgumentParser()
    produce.add_arguments(parser)
    [action] = [a for a in parser._actions if a.dest == "format"]
    assert list(action.choices) == list(INPUT_FORMATS)


def test_the_config_reads_the_registry_without_loading_a_format():
    code = ("import sys, streamem.config, streamem.formats; "
            "loaded = [m for m in sys.modules if m.startswith('streamem.formats.')]; "
            "assert loaded == [], loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_own_headers_replace_incoming_ones_of_the_same_name_and_keep_the_rest():
    incoming = [("trace", b"t"), ("streamem.model_version", b"9"), ("trace", b"u")]
    assert result_headers(4, incoming) == [("trace", b"t"), ("trace", b"u"),
                                           ("streamem.model_version", b"4")]
    assert result_headers(4) == [("streamem.model_version", b"4")]
    assert merged((), [("a", b"1")]) == [("a", b"1")]
