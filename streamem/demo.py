"""The demo's data, progress view and summary against the truth (``streamem demo``).

:class:`Truth` draws the synthetic stream — a known mixture that drifts abruptly once, with
uniform outliers — and remembers each point's true component and true log-likelihood.
:class:`Answers` collects the daemon's output records by point id. :func:`summarise` compares the
two (adjusted Rand index, held-out log-likelihood, anomaly precision/recall, drift recovery).
:class:`LiveView` redraws a terminal panel with ANSI escapes; :class:`PlainView` prints one
``key=value`` progress line per interval instead.

Only numpy and scipy: the demo runs with ``pip install streamem`` alone (no scikit-learn).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import numpy as np

from streamem.synthetic import OUTLIER, Mixture, Stream

if TYPE_CHECKING:
    from streamem.metrics import Metrics
    from streamem.model import OnlineGMM

Encode = Callable[[np.ndarray, np.ndarray, str, int, int], Iterable[tuple[int, bytes]]]
"""``(X, ids, format, points_per_message, ts_ms) -> (first id, message)`` pairs."""
NOT_DRAWN = -2  #: label of a point id the stream has not reached
RECOVERY_WINDOW = 1000  #: points per window when looking for the log-likelihood's recovery
RECOVERY_TOLERANCE = 0.5  #: nats per point the model may trail the true mixture once recovered
HELD_OUT_POINTS = 20_000


@dataclass(frozen=True)
class DemoSettings:
    """The demo's stream: ``points`` (or ``seconds``, whichever first), drift at half-way."""

    points: int = 300_000
    seconds: float = 45.0
    components: int = 5
    features: int = 4
    outlier_share: float = 0.005
    points_per_message: int = 200
    format: str = "json"
    seed: int = 0
    rate: float = 0.0

    @property
    def drift_at(self) -> int:
        return self.points // 2


