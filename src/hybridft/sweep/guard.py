"""The undertrained guard: when the decision report's comparison should not be trusted yet.

Three reasons make a report inconclusive, each said in one sentence with its numbers:

1. The best arm does not beat the majority-class baseline: its mean target score is at or below
   ``majority``, or its 95% interval rules out beating it by ``margin`` (high < majority +
   margin, even when the interval lies above the baseline). Then every arm is near-trivial and
   the ranking between them says little. Flagging whenever the interval's *low* end falls below
   majority + margin was rejected: on a few hundred rows that holds for most good runs, and wide
   intervals are reason 3's job.
2. Validation loss still falling steeply at the end of the token budget: one more doubling of
   tokens is projected to add more than a tenth of the improvement the run achieved so far, so
   more training would likely change the scores and the comparison is between undertrained
   models. The budget that would resolve it comes from a fitted learning curve
   ``L(t) = a + b * t^(-c)``. The share is of the improvement achieved, not of the loss itself: a
   loss heading for 0 always loses a large share of itself per doubling (0.038 -> 0.02 is -45%)
   while no greedy answer changes any more.
3. Intervals too wide for the practical margin: a best − other difference whose interval
   contains 0 but reaches beyond ±margin supports neither "different" nor "equivalent within
   ±margin"; more seeds or test rows (not tokens) narrow it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from hybridft.sweep.evidence import Matrix
from hybridft.sweep.stats import Interval, bootstrap_means, interval

# A doubling of tokens projected to add more than this share of the loss improvement achieved
# so far (first validation point -> the budget's end) means the run is still on the steep part of
# its curve. Measured on the demo: an SFT run at 0.935 accuracy adds 8%, a hybrid whose SFT stage
# was still learning (0.37) 20%; a judgement call between them.
STEEP_GAIN_PER_DOUBLING = 0.10
# Fewer points than this do not pin down three curve parameters; then the guard measures the
# slope over the last doubling of tokens and suggests twice the budget.
MIN_FIT_POINTS = 4
# Suggestions stop here: beyond 16x the budget the extrapolation of a curve fitted on the budget's
# own range is not worth a number.
MAX_BUDGET_FACTOR = 16
NICE_MANTISSAS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


@dataclass(frozen=True)
class Guard:
    """Whether the report is inconclusive, why, and the token budget that would help (if any)."""

    inconclusive: bool
    reasons: list[str] = field(default_factory=list)
    suggested_tokens: int | None = None  # None: no token budget helps, or more than 16x

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Steepness:
    """One arm's validation curve at the end of the budget."""

    gain: float  # projected loss drop from one more doubling, as a share of the drop achieved
    fitted: bool  # gain from the power-law fit (else from the slope over the last doubling)
    resolves_at: float | None  # tokens where the gain falls below the threshold; None: > cap


