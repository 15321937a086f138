from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from streamem.metrics import Metrics, MetricsServer

from .prometheus_server import INSTALL_HINT, find_binary


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, ewma_halflife_points=100)


@pytest.fixture
def served(metrics: Metrics) -> Iterator[MetricsServer]:
    server = metrics.serve("127.0.0.1", 0)
    yield server
    server.close()


def _binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH nor in the install cache: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")
