"""The scikit-learn estimator protocol without importing scikit-learn.

scikit-learn is a development dependency only: parameters follow its rules here, and its tag
classes are imported lazily, when scikit-learn itself asks for them.
"""

from __future__ import annotations

import functools
import inspect
import sys
from types import SimpleNamespace
from typing import Any

from streamem.errors import NotFittedError


class Estimator:
    """``get_params``/``set_params`` over the parameters of the subclass's ``__init__``.

    ``__init__`` must only store each parameter under its own name; checks run when learning
    starts. ``set_params`` calls ``_params_changed`` so a subclass can re-check them then.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        names = inspect.signature(cls.__init__).parameters
        return sorted(name for name in names if name != "self")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name (``deep`` is accepted: none is an estimator)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set parameters by name; checked when learning next starts. Returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid!r}."
                )
            setattr(self, name, value)
        self._params_changed()
        return self

    def _params_changed(self) -> None:
        """Hook run after ``set_params``."""


def sklearn_tags(estimator_type: str) -> Any:
    """scikit-learn (>= 1.6) tags of an unsupervised float64 estimator that checks its input.

    Without scikit-learn (or with an older one) the same facts come back as a plain namespace.
    """
    facts: dict[str, Any] = dict(estimator_type=estimator_type, requires_fit=True,
                                 non_deterministic=False)
    try:
        from sklearn.utils import InputTags, Tags, TargetTags
    except ImportError:
        return SimpleNamespace(**facts, target_tags=SimpleNamespace(required=False),
                               input_tags=SimpleNamespace(two_d_array=True, allow_nan=False,
                                                          sparse=False))
    return Tags(**facts, target_tags=TargetTags(required=False),
                input_tags=InputTags(two_d_array=True, allow_nan=False, sparse=False))


def not_fitted(message: str) -> NotFittedError:
    """A :class:`NotFittedError`; also scikit-learn's own when scikit-learn is already loaded.

    scikit-learn checks for its own class; this never imports it, it only joins it when the
    caller already uses scikit-learn.
    """
    if "sklearn.exceptions" in sys.modules:
        return _joined_not_fitted()(message)
    return NotFittedError(message)


@functools.cache
def _joined_not_fitted() -> type[NotFittedError]:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    return type("NotFittedError", (NotFittedError, SklearnNotFittedError), {
        "__module__": NotFittedError.__module__,
        "__doc__": NotFittedError.__doc__,
    })
