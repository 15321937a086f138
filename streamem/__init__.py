"""streamem: cluster a live stream with a Gaussian mixture fitted by stepwise online EM."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["OnlineGMM", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``streamem --help`` and the I/O modules do not pay for numpy/scipy at import.
    if name == "OnlineGMM":
        from streamem.model import OnlineGMM

        return OnlineGMM
    raise AttributeError(f"module 'streamem' has no attribute {name!r}")