def guard(
    arm_scores: Mapping[str, Matrix],
    majority: float,
    val_curves: Mapping[str, Sequence[tuple[float, float]]],
    budget_tokens: int,
    margin: float,
    differences: Mapping[str, Interval] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> Guard:
    """The guard over a report's arms (see the module doc for the three reasons).

    Args:
        arm_scores: arm -> seeds x rows target scores (same rows for every arm).
        majority: the majority-class baseline's target score on those rows.
        val_curves: arm -> (tokens, validation loss) points of its training run.
        budget_tokens: the token budget every arm trained.
        margin: the smallest score difference that matters.
        differences: best − other intervals per other arm (``stats.decide(...).differences``).
    """
    reasons: list[str] = []
    below = _below_majority(arm_scores, majority, margin, n_boot, seed)
    if below:
        reasons.append(below)
    # each curve at its own end (an arm's last stage may be a part of the budget); the budget
    # that resolves it scales the whole schedule, stage shares kept
    ends = {arm: max((t for t, _ in curve), default=0.0) for arm, curve in val_curves.items()}
    measured = {
        arm: steepness(curve, int(ends[arm])) if ends[arm] > 0 else None
        for arm, curve in val_curves.items()
    }
    steep = {arm: s for arm, s in measured.items() if s and s.gain > STEEP_GAIN_PER_DOUBLING}
    suggested = None
    if steep:
        needed = [
            None if s.resolves_at is None else s.resolves_at / ends[arm] * budget_tokens
            for arm, s in steep.items()
        ]
        cap = MAX_BUDGET_FACTOR * budget_tokens
        # one budget for every arm (matched compute): the largest any arm needs
        suggested = None if None in needed else nice_tokens(max(n for n in needed if n))
        where = (
            f"about {suggested:,} tokens would bring every arm below it"
            if suggested
            else f"more than {MAX_BUDGET_FACTOR}x the budget ({cap:,} tokens) would be needed"
        )
        per_arm = ", ".join(
            f"{arm} {s.gain:.1%} ({'power-law fit' if s.fitted else 'slope over the last doubling'})"
            for arm, s in steep.items()
        )
        reasons.append(
            f"Validation loss was still falling steeply at the end of the {budget_tokens:,}-token "
            f"budget (one more doubling is projected to add this share of the improvement so "
            f"far: {per_arm}; threshold {STEEP_GAIN_PER_DOUBLING:.0%}): {where}."
        )
    wide = _too_wide(differences or {}, margin)
    if wide:
        reasons.append(wide)
    return Guard(bool(reasons), reasons, suggested)


def steepness(curve: Sequence[tuple[float, float]], budget_tokens: int) -> Steepness | None:
    """How steeply ``curve`` (tokens, validation loss) still falls at ``budget_tokens``.

    With enough points, fit ``L(t) = a + b * t^(-c)`` (a, b >= 0, c > 0) and project the relative
    improvement from ``budget_tokens`` to twice it, and the smallest budget where that falls below
    the threshold. Otherwise (or when the fit fails) take the least-squares slope of loss against
    log2(tokens) over the last doubling of tokens, and suggest twice the budget. None: < 2 points.
    """
    pts = sorted((float(t), float(v)) for t, v in curve if t > 0 and math.isfinite(v))
    if len(pts) < 2:
        return None
    t = np.array([p[0] for p in pts]) / budget_tokens  # in budgets: well-conditioned for the fit
    loss = np.array([p[1] for p in pts])
    achieved = float(loss[0] - loss[-1])  # the improvement so far
    if achieved <= 0:
        return Steepness(0.0, False, None)  # flat or rising: nothing left to gain
    params = _fit_power_law(t, loss) if len(pts) >= MIN_FIT_POINTS else None
    if params is not None:
        a, b, c = params
        gain = _doubling_drop(1.0, b, c) / achieved
        at = _resolving_factor(b, c, achieved)
        return Steepness(gain, True, None if at is None else max(at, 1.0) * budget_tokens)
    last = t >= t[-1] / 2
    if last.sum() < 2:
        last[-2:] = True
    slope, _ = np.polyfit(np.log2(t[last]), loss[last], 1)
    return Steepness(max(float(-slope), 0.0) / achieved, False, 2.0 * budget_tokens)


def nice_tokens(tokens: float) -> int:
    """``tokens`` rounded up to 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten."""
    if tokens <= 0:
        return 0
    power = 10 ** math.floor(math.log10(tokens))
    mantissa = next(m for m in NICE_MANTISSAS if m * power >= tokens * (1 - 1e-12))
    return int(math.ceil(mantissa * power))


def _fit_power_law(t: np.ndarray, loss: np.ndarray) -> tuple[float, float, float] | None:
    def curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a + b * np.power(x, -c)

    lo, hi = float(loss.min()), float(loss.max())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                curve,
                t,
                loss,
                p0=(0.9 * lo, max(hi - lo, 1e-6), 0.5),
                bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 5.0]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None
    a, b, c = (float(p) for p in params)
    return (a, b, c) if all(math.isfinite(p) for p in (a, b, c)) else None


def _doubling_drop(x: float, b: float, c: float) -> float:
    """How much ``a + b x^-c`` falls from ``x`` to ``2x``."""
    return b * x**-c * (1 - 2**-c)


def _resolving_factor(b: float, c: float, achieved: float) -> float | None:
    """The budget multiple where the doubling drop falls to the threshold share of ``achieved``;
    None beyond the cap. Solves b x^-c (1 - 2^-c) = g * achieved for x."""
    target = STEEP_GAIN_PER_DOUBLING * achieved
    if _doubling_drop(1.0, b, c) <= target:
        return 1.0
    x = (b * (1 - 2**-c) / target) ** (1 / c)
    return x if x <= MAX_BUDGET_FACTOR else None


def _below_majority(
    arm_scores: Mapping[str, Matrix], majority: float, margin: float, n_boot: int, seed: int
) -> str | None:
    if not arm_scores:
        raise ValueError("guard: expected at least one arm's scores")
    mats = {arm: np.atleast_2d(np.asarray(m, dtype=np.float64)) for arm, m in arm_scores.items()}
    means = {arm: float(m.mean()) for arm, m in mats.items()}
    best = max(sorted(means), key=lambda a: means[a])
    boots = bootstrap_means({best: mats[best]}, n_boot, seed)[best]
    ci = interval(boots, means[best])
    iv = f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"
    if ci.mean <= majority:
        return f"The best arm ({best}) scores {iv}, at or below the majority-class baseline {majority:.3f}."
    if ci.high < majority + margin:
        return (
            f"The best arm ({best}) scores {iv}: its 95% interval rules out beating the "
            f"majority-class baseline {majority:.3f} by {margin:.3f} or more."
        )
    return None


def _too_wide(differences: Mapping[str, Interval], margin: float) -> str | None:
    """Differences that state neither a difference (0 outside) nor equivalence (within ±margin)."""
    wide = {
        other: d
        for other, d in differences.items()
        if d.low <= 0 <= d.high and (d.low <= -margin or d.high >= margin)
    }
    if not wide:
        return None
    parts = []
    for other, d in wide.items():
        # half-width needed: the easier of equivalence (|mean| + h < margin) and difference
        # (h < |mean|); widths shrink roughly as 1/sqrt(seeds x rows)
        half, target = (d.high - d.low) / 2, max(margin - abs(d.mean), abs(d.mean))
        factor = math.ceil((half / target) ** 2) if target > 0 else None
        more = f", roughly {factor}x the seeds x rows to separate" if factor else ""
        parts.append(f"best − {other} {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{more}")
    return (
        f"The 95% intervals are too wide to state either a difference or an equivalence within "
        f"±{margin:.3f} ({'; '.join(parts)}): more seeds or test rows are needed, not more tokens."
    )
