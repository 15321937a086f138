"""streamem: cluster a live stream with a Gaussian mixture fitted by stepwise online EM."""

from streamem.model import OnlineGMM

__version__ = "0.1.0"

__all__ = ["OnlineGMM", "__version__"]
