"""Session fixtures for the real Kafka broker.

``kafka_broker`` is the broker handle (see ``kafka_helpers.KafkaBroker``): an external broker when
``STREAMEM_KAFKA_BOOTSTRAP`` is set, else a private one that ``deploy/kafka/kafka-local.sh`` starts
on free ports with a fresh data dir and stops at the end of the session. Tests using these fixtures
are marked ``kafka`` automatically (``-m "not kafka"`` deselects them).
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_helpers  # noqa: E402
from kafka_helpers import BrokerError, KafkaBroker  # noqa: E402

from streamem.io.kafka_admin import create_topics  # noqa: E402

# CI replays the same examples every run (a property test fails there only for a change of
# code, not for a new draw) and has no per-example deadline on a loaded machine; locally each
# run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

KAFKA_FIXTURES = {"kafka_broker", "kafka_bootstrap", "topic_factory"}
_start_failures: list[str] = []
"""Why the private broker did not start: pytest retries a failed session fixture for every test,
and each retry could wait minutes for a broker that will not come up."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every daemon test against the broker once per Kafka client (``kafka.client``).

    A test is one when it is under ``tests/runtime`` or ``tests/sharing`` (or scrapes the
    daemon's metrics) and builds its daemon's settings with ``daemon_settings``; a test may also
    ask for ``kafka_client``.
    The client is set by :func:`_daemon_client` from the test's parameter.
    """
    path = Path(metafunc.definition.path)
    daemon_test = (("runtime" in path.parts or "sharing" in path.parts
                    or path.name == "test_daemon_scrape.py")
                   and "daemon_settings" in inspect.getsource(metafunc.function))
    if "kafka_client" in metafunc.fixturenames:
        metafunc.parametrize("kafka_client", daemon_helpers.KAFKA_CLIENTS)
    elif daemon_test:
        metafunc.parametrize(CLIENT_PARAM, daemon_helpers.KAFKA_CLIENTS, indirect=True)


CLIENT_PARAM = "_daemon_client"


@pytest.fixture(autouse=True)
def _daemon_client(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Point ``daemon_helpers.daemon_settings`` at this test's ``kafka.client`` (a parameter
    ``kafka_client`` or the one :func:`pytest_generate_tests` adds); others keep the default."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    chosen = params.get("kafka_client", params.get(CLIENT_PARAM))
    if chosen is None:
        yield None
        return
    previous, daemon_helpers.client = daemon_helpers.client, chosen
    try:
        yield chosen
    finally:
        daemon_helpers.client = previous


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's broker; a broker that cannot start fails every test that needs it."""
    external = os.environ.get("STREAMEM_KAFKA_BOOTSTRAP")
    if external:
        yield KafkaBroker(external, external=True)
        return
    if _start_failures:
        pytest.fail(_start_failures[0], pytrace=False)
    data_dir = Path(tempfile.mkdtemp(prefix="streamem-kafka-"))
    broker = KafkaBroker.private(data_dir)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            _start_failures.append(f"the test Kafka broker did not start: {exc}")
        if _start_failures:
            pytest.fail(_start_failures[0], pytrace=False)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``host:port`` of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``create(prefix, partitions=1, compacted=False, configs=None) -> name``: a new, uniquely
    named topic (``configs``: more topic configs, e.g. ``compression.type``).

    Returns once every partition has a leader in the broker's metadata.
    """
    def create(prefix: str, partitions: int = 1, compacted: bool = False,
               configs: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        configs = {**({"cleanup.policy": "compact"} if compacted else {}), **(configs or {})}
        create_topics({"bootstrap_servers": kafka_bootstrap}, [name], partitions=partitions,
                      replication_factor=1, configs=configs)
        return name

    yield create
