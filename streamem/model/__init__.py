"""The model: pure numpy/scipy stepwise online EM for Gaussian mixtures, no I/O."""

from streamem.model.gmm import OnlineGMM
from streamem.model.results import BatchResult

__all__ = ["BatchResult", "OnlineGMM"]