class Truth:
    """The stream's ground truth, filled in as its points are drawn.

    Attributes
    ----------
    before, after : Mixture
        The mixture up to point ``drift_at`` and from there on.
    labels : (points,) int
        True component of each point id; :data:`~streamem.synthetic.OUTLIER` for an outlier,
        :data:`NOT_DRAWN` beyond ``drawn``.
    log_likelihood : (points,) float
        Each point's log-likelihood under the mixture that generated it.
    drawn : int
        Points drawn so far.
    """

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        rng = np.random.default_rng(settings.seed)
        self.before = Mixture.random(settings.components, settings.features, random_state=rng)
        self.after = Mixture.random(settings.components, settings.features, random_state=rng)
        self.drift_at = settings.drift_at
        self.labels = np.full(settings.points, NOT_DRAWN, dtype=np.int64)
        self.log_likelihood = np.full(settings.points, np.nan)
        self.drawn = 0
        self._rng = rng

    def messages(self, stop: threading.Event, encode: Encode,
                 pace: Callable[[int, threading.Event], bool]) -> Iterator[tuple[int, bytes]]:
        """Encoded messages ``(first point id, value)`` of the whole stream, paced.

        ``encode(X, ids, format, points_per_message, ts_ms)`` packs points into messages (the
        producer's ``encode_messages``); ``pace(n, stop)`` waits until ``n`` more points are
        due, False once ``stop`` is set. Ends after ``settings.points`` points, or as soon as
        ``stop`` is set.
        """
        s = self.settings
        stream = Stream(self.before, s.outlier_share, after=self.after, drift_at=self.drift_at)
        chunk = s.points_per_message * max(1, 2000 // s.points_per_message)
        for X, y in stream.batches(chunk, self._rng):
            n = min(len(X), s.points - self.drawn)
            if n <= 0 or not pace(n, stop):
                return
            X, y = X[:n], y[:n]
            ids = np.arange(self.drawn, self.drawn + n)
            mix = self.after if self.drawn >= self.drift_at else self.before
            self.labels[ids] = y
            self.log_likelihood[ids] = mix.score_samples(X)
            self.drawn += n
            yield from encode(X, ids, s.format, s.points_per_message, int(time.time() * 1000))


class Answers:
    """The daemon's answer for each point id, from its output records.

    Attributes (all (points,)): ``cluster`` (-1 while unanswered), ``log_likelihood``,
    ``anomaly``, ``warmup``, ``answered``.
    """

    def __init__(self, n_points: int) -> None:
        self.cluster = np.full(n_points, -1, dtype=np.int64)
        self.log_likelihood = np.full(n_points, np.nan)
        self.anomaly = np.zeros(n_points, dtype=bool)
        self.warmup = np.zeros(n_points, dtype=bool)
        self.answered = np.zeros(n_points, dtype=bool)

    def add(self, value: bytes) -> None:
        """Take one output message (a record object or a JSON array of them)."""
        doc = json.loads(value)
        records = doc if isinstance(doc, list) else [doc]
        ids = np.array([r["id"] for r in records], dtype=np.int64)
        self.cluster[ids] = [r["cluster"] for r in records]
        self.log_likelihood[ids] = [np.nan if r["log_likelihood"] is None else r["log_likelihood"]
                                    for r in records]
        self.anomaly[ids] = [r["anomaly"] for r in records]
        self.warmup[ids] = [r["warmup"] for r in records]
        self.answered[ids] = True


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same n points (1: identical partitions).

    >>> adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, 3, 3]))
    1.0
    >>> round(adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])), 3)
    -0.5
    """
    n = len(labels_true)
    if n < 2:
        return 1.0
    _, a = np.unique(labels_true, return_inverse=True)
    _, b = np.unique(labels_pred, return_inverse=True)
    n_b = int(b.max()) + 1
    table = np.bincount(a * n_b + b, minlength=(int(a.max()) + 1) * n_b).reshape(-1, n_b)

    def pairs(counts: np.ndarray) -> float:
        c = counts.astype(np.float64)
        return float((c * (c - 1) / 2).sum())

    both, rows, cols = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    best = (rows + cols) / 2
    if best == expected:
        return 1.0
    return (both - expected) / (best - expected)


# --- summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The run measured against the truth; ``None`` where a figure does not apply.

    ari : the final model's clustering of fresh points of the current mixture.
    ari_before, ari_after, ari_last : the streamed answers' clustering of true inliers before
        the drift, from the log-likelihood's recovery to the end, and over the last quarter of
        the stream (warm-up answers excluded).
    heldout_log_likelihood, true_log_likelihood : mean per point on those fresh points.
    outliers, flagged, caught : true outliers answered, points flagged, outliers flagged.
    precision, recall : of the flags over all answers past warm-up; ``settled_*`` the same
        outside the drift's recovery.
    drift_at : point id where the stream drifted (None if not reached); reacted_at and reaction:
        the model's first reset at or after it; recovered_after: points from the drift to the end
        of the first window whose inliers the model scored within ``RECOVERY_TOLERANCE`` nats of
        the true mixture.
    """

    points: int
    seconds: float
    ari: float | None
    ari_before: float | None
    ari_after: float | None
    ari_last: float | None
    heldout_log_likelihood: float | None
    true_log_likelihood: float | None
    outliers: int
    flagged: int
    caught: int
    precision: float | None
    recall: float | None
    settled_precision: float | None
    settled_recall: float | None
    drift_at: int | None
    reacted_at: int | None
    reaction: str | None
    resets: dict[str, int] = field(default_factory=dict)
    recovered_after: int | None = None


