"""kafka-python keyword arguments from a :class:`~streamem.config.Config`.

:func:`consumer_settings` and :func:`producer_settings` are what
:class:`~streamem.io.kafka.KafkaSource` and :class:`~streamem.io.kafka.KafkaSink` connect with;
:func:`admin_settings` serves the checkpoint store and the admin helpers. Each starts from
``kafka.client_kwargs()`` and the options that client accepts
(``kafka.client_options``/``<client>_options``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamem.clients.transactions import transaction_timeout_ms, transactional_id
from streamem.io.kafka import DEAD_LETTER_MAX_BYTES, FETCH_MAX_BYTES, OUTPUT_MAX_BYTES, MiB

if TYPE_CHECKING:
    from streamem.config import Config


def backoff_settings(cfg: Config) -> dict[str, int]:
    """kafka-python's reconnect and retry back-off, from ``runtime.retry_initial_s``/``_max_s``.

    Its own defaults back a broker connection off up to 30 s, however short the outage.
    """
    initial_ms = max(int(cfg.runtime.retry_initial_s * 1000), 1)
    return {"reconnect_backoff_ms": initial_ms,
            "reconnect_backoff_max_ms": max(int(cfg.runtime.retry_max_s * 1000), initial_ms),
            "retry_backoff_ms": initial_ms}


def consumer_settings(cfg: Config) -> dict[str, Any]:
    """The KafkaConsumer keyword arguments of the input consumer.

    Fetches of up to 8 MiB per partition (kafka-python's default is 1 MiB) keep a backlog
    of multi-point messages flowing in few round trips; reconnection backs off from
    ``runtime.retry_initial_s`` to ``runtime.retry_max_s``. ``kafka.client_options`` and
    ``kafka.consumer_options`` can override these, not the group and commit settings.
    """
    k = cfg.kafka
    return {
        "bootstrap_timeout_ms": min(k.request_timeout_ms, 10_000),
        "max_partition_fetch_bytes": 8 * MiB,
        "fetch_max_bytes": FETCH_MAX_BYTES,
        **backoff_settings(cfg),
        **k.kwargs_for("consumer"),
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        "max_poll_records": k.max_poll_records,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        "max_poll_interval_ms": k.max_poll_interval_ms,
        "isolation_level": ("read_committed" if cfg.delivery.guarantee == "exactly_once"
                            else "read_uncommitted"),
    }


def producer_settings(cfg: Config) -> dict[str, Any]:
    """The KafkaProducer keyword arguments of the output producer.

    ``linger_ms``, ``batch_size`` and ``compression_type`` are defaults that
    ``kafka.client_options``/``producer_options`` may override; acks, idempotence and the
    delivery timeout are not. ``max_request_size`` is at least
    :data:`~streamem.io.kafka.DEAD_LETTER_MAX_BYTES`, so that a dead letter can carry any
    message read.
    """
    k = cfg.kafka
    delivery_ms = int(k.delivery_timeout_s * 1000)
    settings = {
        "bootstrap_timeout_ms": min(k.request_timeout_ms, 10_000),
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        **backoff_settings(cfg),
        **k.kwargs_for("producer"),
        "acks": "all",
        "enable_idempotence": True,
        "delivery_timeout_ms": delivery_ms,
        "max_block_ms": delivery_ms,
    }
    settings["max_request_size"] = max(settings.get("max_request_size", 0),
                                       DEAD_LETTER_MAX_BYTES)
    settings["request_timeout_ms"] = min(settings.get("request_timeout_ms", 30_000),
                                         delivery_ms - settings["linger_ms"])
    return settings


def transactional_producer_settings(cfg: Config) -> dict[str, Any]:
    """:func:`producer_settings` with a ``transactional_id``; ``max_block_ms`` (how long
    ``init_transactions`` and a send may block) is ``delivery.transaction_timeout_s``.

    The broker aborts a transaction left open longer than ``transaction_timeout_ms``: until
    then a paused or dead instance's open transaction holds back ``read_committed`` readers of
    its output partitions. It is ``transaction_min_s`` plus three bounded waits (flush, send
    offsets, commit), at most 15 min (the brokers' default limit).
    """
    settings = producer_settings(cfg)
    settings["transactional_id"] = transactional_id(cfg)
    settings["max_block_ms"] = int(cfg.delivery.transaction_timeout_s * 1000)
    settings["transaction_timeout_ms"] = transaction_timeout_ms(cfg)
    return settings


def output_max_bytes(cfg: Config) -> int:
    """The largest output message: ``kafka.producer_options.max_request_size`` or
    :data:`~streamem.io.kafka.OUTPUT_MAX_BYTES`."""
    return int(cfg.kafka.kwargs_for("producer").get("max_request_size", OUTPUT_MAX_BYTES))


def admin_settings(cfg: Config) -> dict[str, Any]:
    """The KafkaAdminClient keyword arguments (``kafka.client_options``/``admin_options``)."""
    return cfg.kafka.kwargs_for("admin")
