"""Population stability index (PSI) and its sample-size-aware test: shared by release and monitor.

The canary's per-interval output-drift check (``release.evidence``) and the monitor's drift reports
(``monitor.drift``) both measure a shift between two histograms with the same numbers, so the
statistic lives here, below both. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["DriftResult", "length_bins", "psi", "psi_test"]


@dataclass(frozen=True)
class DriftResult:
    psi: float
    p_value: float
    drifted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(
    expected_counts: Sequence[float] | np.ndarray,
    actual_counts: Sequence[float] | np.ndarray,
    eps: float = 1e-4,
) -> float:
    """Population stability index, sum (a_i - e_i) ln(a_i / e_i) over bin proportions.

    Proportions are floored at ``eps`` so an empty bin gives a large but finite term.
    """
    e = np.asarray(expected_counts, dtype=float)
    a = np.asarray(actual_counts, dtype=float)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"need two count vectors of one length, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("both count vectors need a positive total")
    pe = np.maximum(e / e.sum(), eps)
    pa = np.maximum(a / a.sum(), eps)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def psi_test(
    expected_counts: Sequence[float] | np.ndarray,
    actual_counts: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.01,
    max_psi: float = 0.25,
) -> DriftResult:
    """PSI with a chi-square test of homogeneity: drifted = PSI > max_psi and p-value < alpha.

    The test makes the verdict sample-size aware: with few requests a large PSI is mostly noise.
    """
    value = psi(expected_counts, actual_counts)
    table = np.vstack([expected_counts, actual_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]  # bins empty in both carry no information
    if table.shape[1] < 2:
        p_value = 1.0
    else:
        p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    drifted = value > max_psi and p_value < alpha
    reason = (
        f"PSI {value:.3f} ({'>' if value > max_psi else '<='} {max_psi:g}), chi-square p "
        f"{p_value:.3g} ({'<' if p_value < alpha else '>='} {alpha:g}) over "
        f"{int(table[0].sum())} expected / {int(table[1].sum())} actual: "
        f"{'drifted' if drifted else 'no significant drift'}"
    )
    return DriftResult(psi=value, p_value=p_value, drifted=drifted, reason=reason)


def length_bins(
    values_a: Sequence[float], values_b: Sequence[float], n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Count two samples on the quantile edges of the reference ``values_a`` (ties merge bins).

    Values outside the reference's range fall into the first or last bin.
    """
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    if a.size == 0:
        raise ValueError("the reference sample is empty")
    inner = np.unique(np.quantile(a, np.linspace(0, 1, n_bins + 1)[1:-1]))
    n = inner.size + 1
    # side="right": a value equal to an edge goes to the bin above it, like np.histogram
    count = lambda v: np.bincount(np.searchsorted(inner, v, side="right"), minlength=n)  # noqa: E731
    return count(a), count(b)