def summarise(truth: Truth, answers: Answers, model: OnlineGMM, seconds: float) -> Summary:
    """Compare the answers and the final model with the truth."""
    answered = answers.answered
    inlier = (truth.labels >= 0) & answered
    live = answered & ~answers.warmup
    drifted = bool(answered[truth.drift_at:].any())
    recovered_after = _recovery(truth, answers) if drifted else None
    end_of_recovery = truth.drift_at + (recovered_after if recovered_after is not None
                                        else len(answered))
    ids = np.arange(len(answered))
    in_recovery = drifted & (ids >= truth.drift_at) & (ids < end_of_recovery)

    ari_before = _ari(truth, answers, inlier & live & (ids < truth.drift_at))
    ari_after = _ari(truth, answers, inlier & live & (ids >= end_of_recovery)) if drifted else None
    last_quarter = ids >= np.flatnonzero(answered)[-1] * 3 // 4 if answered.any() else ~answered
    ari_last = _ari(truth, answers, inlier & live & last_quarter)
    held = _held_out(truth, model, truth.after if drifted else truth.before)
    outlier = (truth.labels == OUTLIER) & live
    p, r = _precision_recall(outlier, answers.anomaly & live)
    sp, sr = _precision_recall(outlier & ~in_recovery, answers.anomaly & live & ~in_recovery)
    reaction = next(((n, k, why) for n, k, why in model.collapse_history_
                     if n >= truth.drift_at), None) if drifted else None
    return Summary(
        points=int(answered.sum()), seconds=seconds, ari=held[0], ari_before=ari_before,
        ari_after=ari_after, ari_last=ari_last, heldout_log_likelihood=held[1],
        true_log_likelihood=held[2],
        outliers=int(outlier.sum()), flagged=int((answers.anomaly & live).sum()),
        caught=int((answers.anomaly & outlier).sum()), precision=p, recall=r,
        settled_precision=sp, settled_recall=sr,
        drift_at=truth.drift_at if drifted else None,
        reacted_at=None if reaction is None else int(reaction[0]),
        reaction=None if reaction is None else _event_text(reaction[1], reaction[2]),
        resets={str(k): int(v) for k, v in model.resets_.items()},
        recovered_after=recovered_after,
    )


def _ari(truth: Truth, answers: Answers, mask: np.ndarray) -> float | None:
    if mask.sum() < 2:
        return None
    return adjusted_rand_index(truth.labels[mask], answers.cluster[mask])


def _held_out(truth: Truth, model: OnlineGMM,
              mix: Mixture) -> tuple[float | None, float | None, float | None]:
    """ARI, model and true mean log-likelihood on fresh points of ``mix``."""
    if model.n_seen_ == 0:
        return None, None, None
    X, y = mix.sample(HELD_OUT_POINTS, random_state=truth.settings.seed + 1)
    ari = adjusted_rand_index(y, model.predict(X))
    return ari, float(model.score_samples(X).mean()), float(mix.score_samples(X).mean())


def _precision_recall(truth: np.ndarray, flagged: np.ndarray) -> tuple[float | None, float | None]:
    caught = int((truth & flagged).sum())
    n_flagged, n_true = int(flagged.sum()), int(truth.sum())
    return (caught / n_flagged if n_flagged else None, caught / n_true if n_true else None)


def _recovery(truth: Truth, answers: Answers) -> int | None:
    """Points from the drift until a window of inliers scores within tolerance of the truth."""
    start = truth.drift_at
    for lo in range(start, truth.drawn, RECOVERY_WINDOW):
        hi = min(lo + RECOVERY_WINDOW, truth.drawn)
        mask = (truth.labels[lo:hi] >= 0) & answers.answered[lo:hi]
        if mask.sum() < RECOVERY_WINDOW // 4:
            continue
        gap = np.nanmean(answers.log_likelihood[lo:hi][mask] - truth.log_likelihood[lo:hi][mask])
        if gap >= -RECOVERY_TOLERANCE:
            return hi - start
    return None


