"""The HTTP server: /metrics, /healthz, /readyz on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from streamem.metrics import Metrics, MetricsServer


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_healthz(served: MetricsServer) -> None:
    assert get(served.url + "/healthz")[::2] == (200, "ok\n")


def test_readyz_follows_set_ready(metrics: Metrics, served: MetricsServer) -> None:
    assert get(served.url + "/readyz")[0] == 503
    metrics.set_ready(True)
    assert get(served.url + "/readyz")[::2] == (200, "ready\n")
    metrics.set_ready(False)
    assert get(served.url + "/readyz")[0] == 503
    assert get(served.url + "/healthz")[0] == 200


def test_metrics_text_format(metrics: Metrics, served: MetricsServer) -> None:
    metrics.reconnect()
    status, content_type, body = get(served.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    assert "streamem_kafka_reconnects_total 1.0" in body.splitlines()


def test_metrics_openmetrics_on_request(metrics: Metrics, served: MetricsServer) -> None:
    status, content_type, body = get(
        served.url + "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "# TYPE streamem_kafka_reconnects counter" in body


def test_unknown_path_is_404(served: MetricsServer) -> None:
    assert get(served.url + "/nope")[0] == 404


def test_query_string_is_ignored(served: MetricsServer) -> None:
    assert get(served.url + "/healthz?verbose=1")[0] == 200


def test_binds_loopback_on_an_ephemeral_port(served: MetricsServer) -> None:
    assert served.host == "127.0.0.1"
    assert served.port > 0
    assert served.url == f"http://127.0.0.1:{served.port}"


def test_one_server_at_a_time_and_close_frees_the_port(metrics: Metrics) -> None:
    server = metrics.serve("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="already served"):
        metrics.serve("127.0.0.1", 0)
    port = server.port
    server.close()
    server.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    with metrics.serve("127.0.0.1", port) as again:
        assert again.port == port
        assert get(again.url + "/healthz")[0] == 200
