"""The decision's statistics: bootstrap confidence intervals, paired differences, the verdict.

Every arm (SFT only, instruction only, best hybrid) is trained with several seeds and scored on the
same test rows, so two sources of variation matter: the seed (training noise) and the test sample.
The bootstrap resamples both: seeds with replacement, then test rows with replacement; the same
resampled rows serve every arm of one replicate, so arm differences are *paired* over rows.

The verdict follows the intervals: the best arm (highest mean) is recommended when the 95% interval
of its difference to every other arm lies above 0; otherwise the arms whose difference interval
contains 0 are "not significantly different" from it, and the cheapest of them (fewest trained
tokens) is recommended, the tie said in words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# arm -> seed -> per-row scores (every seed of every arm scored on the same rows, same order)
Scores = Mapping[str, Sequence[Sequence[float]] | np.ndarray]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass
class Verdict:
    """The recommendation and the evidence under it."""

    best: str  # highest mean target score
    recommended: str  # best, or the cheapest arm not significantly worse
    significant: bool  # best beats every other arm (difference intervals above 0)
    intervals: dict[str, Interval]
    differences: dict[str, Interval]  # best - other, per other arm
    ties: list[str] = field(default_factory=list)  # arms not significantly different from best
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "recommended": self.recommended,
            "significant": self.significant,
            "intervals": {k: v.to_json() for k, v in self.intervals.items()},
            "differences": {k: v.to_json() for k, v in self.differences.items()},
            "ties": self.ties,
            "text": self.text,
        }


def _matrix(per_seed: Sequence[Sequence[float]] | np.ndarray, arm: str) -> np.ndarray:
    m = np.asarray(per_seed, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{arm}: expected seeds x rows scores, got shape {m.shape}")
    return m


def bootstrap_means(scores: Scores, n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per arm, ``n_boot`` bootstrap replicates of the mean score (seeds, then paired rows)."""
    mats = {arm: _matrix(s, arm) for arm, s in scores.items()}
    rows = {m.shape[1] for m in mats.values()}
    if len(rows) != 1:
        raise ValueError(f"every arm must be scored on the same rows, got row counts {rows}")
    n_rows = rows.pop()
    rng = np.random.default_rng(seed)
    out = {arm: np.empty(n_boot) for arm in mats}
    for b in range(n_boot):
        idx = rng.integers(0, n_rows, n_rows)  # shared by every arm: paired over rows
        for arm, m in mats.items():
            seeds = rng.integers(0, m.shape[0], m.shape[0])
            out[arm][b] = m[seeds][:, idx].mean()
    return out


def interval(samples: np.ndarray, point: float, level: float = 0.95) -> Interval:
    """Percentile interval of bootstrap ``samples`` around the observed ``point``."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def decide(
    scores: Scores,
    cost: Mapping[str, float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Verdict:
    """The verdict over arms from their per-seed, per-row target scores and their cost.

    Args:
        scores: arm -> seeds x rows scores (same rows for every arm).
        cost: arm -> trained tokens (or any cost); breaks ties between equivalent arms.
        n_boot: bootstrap replicates.
        seed: the bootstrap's seed (the verdict is deterministic for a seed).
        level: interval level.
    """
    if len(scores) < 2:
        raise ValueError(f"decide: expected at least two arms, got {list(scores)}")
    scores = {arm: scores[arm] for arm in sorted(scores)}  # the verdict ignores the arms' order
    boots = bootstrap_means(scores, n_boot, seed)
    means = {arm: float(_matrix(s, arm).mean()) for arm, s in scores.items()}
    intervals = {arm: interval(boots[arm], means[arm], level) for arm in scores}
    best = max(means, key=lambda a: (means[a], -cost.get(a, 0.0)))
    diffs = {
        other: interval(boots[best] - boots[other], means[best] - means[other], level)
        for other in scores
        if other != best
    }
    ties = [other for other, d in diffs.items() if d.low <= 0.0]
    significant = not ties
    if significant:
        recommended = best
        text = (
            f"{best} scores highest ({means[best]:.3f}) and its {level:.0%} interval of the "
            "difference to every other arm lies above 0: "
            + "; ".join(
                f"vs {o}: {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for o, d in diffs.items()
            )
            + "."
        )
    else:
        pool = [best, *ties]
        recommended = min(pool, key=lambda a: (cost.get(a, 0.0), -means[a]))
        text = (
            f"No significant difference between {best} ({means[best]:.3f}) and "
            + ", ".join(f"{t} ({means[t]:.3f}, difference {diffs[t].mean:+.3f} "
                        f"[{diffs[t].low:+.3f}, {diffs[t].high:+.3f}])" for t in ties)
            + f": the {level:.0%} intervals of the differences contain 0. "
            + (
                f"Recommended: {recommended}, the cheapest of them "
                f"({cost.get(recommended, 0.0):,.0f} trained tokens)."
                if recommended != best
                else f"Recommended: {best} (highest mean, and no more expensive)."
            )
        )  # fmt: skip
    return Verdict(best, recommended, significant, intervals, diffs, ties, text)


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (``directions``: "maximize" / "minimize" each)."""
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    p = np.asarray(points, dtype=np.float64) * signs  # now: larger is better everywhere
    front = []
    for i in range(len(p)):
        dominated = np.any(np.all(p >= p[i], axis=1) & np.any(p > p[i], axis=1))
        if not dominated:
            front.append(i)
    return front


# --- paired differences between groups of runs scored on the same rows (sweep.evidence) ---------

# seeds x rows scores; a flat list of rows is read as one seed
Matrix = Sequence[Sequence[float]] | Sequence[float] | np.ndarray


def paired_differences(
    pairs: Mapping[str, tuple[Matrix, Matrix]], n_boot: int, seed: int
) -> dict[str, Diff]:
    """Per comparison, the observed difference (first − second) and its bootstrap replicates.

    Comparisons with the same number of rows share one bootstrap (the same resampled rows in every
    group), so a mean over them keeps the rows' correlation; others get their own.
    """
    mats = {k: (as_matrix(a), as_matrix(b)) for k, (a, b) in pairs.items()}
    for k, (a, b) in mats.items():
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"{k}: both groups must be scored on the same rows, got {a.shape[1]} and {b.shape[1]}"
            )
    by_rows: dict[int, list[str]] = {}
    for k, (a, _) in mats.items():
        by_rows.setdefault(a.shape[1], []).append(k)
    out: dict[str, Diff] = {}
    for i, keys in enumerate(by_rows.values()):
        groups = {f"{k}/{side}": mats[k][j] for k in keys for j, side in enumerate("ab")}
        boots = bootstrap_means(groups, n_boot, seed + i)
        for k in keys:
            a, b = mats[k]
            out[k] = Diff(float(a.mean() - b.mean()), boots[f"{k}/a"] - boots[f"{k}/b"])
    return out


@dataclass(frozen=True)
class Diff:
    point: float
    samples: np.ndarray

    @property
    def ci(self) -> Interval:
        return interval(self.samples, self.point)


def pooled(diffs: Sequence[Diff]) -> Interval:
    """The mean of several differences, with the interval of the mean of their replicates."""
    point = float(np.mean([d.point for d in diffs]))
    return interval(np.mean([d.samples for d in diffs], axis=0), point)


def as_matrix(m: Matrix) -> np.ndarray:
    return np.atleast_2d(np.asarray(m, dtype=np.float64))


def is_empty(m: Matrix | None) -> bool:
    return m is None or np.asarray(m, dtype=np.float64).size == 0
