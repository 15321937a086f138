"""The README's configuration reference lists exactly the keys the config schema has, with their
defaults."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from streamem.config import SECTIONS, load_config

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `([a-z_]+)\.([a-z_]+)` \| `([^`]*)` \|")


def readme_rows() -> dict[tuple[str, str], str]:
    rows = {}
    for line in README.read_text().splitlines():
        match = ROW.match(line)
        if match:
            section, key, default = match.groups()
            rows[(section, key)] = default
    return rows


def test_reference_lists_every_key() -> None:
    schema = {(name, f.name) for name, cls in SECTIONS.items() for f in fields(cls)}
    assert set(readme_rows()) == schema


def test_reference_defaults_are_the_real_defaults() -> None:
    defaults = load_config(None, environ={}).to_dict()
    for (section, key), text in readme_rows().items():
        assert yaml.safe_load(text) == defaults[section][key], f"{section}.{key}"
