"""The exception hierarchy: what went wrong decides what the daemon does next.

* :class:`ConfigError` — a bad config file or flag; the process exits with code 2.
* :class:`MissingCodec` — Kafka holds batches compressed with a codec this Python cannot read
  (an install to fix, not a message to drop); the process exits with code 2, nothing committed.
* :class:`DecodeError` — one bad message; it goes to the dead-letter topic, the loop goes on.
* :class:`TransportError` — the broker or a sink failed; the loop backs off and retries.
* :class:`CheckpointError` — a checkpoint could not be written, or read and checked; at start
  the process exits with code 2, a failed final checkpoint makes it exit with code 1.
* :class:`NotFittedError` — a model was asked for answers before it saw any point.
"""


class StreamemError(Exception):
    """Base class of every error streamem raises on purpose."""


class ConfigError(StreamemError, ValueError):
    """A config key has a bad value; the message names the key and what was expected."""


class MissingCodec(ConfigError):
    """A record batch is compressed with a codec whose library is not installed."""


class DecodeError(StreamemError, ValueError):
    """A message could not be turned into points; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(StreamemError):
    """Kafka (or another source/sink) is unreachable or refused a request."""


class CheckpointError(StreamemError):
    """A checkpoint could not be saved or restored."""


class NotFittedError(StreamemError, ValueError, AttributeError, RuntimeError):
    """A model was used before ``fit`` or ``partial_fit`` gave it parameters.

    A ``ValueError`` and an ``AttributeError`` like scikit-learn's own ``NotFittedError``, so
    ``hasattr(model, "means_")`` is false before fitting; still the ``RuntimeError`` it was.
    """
