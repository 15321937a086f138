"""The metrics server under idle, slow and half-sent connections: bounded threads and file
descriptors, no busy accept loop, and a scrape still gets through."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from streamem.metrics import Metrics, MetricsServer

CAP, TIMEOUT_S = 8, 1.0


@pytest.fixture
def capped(metrics: Metrics) -> Iterator[MetricsServer]:
    server = metrics.serve("127.0.0.1", 0, max_connections=CAP, client_timeout_s=TIMEOUT_S)
    yield server
    server.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def hostile_clients(port: int, n_idle: int, n_half: int) -> list[socket.socket]:
    """``n_idle`` connections that send nothing, ``n_half`` that send half a request."""
    socks = []
    for i in range(n_idle + n_half):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i >= n_idle:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        socks.append(s)
    return socks


def scrape(url: str) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        r.read()
        return r.status, time.monotonic() - started


def test_idle_and_half_requests_neither_block_a_scrape_nor_pile_up(capped: MetricsServer) -> None:
    threads0, fds0 = threading.active_count(), open_fds()
    socks = hostile_clients(capped.port, n_idle=60, n_half=30)
    try:
        time.sleep(0.3)  # let the server accept them all
        # The server holds at most CAP of them (plus our 90 client ends).
        assert threading.active_count() - threads0 <= CAP
        assert open_fds() - fds0 - len(socks) <= CAP
        status, took_s = scrape(capped.url)
        assert status == 200
        assert took_s < TIMEOUT_S + 2, "a scrape waits at most for one client timeout"

        # Idle with the sockets still open: the accept loop must not spin.
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(2.0)
        cpu_share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        assert cpu_share < 0.2, f"the server burns {cpu_share:.0%} of a CPU while idle"
    finally:
        for s in socks:
            s.close()


def test_a_silent_client_is_cut_off_after_the_timeout(capped: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        while s.recv(4096):  # whatever the server says, it then closes the connection
            pass
        assert time.monotonic() - started < TIMEOUT_S + 1.5


def test_a_new_connection_beyond_the_cap_closes_the_oldest(capped: MetricsServer) -> None:
    socks = hostile_clients(capped.port, n_idle=CAP, n_half=0)
    try:
        time.sleep(0.2)
        assert scrape(capped.url)[0] == 200
        socks[0].settimeout(TIMEOUT_S / 2)  # cut off well before its own timeout
        assert socks[0].recv(1) == b""
    finally:
        for s in socks:
            s.close()


def test_healthz_fails_with_the_reason_when_unhealthy(metrics: Metrics, capped: MetricsServer
                                                      ) -> None:
    metrics.set_healthy(False, "no partitions after re-joining the group twice")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(capped.url + "/healthz", timeout=5)
    assert err.value.code == 503
    assert b"re-joining" in err.value.read()
    metrics.set_healthy(True)
    with urllib.request.urlopen(capped.url + "/healthz", timeout=5) as r:
        assert r.status == 200
