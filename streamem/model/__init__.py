"""The model: pure numpy/scipy stepwise online EM for Gaussian mixtures, no I/O."""

from streamem.model.gmm import BatchResult, OnlineGMM

__all__ = ["BatchResult", "OnlineGMM"]
