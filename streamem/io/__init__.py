"""Sources and sinks the runtime loop reads from and writes to, and checkpoint stores.

:mod:`.base` defines the :class:`Record` and the :class:`Source` / :class:`Sink` protocols;
:mod:`.kafka`, :mod:`.stdio` and :mod:`.memory` implement them; :mod:`.checkpoint` persists the
model together with the offsets it reflects. Import the concrete modules directly: only
:mod:`.kafka` needs kafka-python.
"""

from streamem.io.base import Backoff, CommitFailed, Record, RecordTooLarge, Sink, Source

__all__ = ["Backoff", "CommitFailed", "Record", "RecordTooLarge", "Sink", "Source"]
