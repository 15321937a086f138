"""The import directions of ``[tool.importlinter]`` in pyproject.toml hold (``lint-imports``):
commands above the composition root above the loop above its parts, transports that know
nothing of the daemon, a model that imports nothing of streamem but its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(no_cache=True))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "Contracts: " in proc.stdout, f"lint-imports did not run:\n{proc.stderr}"
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "0 broken" in proc.stdout
