"""Every Prometheus metric of the daemon, and the one HTTP server that exposes them.

All metrics live on the :class:`~prometheus_client.CollectorRegistry` handed to :class:`Metrics`,
so each test (and each daemon) gets its own. Names follow Prometheus conventions: the
``streamem_`` prefix, base units (``_seconds``), ``_total`` for counters, and only bounded labels
(``component`` by K, ``reason``/``kind`` by fixed vocabularies, ``topic``/``partition`` by the
current assignment).

The server answers ``/metrics`` (text or OpenMetrics exposition, by ``Accept``), ``/healthz``
(200 while the daemon works or is waiting on Kafka; 503 once :meth:`Metrics.set_healthy` says a
restart is needed) and ``/readyz`` (200 once :meth:`Metrics.set_ready` says so, 503 before and
after). It holds at most ``max_connections`` connections, each for at most ``client_timeout_s``
(a new one beyond the cap closes the oldest), so idle or slow clients can neither exhaust the
process's file descriptors nor keep a scrape out for longer than that.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

import streamem
from streamem.formats import REASONS, RUNTIME_REASONS

if TYPE_CHECKING:
    from streamem.model import OnlineGMM

log = logging.getLogger(__name__)

__all__ = [
    "DEAD_LETTER_REASONS",
    "KAFKA_ERROR_KINDS",
    "BatchReport",
    "Metrics",
    "MetricsServer",
]

#: Dead-letter reasons: the codec's DecodeError codes, plus the runtime's own. Others → "other".
DEAD_LETTER_REASONS = (*REASONS, *RUNTIME_REASONS, "other")
#: Kafka error kinds (where the error happened). Others → "other".
KAFKA_ERROR_KINDS = (
    "connect",
    "coordinator",
    "poll",
    "produce",
    "delivery",
    "commit",
    "rebalance",
    "checkpoint",
    "other",
)

BATCH_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
)  # fmt: skip


@dataclass(frozen=True)
class BatchReport:
    """What one processed poll batch did, as the runtime measured it.

    Attributes
    ----------
    n_messages : int
        Messages decoded, fitted and answered (dead letters: :meth:`Metrics.dead_letter`).
    n_points : int
        Points fitted.
    n_anomalies : int
        Points flagged as anomalies.
    duration_s : float
        Seconds from ``poll()`` returning to the offsets being committed.
    latencies_s : ndarray of shape (n_points,)
        Per point: event timestamp (or consume time) to output acknowledged, in seconds.
    log_likelihood : ndarray of shape (n_points,)
        Each point's log-likelihood under the model.
    """

    n_messages: int
    n_points: int
    n_anomalies: int
    duration_s: float
    latencies_s: np.ndarray
    log_likelihood: np.ndarray


class _BulkHistogram:
    """A histogram collector fed whole arrays at once (a per-point ``observe`` costs µs each)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last slot: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        """Add ``values`` (any shape); NaN is dropped, negatives count as 0."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = np.maximum(v[~np.isnan(v)], 0.0)
        if v.size == 0:
            return
        # ``le`` buckets are inclusive: a value equal to a bound belongs to that bound's bucket.
        counts = np.bincount(
            np.searchsorted(self._bounds, v, side="left"), minlength=self._counts.size
        )
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [
            (floatToGoString(b), int(c)) for b, c in zip(self._bounds, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", int(cumulative[-1])))
        family = HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc)


class Metrics:
    """The daemon's metrics, registered on ``registry``.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Where every metric is registered. ``None`` creates a fresh registry that also carries the
        process, platform and GC collectors (what the daemon wants); tests pass their own.
    ewma_halflife_points : float
        Half-life, in points, of ``streamem_log_likelihood_mean{window="ewma"}``.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> metrics = Metrics(CollectorRegistry())
    >>> metrics.dead_letter("wrong_dimension")
    >>> metrics.registry.get_sample_value(
    ...     "streamem_dead_letter_messages_total", {"reason": "wrong_dimension"})
    1.0
    >>> with metrics.serve("127.0.0.1", 0) as server:  # GET /metrics, /healthz, /readyz
    ...     server.port > 0
    True
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        ewma_halflife_points: float = 10_000,
    ) -> None:
        if not ewma_halflife_points > 0:
            raise ValueError(f"ewma_halflife_points must be > 0, got {ewma_halflife_points!r}")
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self._halflife = float(ewma_halflife_points)
        self._ewma: float | None = None
        self._resets_seen: dict[str, int] = {}
        self._model_key: tuple[int, int] | None = None
        self._components: set[str] = set()
        self._lags: set[tuple[str, str]] = set()
        self._last_checkpoint: float | None = None
        self._ready = threading.Event()
        self._unhealthy: str | None = None
        self._server: MetricsServer | None = None
        self._lock = threading.Lock()
        self._register(registry)

    def _register(self, r: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter("streamem_" + name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge("streamem_" + name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram("streamem_" + name, doc, buckets=buckets, registry=r)

        self._points = counter(
            "points", "Points fitted (ok) or in a dead-lettered message (invalid).", ("outcome",)
        )
        self._messages = counter("messages", "Input messages by outcome.", ("outcome",))
        self._anomalies = counter("anomalies", "Points flagged as anomalies.")
        self._dead_letters = counter(
            "dead_letter_messages", "Messages sent to the dead-letter topic.", ("reason",)
        )
        self._batch_duration = histogram(
            "batch_duration_seconds",
            "Poll return to offsets committed, per batch.",
            BATCH_DURATION_BUCKETS,
        )
        self._batch_size = histogram(
            "batch_size_points", "Points per fitted batch.", BATCH_SIZE_BUCKETS
        )
        self._latency = _BulkHistogram(
            "streamem_end_to_end_latency_seconds",
            "Per point: event (or consume) time to output acknowledged.",
            LATENCY_BUCKETS,
        )
        r.register(self._latency)  # type: ignore[arg-type]
        self._ll_mean = gauge(
            "log_likelihood_mean",
            "Mean log-likelihood per point: of the last batch, or an EWMA over points.",
            ("window",),
        )
        self._threshold = gauge(
            "anomaly_threshold", "Log-likelihood below which a point is an anomaly (-Inf: warm-up)."
        )
        self._flag_excess = gauge(
            "model_flag_excess",
            "Recent flagged share over model.anomaly_rate (about 1: fits; above 5: fit_poor_).",
        )
        self._learning_rate = gauge("learning_rate", "Step size of the last online-EM update.")
        self._version = gauge("model_version", "Model parameter version (bumps at each refresh).")
        self._seen = gauge("model_points_seen", "Points the model has seen in its lifetime.")
        self._weight = gauge("component_weight", "Mixing weight of each component.", ("component",))
        self._condition = gauge(
            "component_condition_number",
            "Condition number of each component's covariance.",
            ("component",),
        )
        self._resets = counter(
            "collapse_resets", "Components re-seeded after a collapse.", ("reason",)
        )
        self._ckpt_last = gauge(
            "checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint (0: none yet).",
        )
        self._ckpt_age = gauge(
            "checkpoint_age_seconds", "Seconds since the last successful checkpoint (NaN: none)."
        )
        self._ckpt_age.set_function(self._checkpoint_age)
        self._ckpt_failures = counter("checkpoint_failures", "Checkpoints that failed.")
        self._lag = gauge(
            "consumer_lag_messages",
            "Messages from the committed offset to the end of each assigned partition.",
            ("topic", "partition"),
        )
        self._kafka_errors = counter(
            "kafka_errors", "Kafka errors, by where they happened.", ("kind",)
        )
        self._reconnects = counter("kafka_reconnects", "Reconnections to the Kafka cluster.")
        self._rejoins = counter(
            "kafka_group_rejoins", "Re-joins of the consumer group after holding no partitions."
        )
        self._values_dropped = counter(
            "dead_letter_values_dropped",
            "Dead letters sent without their value: too large for the dead-letter topic.",
        )
        self._kafka_up = gauge("kafka_up", "1 while the Kafka cluster is reachable, else 0.")
        self._ready_gauge = gauge("ready", "1 while the daemon is ready to process, else 0.")
        self._leader = gauge("leader", "1 while this instance leads the shared model, else 0.")
        self._version_in_use = gauge(
            "model_version_in_use", "Version of the shared model's parameters answers use.")
        self._staleness = gauge(
            "model_staleness_versions",
            "Versions between the newest shared model seen and the one in use.")
        self._deltas_sent = counter("deltas_sent", "Statistic deltas sent to the stats topic.")
        self._deltas_folded = counter("deltas_folded", "Statistic deltas the leader folded.")
        self._fold_lag = gauge(
            "fold_lag_seconds", "Age (s) of the last delta the leader folded, when folded.")
        self._published_at = gauge(
            "model_published_timestamp_seconds",
            "Unix time of the leader's last publication of the shared model.")
        self._shared_group = gauge(
            "shared_model_info",
            "The consumer group whose model this instance shares (sharing.enabled); always 1.",
            ("group_id",))
        self._build = gauge("build_info", "Build information; always 1.", ("version",))
        self._build.labels(version=streamem.__version__).set(1)
        # Every fixed label value exists from the start, so rate() sees the first increment.
        for outcome in ("ok", "invalid"):
            self._points.labels(outcome=outcome)
        for outcome in ("ok", "dead_letter"):
            self._messages.labels(outcome=outcome)
        for reason in DEAD_LETTER_REASONS:
            self._dead_letters.labels(reason=reason)
        for kind in KAFKA_ERROR_KINDS:
            self._kafka_errors.labels(kind=kind)

    # -- the batch ---------------------------------------------------------------------------

    def observe_batch(self, report: BatchReport, model: OnlineGMM) -> None:
        """Record one processed batch and read the model's state after it."""
        self._points.labels(outcome="ok").inc(report.n_points)
        self._messages.labels(outcome="ok").inc(report.n_messages)
        self._anomalies.inc(report.n_anomalies)
        self._batch_duration.observe(report.duration_s)
        if report.n_points > 0:
            self._batch_size.observe(report.n_points)
        self._latency.observe_many(report.latencies_s)
        self._update_log_likelihood(report.log_likelihood)
        self._read_model(model, report.n_points)

    def _update_log_likelihood(self, log_likelihood: np.ndarray) -> None:
        ll = np.asarray(log_likelihood, dtype=np.float64)
        ll = ll[np.isfinite(ll)]
        if ll.size == 0:
            return
        mean = float(ll.mean())
        with self._lock:
            if self._ewma is None:
                self._ewma = mean
            else:
                alpha = 1.0 - 0.5 ** (ll.size / self._halflife)
                self._ewma += alpha * (mean - self._ewma)
            ewma = self._ewma
        self._ll_mean.labels(window="last_batch").set(mean)
        self._ll_mean.labels(window="ewma").set(ewma)

    def _read_model(self, model: OnlineGMM, n_points: int) -> None:
        self._version.set(model.version_)
        self._seen.set(model.n_seen_)
        self._threshold.set(float(model.anomaly_threshold_))
        self._flag_excess.set(float(model.flag_excess_))
        if model.learning_rate_ is not None:
            self._learning_rate.set(float(model.learning_rate_))
        self._count_resets(model, n_points)
        if model.initialized_:
            self._set_components(model.weights_, model.condition_numbers_)

    def _count_resets(self, model: OnlineGMM, n_points: int) -> None:
        """Add the growth of ``model.resets_`` (cumulative) since the last call to the counter.

        A model not seen before (new object, or fewer points seen than last time) that has seen
        more than this batch was restored from a checkpoint: its counts so far were exported by an
        earlier process and only become the baseline. A fresh model's counts all happened now.
        """
        key = (id(model), int(model.n_seen_))
        resets = {str(k): int(v) for k, v in dict(model.resets_).items()}
        with self._lock:
            new_model = (
                self._model_key is None
                or key[0] != self._model_key[0]
                or key[1] < self._model_key[1]
            )
            self._model_key = key
            if new_model:
                baseline = resets if key[1] > n_points else {}
                self._resets_seen = dict(baseline)
            increments = {}
            for reason, count in resets.items():
                increments[reason] = max(count - self._resets_seen.get(reason, 0), 0)
                self._resets_seen[reason] = count
        for reason, delta in increments.items():
            child = self._resets.labels(reason=reason)
            if delta:
                child.inc(delta)

    def _set_components(self, weights: np.ndarray, condition_numbers: np.ndarray) -> None:
        labels = [str(k) for k in range(len(weights))]
        for label, w, c in zip(labels, weights, condition_numbers, strict=True):
            self._weight.labels(component=label).set(float(w))
            self._condition.labels(component=label).set(float(c))
        with self._lock:
            stale = self._components - set(labels)
            self._components = set(labels)
        for label in stale:
            self._weight.remove(label)
            self._condition.remove(label)

    # -- events ------------------------------------------------------------------------------

    def dead_letter(self, reason: str) -> None:
        """Count one message sent to the dead-letter topic (its points count as one invalid)."""
        reason = reason if reason in DEAD_LETTER_REASONS else "other"
        self._dead_letters.labels(reason=reason).inc()
        self._messages.labels(outcome="dead_letter").inc()
        self._points.labels(outcome="invalid").inc()

    def kafka_error(self, kind: str) -> None:
        """Count one Kafka error; ``kind`` outside :data:`KAFKA_ERROR_KINDS` counts as "other"."""
        kind = kind if kind in KAFKA_ERROR_KINDS else "other"
        self._kafka_errors.labels(kind=kind).inc()

    def reconnect(self) -> None:
        """Count one reconnection to the Kafka cluster."""
        self._reconnects.inc()

    def rejoin(self) -> None:
        """Count one re-join of the consumer group."""
        self._rejoins.inc()

    def dead_letter_value_dropped(self) -> None:
        """Count one dead letter sent without its value."""
        self._values_dropped.inc()

    def set_kafka_up(self, up: bool) -> None:
        """Say whether the Kafka cluster is reachable right now."""
        self._kafka_up.set(1 if up else 0)

    def checkpoint_saved(self, ok: bool) -> None:
        """Record a checkpoint attempt: a success restarts the age, a failure is counted."""
        if not ok:
            self._ckpt_failures.inc()
            return
        now = time.time()
        with self._lock:
            self._last_checkpoint = now
        self._ckpt_last.set(now)

    def _checkpoint_age(self) -> float:
        last = self._last_checkpoint
        return math.nan if last is None else max(time.time() - last, 0.0)

    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of every assigned partition; partitions no longer assigned are dropped."""
        keys = {(str(topic), str(partition)) for topic, partition in lags}
        for (topic, partition), lag in lags.items():
            self._lag.labels(topic=str(topic), partition=str(partition)).set(lag)
        with self._lock:
            stale = self._lags - keys
            self._lags = keys
        for stale_topic, stale_partition in stale:
            self._lag.remove(stale_topic, stale_partition)

    def set_ready(self, ready: bool) -> None:
        """Flip ``/readyz`` (200 or 503) and ``streamem_ready``."""
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self._ready_gauge.set(1 if ready else 0)

    # -- the shared model (streamem.sharing) -------------------------------------------------

    def shares_model_of(self, group_id: str) -> None:
        """``streamem_shared_model_info{group_id}``: alerts on the shared model join on it,
        so that one group's missing leader is not hidden by another group's."""
        self._shared_group.labels(group_id=group_id).set(1)

    def set_leader(self, leading: bool) -> None:
        """``streamem_leader``: 1 while this instance leads."""
        self._leader.set(1 if leading else 0)

    def model_in_use(self, version: int, staleness: int) -> None:
        """The shared model's version answers use, and how far behind the newest seen."""
        self._version_in_use.set(version)
        self._staleness.set(staleness)

    def deltas_sent(self, n: int = 1) -> None:
        self._deltas_sent.inc(n)

    def deltas_folded(self, n: int, lag_s: float) -> None:
        """``n`` deltas folded, the last one ``lag_s`` seconds after it was sent."""
        self._deltas_folded.inc(n)
        self._fold_lag.set(max(lag_s, 0.0))

    def model_published(self) -> None:
        self._published_at.set_to_current_time()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        """Flip ``/healthz``: 503 with ``reason`` when only a restart can help, else 200."""
        self._unhealthy = None if healthy else (reason or "unhealthy")

    @property
    def unhealthy(self) -> str | None:
        """Why ``/healthz`` fails, or None while it answers 200."""
        return self._unhealthy

    # -- serving -----------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 9400, *, max_connections: int = 16,
              client_timeout_s: float = 5.0) -> MetricsServer:
        """Start the HTTP server on ``host:port`` (0: a free port) in a daemon thread."""
        if self._server is not None and not self._server.closed:
            raise RuntimeError(f"metrics already served on {self._server.url}")
        self._server = MetricsServer(self, host, port, max_connections=max_connections,
                                     client_timeout_s=client_timeout_s)
        return self._server


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        metrics = self.server.metrics
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(metrics.registry), content_type)
        elif path == "/healthz":
            reason = metrics.unhealthy
            if reason is None:
                self._send(200, b"ok\n")
            else:
                self._send(503, f"unhealthy: {reason}\n".encode())
        elif path == "/readyz":
            if metrics.ready:
                self._send(200, b"ready\n")
            else:
                self._send(503, b"not ready\n")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line."""


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them, each for at most
    ``client_timeout_s``: :meth:`service_actions` (every poll interval) closes older ones."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connects waits in it, not for a SYN retry

    def __init__(self, metrics: Metrics, host: str, port: int, max_connections: int,
                 client_timeout_s: float) -> None:
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self.metrics = metrics
        self.max_connections = max_connections
        self.client_timeout_s = client_timeout_s
        self._open: dict[socket.socket, float] = {}  # connection -> deadline, oldest first
        self._open_lock = threading.Lock()
        handler = type("_TimedHandler", (_Handler,), {"timeout": client_timeout_s})
        super().__init__((host, port), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:  # out of descriptors: wait instead of spinning on accept()
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            while len(self._open) >= self.max_connections:
                oldest = next(iter(self._open))
                _hang_up(oldest)
                del self._open[oldest]
            self._open[request] = time.monotonic() + self.client_timeout_s
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._open_lock:
            expired = [conn for conn, deadline in self._open.items() if deadline <= now]
            for conn in expired:
                _hang_up(conn)
                del self._open[conn]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or was cut off is not worth a traceback."""
        log.debug("metrics_client_error", exc_info=True)


def _hang_up(conn: socket.socket) -> None:
    """Wake the handler thread blocked on ``conn``; it closes the socket on its way out."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class MetricsServer:
    """The running ``/metrics``, ``/healthz``, ``/readyz`` server; stop it with :meth:`close`."""

    def __init__(self, metrics: Metrics, host: str, port: int, *, max_connections: int = 16,
                 client_timeout_s: float = 5.0) -> None:
        self._httpd = _Server(metrics, host, port, max_connections, client_timeout_s)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self.closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long close() may wait
            name="streamem-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
