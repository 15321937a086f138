"""Structured logging: one line per event, as JSON or ``key=value`` pairs.

Call sites log a short event name as the message and the facts as ``extra``::

    log.info("batch_retry", extra={"reason": "flush_failed", "backoff_s": 1.0})

which renders as ``{"ts": ..., "level": "info", "logger": ..., "event": "batch_retry",
"reason": "flush_failed", "backoff_s": 1.0}`` or
``ts=... level=info logger=... event=batch_retry reason=flush_failed backoff_s=1.0``.
Nothing is logged per point, and configuration is only ever logged through
``Config.redacted()``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat("T", "milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    """``key=value`` pairs; values with spaces, quotes or ``=`` are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every log record (streamem's and kafka-python's) to ``stream`` (stderr) as lines.

    kafka-python is held at WARNING unless ``level`` is DEBUG: its INFO lines are per-connection
    chatter, not events of the daemon.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel("DEBUG" if level.upper() == "DEBUG" else "WARNING")
