"""What both clients' transactional producers share (``delivery.guarantee: exactly_once``): the
transactional id and how long the broker lets a transaction stay open."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamem.config import Config


def transactional_id(cfg: Config) -> str:
    """``delivery.transactional_id``, else ``<kafka.group_id>.<kafka.client_id>``: the same
    for the same instance after a restart (so it fences its predecessor), different between
    instances that set different client ids."""
    return cfg.delivery.transactional_id or f"{cfg.kafka.group_id}.{cfg.kafka.client_id}"


def transaction_timeout_ms(cfg: Config) -> int:
    """How long the broker lets a transaction stay open: ``transaction_min_s`` plus three
    bounded waits (flush, send offsets, commit), at most 15 min (the brokers' default limit)."""
    d = cfg.delivery
    return min(int(1000 * (d.transaction_min_s + 3 * d.transaction_timeout_s)), 900_000)
