"""Sources and sinks the runtime loop reads from and writes to, and checkpoint stores.

:mod:`.base` defines the :class:`Record`, the :class:`Source` / :class:`Sink` protocols and the
:class:`ClientEvents` a transport reports to; :mod:`.kafka`, :mod:`.stdio` and :mod:`.memory`
implement them; :mod:`.checkpoint` persists the model together with the offsets it reflects;
:mod:`.kafka_admin` holds the Kafka plumbing (topics, reading a topic to its end, a local
broker). Transports take plain values: nothing here imports the config, the metrics or the
runtime. Import the concrete modules directly: only the Kafka ones need kafka-python.
"""

from streamem.io.base import Backoff, CommitFailed, Record, RecordTooLarge, Sink, Source

__all__ = ["Backoff", "CommitFailed", "Record", "RecordTooLarge", "Sink", "Source"]
