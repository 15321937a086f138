"""Write synthetic points from a known Gaussian mixture into a Kafka topic.

Points come from a random mixture (--components × --features) with a share of uniform
outliers; with --drift-every the stream switches to a new random mixture every that many
seconds. Sends are acknowledged by all in-sync replicas (acks=all); each message's key is the id
of its (first) point as a string, its timestamp is now (epoch ms), and JSON points carry that
time as "ts" so the daemon can measure end-to-end latency. Runs until --points or
--seconds is reached, or forever until SIGTERM/Ctrl+C; then prints a summary.

--bootstrap-servers defaults to $STREAMEM_KAFKA__BOOTSTRAP_SERVERS, else 127.0.0.1:9092; the
other STREAMEM_KAFKA__* settings (security, SASL, client_options) apply as for streamem run.

examples:
  streamem produce --topic streamem.points --points 100000
  streamem produce --bootstrap-servers kafka:9092 --topic streamem.points --rate 2000 \\
      --drift-every 60 --outlier-share 0.01
  streamem produce --topic points.bin --format block --points-per-message 500 --seconds 30

exit codes: 0 done (or stopped by a signal), 1 Kafka failed, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamem.commands.arguments import positive_float, positive_int
from streamem.formats import INPUT_FORMATS, input_format

if TYPE_CHECKING:
    import numpy as np

    from streamem.synthetic import Mixture

BOOTSTRAP_TIMEOUT_MS = 10_000
MAX_CHUNK_POINTS = 1000  #: points drawn and paced at a time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", default=None,
                        help="Kafka brokers (default: $STREAMEM_KAFKA__BOOTSTRAP_SERVERS or "
                             "127.0.0.1:9092)")
    parser.add_argument("--topic", required=True, help="topic to write to")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--points", type=positive_int, metavar="N",
                       help="stop after N points (default: run until stopped)")
    limit.add_argument("--seconds", type=positive_float, metavar="S",
                       help="stop after S seconds (default: run until stopped)")
    parser.add_argument("--rate", type=_non_negative_float, default=0.0, metavar="PTS_PER_S",
                        help="points per second (token bucket; default 0: as fast as possible)")
    parser.add_argument("--components", type=positive_int, default=5, metavar="K",
                        help="components of the mixture (default: 5)")
    parser.add_argument("--features", type=positive_int, default=4, metavar="D",
                        help="features per point (default: 4)")
    parser.add_argument("--outlier-share", type=_share, default=0.005, metavar="F",
                        help="share of uniform outliers, in [0, 1) (default: 0.005)")
    parser.add_argument("--drift-every", type=positive_float, default=None, metavar="SECONDS",
                        help="switch to a new random mixture every SECONDS (default: never)")
    parser.add_argument("--points-per-message", type=positive_int, default=1, metavar="M",
                        help="points per message, not for f32/f64 (default: 1)")
    parser.add_argument("--format", choices=tuple(INPUT_FORMATS), default="json",
                        help="message format, as the daemon's input.format (default: json)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="random seed (default: drawn, and printed in the summary)")
    parser.add_argument("--key-by", choices=("id", "none"), default="id",
                        help="message key: the (first) point id as a string, or none "
                             "(default: id)")


@dataclass(frozen=True)
class ProduceSettings:
    """What to produce; see the command's help for each field."""

    topic: str
    points: int | None = None
    seconds: float | None = None
    rate: float = 0.0
    components: int = 5
    features: int = 4
    outlier_share: float = 0.005
    drift_every: float | None = None
    points_per_message: int = 1
    format: str = "json"
    seed: int | None = None
    key_by: str = "id"


@dataclass(frozen=True)
class Regime:
    """One mixture of the stream: it produced the points from ``first_point`` on."""

    first_point: int
    started_s: float
    mixture: Mixture


@dataclass
class ProduceReport:
    """What was produced: counts, duration, the seed and each mixture in order."""

    topic: str
    seed: int
    points: int = 0
    messages: int = 0
    seconds: float = 0.0
    regimes: list[Regime] = field(default_factory=list)

    def text(self) -> str:
        rate = self.points / self.seconds if self.seconds > 0 else 0.0
        drifts = len(self.regimes) - 1
        mixtures = f"{drifts} drift{'s' if drifts != 1 else ''}" + (
            " at points " + ", ".join(f"{r.first_point:,}" for r in self.regimes[1:])
            if drifts else "")
        return (f"produced {self.points:,} points in {self.messages:,} messages to "
                f"{self.topic} in {self.seconds:.2f} s ({rate:,.0f} points/s); "
                f"{mixtures}; seed {self.seed}")