def format_summary(s: Summary, transport: str) -> str:
    """The summary as a short block of text."""
    rate = s.points / s.seconds if s.seconds > 0 else 0.0
    lines = [f"\nsummary: {s.points:,} points answered in {s.seconds:.1f} s ({rate:,.0f} points/s) "
             f"via {transport}"]
    if s.ari is None:
        return "\n".join([*lines, "  the model saw no points"])
    streamed = ", ".join(f"{_num(v, '.3f')} {when}" for v, when in
                         ((s.ari_before, "before the drift"),
                          (s.ari_after, "from the recovery on"),
                          (s.ari_last, "in the last quarter"))
                         if v is not None)
    lines += [
        f"  clustering      ARI {s.ari:.3f} of the final model on {HELD_OUT_POINTS:,} fresh "
        "points of the current mixture",
        f"                  streamed answers: ARI {streamed or 'n/a'}",
        f"  log-likelihood  held-out mean {s.heldout_log_likelihood:.3f} per point; true mixture "
        f"{s.true_log_likelihood:.3f} (gap "
        f"{_gap(s.heldout_log_likelihood, s.true_log_likelihood)})",
        f"  anomalies       {s.outliers:,} true outliers; {s.flagged:,} flagged, {s.caught:,} of "
        f"them outliers: recall {_pct(s.recall)}, precision {_pct(s.precision)}",
    ]
    resets = ", ".join(f"{k} {v}" for k, v in sorted(s.resets.items(), key=lambda kv: -kv[1]))
    if s.drift_at is None:
        lines += ["  drift           not reached: the run ended first (raise --seconds or lower "
                  "--points)", f"                  resets by reason: {resets}"]
        return "\n".join(lines)
    lines.append(f"                  outside the drift's recovery: recall "
                 f"{_pct(s.settled_recall)}, precision {_pct(s.settled_precision)}")
    reacted = ("no reset after it" if s.reacted_at is None else
               f"first reaction at {s.reacted_at:,}: {s.reaction}")
    recovered = ("log-likelihood did not recover within the run" if s.recovered_after is None
                 else f"log-likelihood back within {RECOVERY_TOLERANCE} nats/point of the true "
                      f"mixture's {s.recovered_after:,} points after the drift")
    lines += [f"  drift           stream drifted at point {s.drift_at:,}; {reacted}",
              f"                  resets by reason: {resets}",
              f"                  {recovered}"]
    return "\n".join(lines)


