"""The package installs with pip into a fresh virtual environment and its console script works.

The venv sees the machine's site-packages for the dependencies; streamem itself is built into a
wheel from this checkout and installed from it, so a missing module, package-data file or entry
point fails.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheel_dir = tmp_path_factory.mktemp("wheel")
    # Build with pip's isolated build (setuptools from the registry), install into the venv.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True)
    [wheel] = wheel_dir.glob("streamem-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q",
                    str(wheel)], check=True)
    return env_dir


def run(env_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run outside the checkout so that the installed copy, not the source tree, is imported.
    return subprocess.run([str(env_dir / "bin" / "streamem"), *args], capture_output=True,
                          text=True, cwd=env_dir, timeout=120)


def test_console_script_reports_the_version(installed: Path) -> None:
    from streamem import __version__

    done = run(installed, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"streamem {__version__}"


def test_installed_copy_is_the_wheel_not_the_checkout(installed: Path) -> None:
    python = installed / "bin" / "python"
    done = subprocess.run([str(python), "-c", "import streamem, pathlib; "
                           "print(pathlib.Path(streamem.__file__).resolve())"],
                          capture_output=True, text=True, cwd=installed, check=True)
    location = Path(done.stdout.strip())
    assert ROOT not in location.parents, location
    assert (location.parent / "py.typed").exists(), "package data (py.typed) is installed"


@pytest.mark.parametrize("command", ["run", "demo", "produce", "inspect", "bench"])
def test_every_command_has_help(installed: Path, command: str) -> None:
    done = run(installed, command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: streamem " + command)


def test_a_short_demo_runs_from_the_installed_package(installed: Path) -> None:
    done = run(installed, "demo", "--points", "6000", "--plain", "--metrics-port", "0")
    assert done.returncode == 0, done.stderr
    assert "summary:" in done.stdout
