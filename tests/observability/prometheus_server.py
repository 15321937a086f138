"""Test helpers: find Prometheus' binaries, and run a REAL ``prometheus`` server on 127.0.0.1.

Reuse from any test::

    from observability.prometheus_server import PrometheusServer   # tests/ on sys.path

    with PrometheusServer(target="127.0.0.1:9400") as prom:        # scrapes every second
        prom.wait_for_samples('streamem_points_total{outcome="ok"}', 3)
        value = prom.query_value('sum(rate(streamem_points_total{outcome="ok"}[10s]))')

The binaries come from ``deploy/prometheus/install.sh`` (on ``PATH``, or in its cache dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "deploy" / "prometheus" / "install.sh"
INSTALL_HINT = f"run `bash {INSTALL_SH.relative_to(REPO)}` (or eval its --print-env output)"


def cache_bin_dir() -> Path:
    """Where ``install.sh`` unpacks the binaries."""
    root = Path(os.environ.get("STREAMEM_CACHE") or Path.home() / ".cache" / "streamem")
    return root / "prometheus" / "usr" / "bin"


def find_binary(name: str) -> str | None:
    """Path of ``promtool`` or ``prometheus``: on ``PATH`` first, then in the install cache."""
    found = shutil.which(name)
    if found:
        return found
    cached = cache_bin_dir() / name
    return str(cached) if os.access(cached, os.X_OK) else None


class PrometheusError(RuntimeError):
    """The server did not start, or a query failed."""


class PrometheusServer:
    """A throw-away Prometheus: 127.0.0.1, a free port, a temp data dir, a 1 s scrape interval.

    Parameters
    ----------
    target : str
        ``host:port`` to scrape at ``/metrics`` (job ``streamem``).
    rule_files : list of path, optional
        Alerting/recording rule files to load (evaluated every second).
    binary : str, optional
        The ``prometheus`` executable; default: :func:`find_binary`.
    """

    def __init__(
        self,
        target: str,
        *,
        rule_files: Sequence[str | Path] = (),
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.target = target
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        found = binary or find_binary("prometheus")
        if found is None:
            raise PrometheusError(f"prometheus binary not found: {INSTALL_HINT}")
        self.binary: str = found
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self._dir = tempfile.TemporaryDirectory(prefix="streamem-prometheus-")
        work = Path(self._dir.name)
        config = work / "prometheus.yml"
        config.write_text(self._config())
        self.port = free_port()
        self._log = open(work / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self) -> str:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {"job_name": "streamem", "static_configs": [{"targets": [self.target]}]}
            ],
        }
        if self.rule_files:
            config["rule_files"] = self.rule_files
        return json.dumps(config, indent=2)  # JSON is YAML

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._proc.returncode}: {self.log()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {self.startup_timeout_s}s: {self.log()}")

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP API ------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise on an error status."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"{url}: {e.code} {e.read().decode(errors='replace')}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{url}: {body}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector query (at unix time ``at``, default now).

        Returns ``[{"metric": {labels}, "value": [ts, "str"]}, ...]``.
        """
        data = self._instant(promql, at)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{promql!r} gave a {data['resultType']}, not a vector")
        return list(data["result"])

    def query_samples(
        self, selector: str, window: str, at: float | None = None
    ) -> list[tuple[float, float]]:
        """The raw scraped ``(timestamp, value)`` samples of ONE series over ``window``."""
        data = self._instant(f"{selector}[{window}]", at)
        if len(data["result"]) != 1:
            raise PrometheusError(f"{selector!r} matched {len(data['result'])} series")
        return [(float(t), float(v)) for t, v in data["result"][0]["values"]]

    def _instant(self, promql: str, at: float | None) -> Any:
        params = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        return self.api("query", **params)

    def query_value(self, promql: str, at: float | None = None) -> float:
        """The single value of a query that must return exactly one series."""
        result = self.query(promql, at)
        if len(result) != 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def wait_for(self, promql: str, predicate: Any = bool, timeout_s: float = 30.0) -> list:
        """Poll ``query(promql)`` until ``predicate(result)`` holds; return that result."""
        deadline = time.monotonic() + timeout_s
        result: list = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise PrometheusError(f"timed out after {timeout_s}s waiting on {promql!r}: {result}")

    def wait_for_samples(self, selector: str, n: int, timeout_s: float = 30.0) -> None:
        """Wait until every series of ``selector`` has at least ``n`` scraped samples."""
        promql = f"count_over_time({selector}[5m])"
        self.wait_for(
            promql, lambda r: bool(r) and all(float(s["value"][1]) >= n for s in r), timeout_s
        )