def _num(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _gap(model: float | None, true: float | None) -> str:
    return "n/a" if model is None or true is None else f"{true - model:+.3f} nats"


def _event_text(component: int, reason: str) -> str:
    if reason == "drift":
        return "refitted after drift"
    return f"component {component} reset ({reason})"


# --- progress -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the view shows at one moment (read from the metrics registry and the model)."""

    elapsed_s: float
    points: int
    total: int
    rate: float
    log_likelihood: float | None
    threshold: float | None
    anomalies: int
    weights: tuple[float, ...]
    resets: Mapping[str, int]
    events: tuple[str, ...]


def take_snapshot(metrics: Metrics, model: OnlineGMM, truth: Truth, elapsed_s: float,
                  previous: Snapshot | None = None) -> Snapshot:
    """Read the live numbers; ``rate`` is points/s since ``previous`` (or since the start)."""
    reg = metrics.registry
    points = int(reg.get_sample_value("streamem_points_total", {"outcome": "ok"}) or 0)
    ll = reg.get_sample_value("streamem_log_likelihood_mean", {"window": "last_batch"})
    threshold = reg.get_sample_value("streamem_anomaly_threshold")
    since = previous.elapsed_s if previous else 0.0
    done = previous.points if previous else 0
    rate = (points - done) / (elapsed_s - since) if elapsed_s > since else 0.0
    weights = tuple(float(w) for w in model.weights_) if model.initialized_ else ()
    events = []
    if truth.drawn > truth.drift_at:
        events.append((truth.drift_at, 0, f"point {truth.drift_at:,}: the stream drifts to a new "
                                          "mixture"))
    events += [(n, 1, f"point {n:,}: {_event_text(k, why)}")
               for n, k, why in list(model.collapse_history_)]
    return Snapshot(
        elapsed_s=elapsed_s, points=points, total=truth.settings.points, rate=rate,
        log_likelihood=ll, threshold=threshold if threshold is None or np.isfinite(threshold)
        else None,
        anomalies=int(reg.get_sample_value("streamem_anomalies_total") or 0),
        weights=weights, resets=dict(model.resets_),
        events=tuple(text for _, _, text in sorted(events)[-5:]),
    )


def _bar(fraction: float, width: int) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "░" * (width - filled)


def render_panel(snap: Snapshot) -> list[str]:
    """The live panel as plain lines (the caller adds the ANSI redraw)."""
    done = snap.points / snap.total if snap.total else 0.0
    ll = "   n/a" if snap.log_likelihood is None else f"{snap.log_likelihood:8.3f}"
    thr = "n/a (warming up)" if snap.threshold is None else f"{snap.threshold:.3f}"
    lines = [
        f"points      {snap.points:>11,} / {snap.total:,}  {_bar(done, 24)} {100 * done:3.0f}%",
        f"throughput  {snap.rate:>11,.0f} points/s   elapsed {snap.elapsed_s:5.1f} s",
        f"log-lik     {ll} mean of the last batch   anomaly threshold {thr}",
        f"anomalies   {snap.anomalies:>11,} flagged so far",
        "weights" + ("     (warming up)" if not snap.weights else ""),
    ]
    top = max(snap.weights, default=1.0) or 1.0
    lines += [f"  {k:>3}  {_bar(w / top, 30)} {w:.3f}" for k, w in enumerate(snap.weights)]
    resets = ", ".join(f"{k} {v}" for k, v in snap.resets.items())
    lines.append(f"resets      {resets}")
    lines.append("events" + ("      none yet" if not snap.events else ""))
    lines += [f"  {e}" for e in snap.events]
    return lines


def render_line(snap: Snapshot) -> str:
    """One ``key=value`` progress record."""
    ll = "nan" if snap.log_likelihood is None else f"{snap.log_likelihood:.3f}"
    thr = "nan" if snap.threshold is None else f"{snap.threshold:.3f}"
    weights = ",".join(f"{w:.3f}" for w in snap.weights) or "warming_up"
    resets = ",".join(f"{k}:{v}" for k, v in snap.resets.items())
    return (f"progress elapsed_s={snap.elapsed_s:.1f} points={snap.points} total={snap.total} "
            f"points_per_s={snap.rate:.0f} ll_last_batch={ll} threshold={thr} "
            f"anomalies={snap.anomalies} resets={resets} weights={weights}")


class LiveView:
    """Redraws :func:`render_panel` in place on a terminal (ANSI cursor movement)."""

    interval_s = 0.5

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._height = 0
        out.write("\x1b[?25l")  # hide the cursor while redrawing

    def update(self, snap: Snapshot) -> None:
        lines = render_panel(snap)
        up = f"\x1b[{self._height}F" if self._height else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J")
        self.out.flush()
        self._height = len(lines)

    def close(self) -> None:
        self.out.write("\x1b[?25h")
        self.out.flush()


class PlainView:
    """One progress line per interval, for logs and pipes."""

    interval_s = 1.0

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def update(self, snap: Snapshot) -> None:
        self.out.write(render_line(snap) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def make_view(out: TextIO, plain: bool) -> LiveView | PlainView:
    """The live panel when ``out`` is a terminal (and ``plain`` is off), else plain lines."""
    import os

    isatty = getattr(out, "isatty", lambda: False)()
    if plain or not isatty or os.environ.get("TERM") == "dumb":
        return PlainView(out)
    return LiveView(out)


def describe(settings: DemoSettings, transport: str) -> str:
    """The demo's opening lines."""
    s = settings
    return (f"streamem demo: {s.points:,} points (at most {s.seconds:g} s) from a "
            f"{s.components}-component mixture in {s.features}-D with "
            f"{100 * s.outlier_share:g}% outliers;\n"
            f"  abrupt drift to a new mixture at point {s.drift_at:,}; {s.format} messages of "
            f"{s.points_per_message} points via {transport}")
