"""``streamem run`` exit codes around checkpoints: 2 unreadable at start, 1 final one failed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamem.io.checkpoint import Checkpoint, FileCheckpointStore
from streamem.model import OnlineGMM

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
LINES = "".join(json.dumps([float(i % 7), float(i % 3)]) + "\n" for i in range(50))


def run(*settings: str, stdin: str = LINES) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMEM_")}
    env["PYTHONPATH"] = str(ROOT)
    args = [sys.executable, "-m", "streamem", "run", "--source", "stdin",
            "--set", "metrics.enabled=false", "--set", "kafka.model_topic=null",
            "--set", "model.n_components=2", "--set", "model.warmup=20"]
    for setting in settings:
        args += ["--set", setting]
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120,
                          env=env)


def hostile_model() -> bytes:
    """A model whose means have one feature too many (it used to load, then reject every
    batch, so every message was dead-lettered)."""
    model = OnlineGMM(2, warmup=20, random_state=0)
    model.partial_fit(np.random.default_rng(0).normal(size=(40, 2)))
    with np.load(io.BytesIO(model.to_bytes())) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["means"] = np.hstack([arrays["means"], arrays["means"][:, :1]])
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated", "hostile model"])
def test_an_unreadable_checkpoint_exits_2_without_a_traceback(tmp_path, content) -> None:
    path = tmp_path / "ckpt.npz"
    good = Checkpoint(OnlineGMM(2).to_bytes(), {("stdin", 0): 3}, None, 1.0)
    data = {"garbage": b"\x00not a checkpoint" * 10, "empty": b"",
            "truncated": good.to_bytes()[:300],
            "hostile model": Checkpoint(hostile_model(), {}, 2, 1.0).to_bytes()}[content]
    path.write_bytes(data)
    proc = run(f"checkpoint.path={path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("streamem run:")]
    assert f"checkpoint file {path}" in message
    assert "--ignore-checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert path.read_bytes() == data  # left as it was, for a human to look at


def test_ignore_checkpoint_starts_fresh_and_replaces_it(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "streamem", "run", "--source", "stdin", "--ignore-checkpoint",
         "--set", "metrics.enabled=false", "--set", f"checkpoint.path={path}",
         "--set", "model.n_components=2", "--set", "model.warmup=20"],
        input=LINES, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert FileCheckpointStore(path).load().load_model().n_seen_ == 50


def test_a_failed_final_checkpoint_exits_1_and_says_why(tmp_path) -> None:
    # The name fits, but the temp file next to it (".<name>.tmp-xxxxxxxx") is too long.
    path = tmp_path / ("c" * 240 + ".npz")
    proc = run(f"checkpoint.path={path}", "checkpoint.interval_s=3600")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 50  # every point was still answered
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "checkpoint_failed"]
    assert failed and "cannot write checkpoint" in failed[0]["error"]
    assert [e for e in events if e.get("event") == "final_checkpoint_failed"]
    assert not path.exists()


def test_a_successful_final_checkpoint_exits_0(tmp_path) -> None:
    path = tmp_path / "ckpt.npz"
    proc = run(f"checkpoint.path={path}", "checkpoint.interval_s=3600")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert FileCheckpointStore(path).load().offsets == {("stdin", 0): 50}
