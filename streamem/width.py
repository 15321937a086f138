"""The input's width (features per point) while ``input.n_features`` is null.

The first valid message proposes the width; until the model in hand has finished its warm-up the
width is provisional. Each message of another width counts as a vote for its own: once one other
width has been seen in at least ``MIN_VOTES`` messages and in more than the width in force, it
takes over, and the model's warm-up starts again on it. A stray first message (or a few) of
another width thus costs only itself, not every message after it. Once the model is initialised
its width is final, and a process that fixed another one (a group member that saw only strays)
takes the model's.

>>> width = InputWidth(configured=None)
>>> width.count([3, 3])                          # two messages of 3 features come first
False
>>> width.value
3
>>> width.count([4] * 5)                         # then five of 4: 4 outvotes 3
True
>>> width.value
4
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: Messages of one other width needed (beyond outnumbering the width in force) to replace it.
MIN_VOTES = 5


def model_width(model: Any) -> int | None:
    """The number of features ``model`` has learned with; ``None`` before its first points."""
    try:
        return int(model.n_features_in_)
    except (AttributeError, ValueError):  # scikit-learn's NotFittedError is both
        return None


def match_warm_up(model: Any, width: int | None) -> bool:
    """Restart ``model``'s warm-up when it is warming up at another width than ``width``;
    whether it did (``OnlineGMM.restart_warm_up``)."""
    if width is None or getattr(model, "initialized_", True) or model_width(model) in (None, width):
        return False
    model.restart_warm_up()
    return True


class InputWidth:
    """The width messages are decoded at: fixed by the config, or provisional (see module)."""

    def __init__(self, configured: int | None, resumed: int | None = None) -> None:
        self.configured = configured is not None
        self.value = configured or resumed
        self._votes: Counter[int] = Counter()

    def provisional(self, model: Any) -> bool:
        """Whether messages of another width may still change it: not configured, and
        ``model`` not initialised."""
        return not self.configured and not getattr(model, "initialized_", True)

    def count(self, widths: Iterable[int] | Mapping[int, int]) -> bool:
        """Count one vote per message for each of ``widths`` (or, from a mapping, the votes
        of each width); whether the width changed.

        The first width counted becomes the width when there is none yet (that is not a change).
        """
        if self.configured:
            return False
        self._votes.update(widths)
        if not self._votes:
            return False
        leader, votes = self._votes.most_common(1)[0]
        if self.value is None:
            self.value = leader
            return False
        if leader != self.value and votes >= MIN_VOTES and votes > self._votes[self.value]:
            self.value = leader
            return True
        return False

    def follow(self, model: Any) -> bool:
        """Take an initialised ``model``'s width when it differs (not configured); whether it
        did."""
        if self.configured or not getattr(model, "initialized_", False):
            return False
        width = model_width(model)
        if width is None or width == self.value:
            return False
        self.value = width
        return True
