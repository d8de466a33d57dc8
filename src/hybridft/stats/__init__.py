"""Statistics shared by packages that do not import each other: the population stability index
(PSI) and its sample-size-aware test, used by the canary's checks (``release``) and the drift
monitors (``monitor``)."""

from hybridft.stats.psi import DriftResult, length_bins, psi, psi_test

__all__ = ["DriftResult", "length_bins", "psi", "psi_test"]
