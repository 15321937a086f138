"""``streamem demo``: end to end in memory and through the real broker, its views, its ARI."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from kafka import KafkaAdminClient
from sklearn.metrics import adjusted_rand_score

from streamem import cli
from streamem.demo import (
    LiveView,
    PlainView,
    Snapshot,
    adjusted_rand_index,
    make_view,
    render_line,
)


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_demo_clusters_the_drifting_stream_and_summarises_it(capsys) -> None:
    assert cli.main(["demo", "--points", "40000", "--plain", "--metrics-port", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^metrics: http://127\.0\.0\.1:\d+/metrics$", out, re.M)
    progress = [line for line in out.splitlines() if line.startswith("progress ")]
    assert progress and "points=40000 total=40000" in progress[-1]
    summary = out[out.index("summary:"):]
    assert "40,000 points answered" in summary
    assert figure(r"ARI (\d\.\d+) of the final model", summary) >= 0.9
    assert figure(r"ARI (\d\.\d+) before the drift", summary) >= 0.9
    assert figure(r"(\d\.\d+) in the last quarter", summary) >= 0.9
    assert abs(figure(r"\(gap ([+-]\d+\.\d+) nats\)", summary)) < 0.1
    assert figure(r"outside the drift's recovery: recall (\d+\.\d)%", summary) >= 80
    # The drift: where the stream changed, the model's first reset after it, the recovery.
    assert "stream drifted at point 20,000" in summary
    reacted = figure(r"first reaction at ([\d,]+)", summary)
    assert 20_000 <= reacted <= 25_000
    resets = dict(re.findall(r"(\w+) (\d+)", summary.split("resets by reason:")[1].split("\n")[0]))
    assert int(resets["drift"]) + int(resets["stranded"]) >= 1
    assert figure(r"true mixture's ([\d,]+) points after the drift", summary) <= 10_000


def test_the_live_view_redraws_in_place_on_a_terminal(monkeypatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.delenv("TERM", raising=False)
    args = ["demo", "--points", "20000", "--rate", "20000", "--metrics-port", "0"]
    assert cli.main(args) == 0
    out = terminal.getvalue()
    panel = out[out.index("\x1b[?25l"):out.index("\x1b[?25h")]
    frames = panel.split("\x1b[J")
    assert len(frames) >= 3  # ~2 redraws per second over ~1 s, plus the last
    assert re.search(r"\x1b\[\d+F", frames[1])  # back to the top of the panel to redraw it
    last = frames[-2]
    assert "points           20,000 / 20,000" in last
    assert re.search(r"log-lik +-\d+\.\d+ mean of the last batch   anomaly threshold -\d+", last)
    assert len(re.findall(r"\n\x1b\[2K +\d  █+░* 0\.\d{3}", last)) == 5  # one bar per component
    assert "point 10,000: the stream drifts to a new mixture" in last
    assert "progress " not in out


def snapshot(**changes) -> Snapshot:
    base = dict(elapsed_s=2.5, points=12_000, total=40_000, rate=4800.0, log_likelihood=-7.25,
                threshold=-14.5, anomalies=17, weights=(0.5, 0.3, 0.2),
                resets={"weight": 0, "drift": 1}, events=("point 10,000: refitted after drift",))
    base.update(changes)
    return Snapshot(**base)


def test_panel_content_and_warming_up_state() -> None:
    view = make_view(FakeTerminal(), plain=False)
    assert isinstance(view, LiveView)
    view.update(snapshot())
    view.update(snapshot(weights=(), threshold=None, log_likelihood=None, events=()))
    first, second = view.out.getvalue().split("\x1b[J")[:2]
    assert "12,000 / 40,000" in first and "4,800 points/s" in first
    assert "anomaly threshold -14.500" in first and "17 flagged so far" in first
    assert "    0  " + "█" * 30 + " 0.500" in first  # the heaviest weight fills its bar
    assert "refitted after drift" in first and "drift 1" in first
    assert second.startswith("\x1b[11F")  # up over the first frame's 11 lines
    assert "(warming up)" in second and "n/a (warming up)" in second and "none yet" in second


def test_plain_progress_lines_when_not_a_terminal() -> None:
    assert isinstance(make_view(io.StringIO(), plain=False), PlainView)
    assert isinstance(make_view(FakeTerminal(), plain=True), PlainView)
    line = render_line(snapshot())
    assert line.startswith("progress elapsed_s=2.5 points=12000 total=40000 points_per_s=4800 ")
    assert "ll_last_batch=-7.250 threshold=-14.500 anomalies=17" in line
    assert "weights=0.500,0.300,0.200" in line and "\x1b" not in line


def test_metrics_endpoint_is_live_while_the_demo_runs() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamem", "demo", "--points", "40000", "--rate", "10000",
         "--plain", "--metrics-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("metrics: "):
                url = line.split()[1]
                break
        assert url
        seen = 0.0
        while seen == 0.0 and proc.poll() is None:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            seen = figure(r'(?m)^streamem_points_total\{outcome="ok"\} (\S+)$', body)
            time.sleep(0.2)
        assert seen > 0
        assert "streamem_component_weight" in body
        rest = proc.stdout.read()
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    assert "40,000 points answered" in rest


@pytest.mark.kafka
def test_demo_through_kafka(kafka_bootstrap, capsys) -> None:
    args = ["demo", "--kafka", "--bootstrap-servers", kafka_bootstrap, "--points", "10000",
            "--plain", "--metrics-port", "0"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    topic = re.search(r"\(topic (\S+)\)", out).group(1)
    summary = out[out.index("summary:"):]
    assert "10,000 points answered" in summary and "via Kafka" in summary
    assert figure(r"ARI (\d\.\d+) of the final model", summary) >= 0.9
    assert "stream drifted at point 5,000" in summary
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert topic not in admin.list_topics()  # the demo cleans up after itself
    finally:
        admin.close()


def test_adjusted_rand_index_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for n, ka, kb in [(2, 2, 2), (50, 3, 4), (1000, 5, 5), (1000, 1, 7), (300, 30, 2)]:
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        b_close = np.where(rng.random(n) < 0.8, a, b)
        for pred in (b, b_close, a + 10):
            assert adjusted_rand_index(a, pred) == pytest.approx(adjusted_rand_score(a, pred),
                                                                 abs=1e-12)
    assert adjusted_rand_index(np.zeros(5), np.zeros(5)) == adjusted_rand_score(np.zeros(5),
                                                                                np.zeros(5))
    assert adjusted_rand_index(np.arange(5), np.arange(5)) == 1.0
    assert adjusted_rand_index(np.array([1]), np.array([0])) == 1.0


def test_demo_runs_without_scikit_learn_or_matplotlib() -> None:
    code = ("import sys; sys.modules['sklearn'] = None; sys.modules['matplotlib'] = None\n"
            "from streamem.cli import main\n"
            "sys.exit(main(['demo', '--points', '5000', '--plain', '--metrics-port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "5,000 points answered" in proc.stdout


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamem", command, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: streamem {command}")
    if command in ("demo", "produce", "inspect"):
        assert "examples:" in proc.stdout and "exit codes:" in proc.stdout