class TokenBucket:
    """Paces ``rate`` units per second, allowing bursts of ``burst_s`` seconds' worth.

    ``rate`` 0 never waits. :meth:`take` sleeps on ``stop`` so that a signal interrupts it.
    """

    def __init__(self, rate: float, burst_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._capacity = rate * burst_s
        self._tokens = 0.0
        self._clock = clock
        self._last = clock()

    def take(self, n: float, stop: threading.Event) -> bool:
        """Consume ``n`` units, waiting until they are due; False if ``stop`` was set first."""
        if self.rate <= 0:
            return not stop.is_set()
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens < 0:
            return not stop.wait(-self._tokens / self.rate)
        return not stop.is_set()


def encode_messages(X: np.ndarray, ids: np.ndarray, fmt: str, per_message: int,
                    ts_ms: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Pack points into messages of the daemon's input formats.

    Parameters
    ----------
    X : (n, d) points; ids : (n,) non-negative integer ids.
    fmt : an input format (:data:`streamem.formats.INPUT_FORMATS`); with ``per_message`` > 1
        each message is a batch, which a one-point format (``f32``, ``f64``) refuses.
    ts_ms : event time put on the points, where the format carries one.

    Yields
    ------
    (first id of the message, message bytes)
    """
    codec = input_format(fmt)
    if codec.max_points_per_message == 1 and per_message != 1:
        raise ValueError(f"format {fmt} carries one point per message, not {per_message}")
    for start in range(0, len(X), per_message):
        chunk, chunk_ids = X[start:start + per_message], ids[start:start + per_message]
        yield int(chunk_ids[0]), codec.encode(chunk, chunk_ids.tolist(), ts_ms, per_message > 1)


def produce(settings: ProduceSettings, send: Callable[[bytes | None, bytes, int], None],
            stop: threading.Event | None = None) -> ProduceReport:
    """Draw points, pace them and hand each message to ``send(key, value, timestamp_ms)``.

    Stops at ``settings.points`` or ``settings.seconds``, or when ``stop`` is set.
    """
    import numpy as np

    from streamem.synthetic import Mixture, Stream

    stop = stop or threading.Event()
    seed = settings.seed if settings.seed is not None else int(
        np.random.default_rng().integers(2**31))
    rng = np.random.default_rng(seed)
    report = ProduceReport(settings.topic, seed)
    bucket = TokenBucket(settings.rate)
    chunk = _chunk_points(settings)
    started = time.monotonic()

    def new_regime(elapsed: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        mix = Mixture.random(settings.components, settings.features, random_state=rng)
        report.regimes.append(Regime(report.points, elapsed, mix))
        return Stream(mix, settings.outlier_share).batches(chunk, rng)

    batches = new_regime(0.0)
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if settings.seconds is not None and elapsed >= settings.seconds:
            break
        n = chunk if settings.points is None else min(chunk, settings.points - report.points)
        if n <= 0:
            break
        if settings.drift_every and elapsed >= settings.drift_every * len(report.regimes):
            batches = new_regime(elapsed)
        if not bucket.take(n, stop):
            break
        X, _ = next(batches)
        ids = np.arange(report.points, report.points + n)
        now_ms = int(time.time() * 1000)
        for first, value in encode_messages(X[:n], ids, settings.format,
                                            settings.points_per_message, now_ms):
            send(str(first).encode() if settings.key_by == "id" else None, value, now_ms)
            report.messages += 1
        report.points += n
    report.seconds = time.monotonic() - started
    return report


def _chunk_points(settings: ProduceSettings) -> int:
    """Points per draw: whole messages, at most ~1/20 s of the rate so pacing stays smooth."""
    m = settings.points_per_message
    target = MAX_CHUNK_POINTS if settings.rate <= 0 else min(MAX_CHUNK_POINTS, settings.rate / 20)
    return m * max(1, round(target / m))


class KafkaSender:
    """``send(key, value, ts_ms)`` to one topic with acks=all; failures surface at :meth:`check`."""

    def __init__(self, client_kwargs: dict[str, Any], topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.errors: list[BaseException] = []
        self._producer = KafkaProducer(**{"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
                                          "linger_ms": 5, **client_kwargs, "acks": "all"})

    def __call__(self, key: bytes | None, value: bytes, ts_ms: int) -> None:
        self.check()
        future = self._producer.send(self.topic, value=value, key=key, timestamp_ms=ts_ms)
        future.add_errback(self.errors.append)

    def check(self) -> None:
        """Raise the first delivery failure seen so far."""
        if self.errors:
            raise self.errors[0]

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait for every send to be acknowledged, close, and raise any failure."""
        try:
            self._producer.flush(timeout=timeout_s)
        finally:
            self._producer.close(timeout=5)
        self.check()


def settings_from_args(args: argparse.Namespace) -> ProduceSettings:
    return ProduceSettings(
        topic=args.topic, points=args.points, seconds=args.seconds, rate=args.rate,
        components=args.components, features=args.features, outlier_share=args.outlier_share,
        drift_every=args.drift_every, points_per_message=args.points_per_message,
        format=args.format, seed=args.seed, key_by=args.key_by)


def main(args: argparse.Namespace) -> int:
    import os

    from kafka.errors import KafkaError

    from streamem.config import load_config
    from streamem.errors import ConfigError
    from streamem.runtime import stop_on_signals

    if input_format(args.format).max_points_per_message == 1 and args.points_per_message != 1:
        print(f"streamem produce: --format {args.format} carries one point per message; "
              "use another format for --points-per-message > 1", file=sys.stderr)
        return 2
    overrides = [f"kafka.bootstrap_servers={args.bootstrap_servers}"] \
        if args.bootstrap_servers else []
    try:
        cfg = load_config(None, overrides, os.environ)
    except ConfigError as exc:
        print(f"streamem produce: {exc}", file=sys.stderr)
        return 2
    kwargs = {**cfg.kafka.client_kwargs(), "client_id": "streamem-produce"}
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            sender = KafkaSender(kwargs, args.topic)
            try:
                report = produce(settings_from_args(args), sender, stop)
            finally:
                sender.close()
    except KafkaError as exc:
        print(f"streamem produce: Kafka at {cfg.kafka.bootstrap_servers} failed: "
              f"{exc}", file=sys.stderr)
        return 1
    print(report.text(), flush=True)
    return 0


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value
