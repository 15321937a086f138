"""``streamem inspect``: a checkpoint written by a short run, bare model files, bad files, plots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib  # the `plot` extra: CI installs '.[dev,plot]'; missing, this test must fail
import numpy as np
import pytest

from streamem import cli, plot
from streamem.io.checkpoint import Checkpoint, FileCheckpointStore
from streamem.model import OnlineGMM
from streamem.synthetic import Mixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The final checkpoint of a 20 000-point demo run (the daemon's own loop and store)."""
    path = tmp_path_factory.mktemp("inspect") / "demo.npz"
    args = ["demo", "--points", "20000", "--plain", "--metrics-port", "0",
            "--checkpoint", str(path)]
    assert cli.main(args) == 0
    return path


def inspect(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["inspect", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_describes_the_checkpoint(checkpoint, capsys) -> None:
    code, out, _ = inspect(capsys, str(checkpoint))
    assert code == 0
    assert out.startswith(f"checkpoint {checkpoint} (written ")
    assert ".points[0] next 100" in out  # 20 000 points in messages of 200
    assert "full covariances, K=5 components, d=4 features" in out
    assert "20,000 points; parameter version" in out
    assert "warm-up   complete (warm-up length 1,000)" in out
    assert "log-likelihood below -" in out
    assert "components by weight" in out and out.count("█") > 20
    weights = [float(line.split()[1]) for line in out.splitlines()[-5:]]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1, abs=5e-3)


def test_json_matches_the_model(checkpoint, capsys) -> None:
    code, out, _ = inspect(capsys, str(checkpoint), "--json")
    assert code == 0
    info = json.loads(out)
    model = OnlineGMM.from_bytes(FileCheckpointStore(checkpoint).load().model)
    assert info["kind"] == "checkpoint" and info["n_seen"] == 20_000 == model.n_seen_
    assert (info["n_components"], info["n_features"]) == (5, 4)
    assert info["version"] == model.version_ and info["resets"] == model.resets_
    assert info["offsets"][0]["offset"] == 100 and info["offsets"][0]["partition"] == 0
    assert info["anomaly_threshold"] == pytest.approx(model.anomaly_threshold_)
    comps = info["components"]
    assert [c["component"] for c in comps] == list(np.argsort(-model.weights_, kind="stable"))
    for c in comps:
        k, cov = c["component"], model.covariances_[c["component"]]
        eig = np.linalg.eigvalsh(cov)
        assert c["weight"] == pytest.approx(model.weights_[k])
        assert c["mean"] == pytest.approx(model.means_[k].tolist())
        assert c["scale"] == pytest.approx(np.sqrt(np.trace(cov) / 4))
        assert (c["eigenvalue_min"], c["eigenvalue_max"]) == pytest.approx((eig[0], eig[-1]))
        assert c["condition_number"] == pytest.approx(model.condition_numbers_[k])
    events = info["collapse_history"]
    assert [(e["point"], e["component"], e["reason"]) for e in events] == \
        [tuple(h) for h in model.collapse_history_]


def test_plot_writes_a_png(checkpoint, tmp_path, capsys) -> None:
    out_png = tmp_path / "model.png"
    code, out, _ = inspect(capsys, str(checkpoint), "--plot", str(out_png))
    assert code == 0
    assert out_png.read_bytes()[:8] == PNG_MAGIC and out_png.stat().st_size > 10_000
    assert "keeps no log-likelihood history: drew the weights instead" in out
    code, out, err = inspect(capsys, str(checkpoint), "--json", "--plot", str(out_png))
    assert code == 0 and json.loads(out)["n_seen"] == 20_000 and "plot: wrote" in err


def fitted(covariance_type: str = "full", n_points: int = 4000) -> OnlineGMM:
    X, _ = Mixture.random(3, 3, random_state=1).sample(n_points, random_state=2)
    model = OnlineGMM(3, covariance_type=covariance_type, random_state=0)
    model.partial_fit(X)
    return model


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_bare_model_files_of_every_covariance_type(tmp_path, capsys,
                                                   covariance_type: str) -> None:
    model = fitted(covariance_type)
    path = tmp_path / "model.npz"
    model.save(str(path))
    code, out, _ = inspect(capsys, str(path), "--json", "--plot", str(tmp_path / "m.png"))
    assert code == 0
    info = json.loads(out)
    assert info["kind"] == "model file" and info["offsets"] == [] and info["written_at"] is None
    assert info["covariance_type"] == covariance_type and len(info["components"]) == 3
    if covariance_type == "spherical":
        assert all(c["condition_number"] == pytest.approx(1) for c in info["components"])
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
    code, out, _ = inspect(capsys, str(path))
    assert code == 0 and out.startswith(f"model file {path}\n")


def test_warming_up_and_empty_models(tmp_path, capsys) -> None:
    warming = tmp_path / "warming.npz"
    fitted(n_points=300).save(str(warming))
    code, out, _ = inspect(capsys, str(warming))
    assert code == 0
    assert "warming up: 300 of 1,000 points buffered" in out
    assert "no threshold yet (warming up)" in out
    info = json.loads(inspect(capsys, str(warming), "--json")[1])  # -inf threshold is null
    assert info["anomaly_threshold"] is None and len(info["components"]) == 3

    empty = tmp_path / "empty.npz"
    FileCheckpointStore(empty).save(Checkpoint(OnlineGMM(2).to_bytes(), {}, None, 0.0))
    code, out, _ = inspect(capsys, str(empty))
    assert code == 0
    assert "no points yet" in out and "offsets     none yet" in out and "d=? features" in out
    code, _, err = inspect(capsys, str(empty), "--plot", str(tmp_path / "e.png"))
    assert code == 2 and "nothing to draw" in err


def test_missing_and_corrupt_files_exit_2(tmp_path, capsys) -> None:
    code, _, err = inspect(capsys, str(tmp_path / "nope.npz"))
    assert code == 2 and "no such file" in err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    code, out, err = inspect(capsys, str(junk))
    assert code == 2 and out == "" and "corrupt or not a streamem checkpoint" in err
    bad_model = tmp_path / "bad-model.npz"
    FileCheckpointStore(bad_model).save(Checkpoint(b"garbage", {("t", 0): 1}, 2, 0.0))
    code, _, err = inspect(capsys, str(bad_model))
    assert code == 2 and "cannot be loaded" in err


def test_empty_truncated_and_hostile_files_exit_2_without_a_traceback(checkpoint, tmp_path,
                                                                      capsys) -> None:
    model_file = tmp_path / "model.npz"
    fitted().save(str(model_file))
    cases = {
        "empty.npz": (b"", "is empty"),
        "truncated.npz": (checkpoint.read_bytes()[:-100], "corrupt or not a streamem checkpoint"),
        "half.npz": (checkpoint.read_bytes()[:2000], "corrupt or not a streamem checkpoint"),
        "truncated-model.npz": (model_file.read_bytes()[:-50], "nor is it a streamem model"),
        "hostile-model.npz": (model_file.read_bytes().replace(b"<f8", b"<f4", 1),
                              "model file .*hostile-model.npz: invalid streamem model file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = inspect(capsys, str(path))
        assert code == 2 and out == "", name
        assert re.search(message, err), (name, err)
    code, _, err = inspect(capsys, str(tmp_path))
    assert code == 2 and "cannot read" in err


def test_plot_that_cannot_be_written_exits_1(checkpoint, tmp_path, capsys) -> None:
    code, _, err = inspect(capsys, str(checkpoint), "--plot", str(tmp_path / "no" / "x.png"))
    assert code == 1 and "cannot write" in err


def test_plot_without_matplotlib_says_how_to_get_it(checkpoint, tmp_path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from streamem.cli import main\n"
            f"sys.exit(main(['inspect', {str(checkpoint)!r}, '--plot', "
            f"{str(tmp_path / 'x.png')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "components by weight" in proc.stdout
    assert "pip install 'streamem[plot]'" in proc.stderr


def test_history_panel_when_the_model_keeps_one(tmp_path) -> None:
    model = fitted()
    model.log_likelihood_history_ = np.column_stack([np.arange(1, 11) * 400.0,
                                                     np.linspace(-9, -6, 10)])
    assert plot.draw(model, str(tmp_path / "h.png")) == ""
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG_MAGIC
    assert plot.draw(fitted(), str(tmp_path / "w.png")).startswith("the checkpoint keeps no")


def test_principal_plane_and_ellipse_geometry() -> None:
    weights = np.array([0.5, 0.5])
    means = np.array([[-3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    covs = np.stack([np.diag([1.0, 4.0, 0.25])] * 2)
    centre, axes = plot.principal_plane(weights, means, covs)
    assert centre == pytest.approx(np.zeros(3))
    assert np.abs(axes[:, 0]) == pytest.approx([1, 0, 0])  # between-component spread: 9 + 1
    assert np.abs(axes[:, 1]) == pytest.approx([0, 1, 0])
    width, height, angle = plot.ellipse(np.diag([1.0, 4.0]))
    assert (width, height) == pytest.approx((8.0, 4.0)) and abs(angle) == pytest.approx(90)
    assert matplotlib.__version__
