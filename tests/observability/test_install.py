"""deploy/prometheus/install.sh: idempotent, and --print-env puts the binaries on PATH."""

from __future__ import annotations

import subprocess

from .prometheus_server import INSTALL_SH, cache_bin_dir


def install(*args: str) -> str:
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_print_env_puts_promtool_on_path() -> None:
    env_line = install("--print-env")
    assert env_line.startswith("export PATH=") and env_line.rstrip().endswith(":$PATH")
    proc = subprocess.run(
        ["bash", "-c", f"{env_line}\ncommand -v promtool && promtool --version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(cache_bin_dir() / "promtool")
    assert "promtool, version" in proc.stdout


def test_install_is_idempotent() -> None:
    install("--print-env")
    promtool = cache_bin_dir() / "promtool"
    before = promtool.stat().st_mtime_ns
    assert "add to PATH" in install()
    assert promtool.stat().st_mtime_ns == before
