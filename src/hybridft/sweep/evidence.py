"""Published directions measured on the user's data: holds, does not hold, or inconclusive.

Five claims from the literature (label efficiency, convergence, replay against forgetting,
held-out clusters, LoRA vs full fine-tuning) are each reduced to one difference between groups of
runs, scored on the same rows. Its 95% interval comes from the bootstrap of ``stats``: seeds with
replacement within each group, rows with replacement shared by both groups (paired over rows), so
a base model evaluated once (one seed) is compared with a tuned start trained with several.

``judge`` turns an interval into a verdict with one rule for every claim:

- *holds*: the interval lies entirely on the claimed side of 0;
- *does_not_hold*: the interval rules out an effect of at least ``margin`` in the claimed
  direction (this includes a significant effect in the opposite direction);
- *inconclusive*: otherwise.

A claim is refuted only when the data rule out a practically meaningful effect: an interval that
merely contains 0 is also consistent with the claim being true, so a wide interval (few rows, few
seeds) is inconclusive rather than evidence against the paper. ``margin`` is the smallest effect
the user would act on, in score units.

Where nothing was measured (no held-out cluster, no replay run) the verdict is inconclusive and
``value`` and ``ci95`` are NaN, written to JSON as ``null`` / ``[null, null]``: a made-up number
such as 0.0 would read as a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from hybridft.sweep.stats import (
    Diff,
    Interval,
    Matrix,
    as_matrix,
    bootstrap_means,
    interval,
    is_empty,
    paired_differences,
    pooled,
)

Verdict = Literal["holds", "does_not_hold", "inconclusive"]
Expect = Literal["positive", "negative"]

N_BOOT = 2000
SMALL_REPLAY = 0.05  # "a small replay (1-5%)": the largest ratio that still counts as small
STARTS = ("it_start", "base_start")  # names of the two groups in the points' keys
FULL_LORA = ("full", "lora")

# id -> (claim, source)
CLAIMS = {
    "label_efficiency": (
        "An instruction-tuned start reaches a given target score with fewer labels than SFT "
        "from the base.",
        "Gupta et al. 2023, Instruction Tuned Models are Quick Learners",
    ),
    "convergence": (
        "An instruction-tuned start converges faster and higher in single-task fine-tuning.",
        "Longpre et al. 2023, The Flan Collection",
    ),
    "replay_forgetting": (
        "Sequential SFT forgets instruction skills; a small replay (1–5%) keeps most of them.",
        "Dong et al. 2023; Scialom et al. 2022",
    ),
    "heldout_clusters": (
        "At small scale, instruction tuning can hurt performance on held-out task clusters.",
        "Wei et al. 2021, Finetuned Language Models Are Zero-Shot Learners (FLAN)",
    ),
    "lora_vs_full": (
        "LoRA learns less on the target task and forgets less than full fine-tuning at the "
        "same budget.",
        "Biderman et al. 2024, LoRA Learns Less and Forgets Less",
    ),
}


@dataclass(frozen=True)
class Evidence:
    """One published direction, measured: the number, its interval and the verdict."""

    id: str
    claim: str
    source: str
    measured: str  # one sentence with the number
    value: float
    ci95: tuple[float, float]
    verdict: Verdict
    detail: str  # why this verdict
    points: list[dict[str, Any]] = field(default_factory=list)  # for plots and tables

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)  # NaN (not measured) -> null: JSON has no NaN
        out["value"], out["ci95"] = _num(self.value), [_num(x) for x in self.ci95]
        return out


def judge(ci: Interval, margin: float, expect: Expect) -> Verdict:
    """The verdict on a claimed direction from the 95% interval of its effect (see module doc)."""
    if margin < 0:
        raise ValueError(f"judge: margin must be >= 0, got {margin}")
    if expect == "positive":
        if ci.low > 0:
            return "holds"
        return "does_not_hold" if ci.high < margin else "inconclusive"
    if expect == "negative":
        if ci.high < 0:
            return "holds"
        return "does_not_hold" if ci.low > -margin else "inconclusive"
    raise ValueError(f"judge: expect must be 'positive' or 'negative', got {expect!r}")


def judge_in_words(ci: Interval, margin: float, expect: Expect) -> str:
    """``judge``'s verdict on ``ci`` in words, with the interval."""
    side = "above" if expect == "positive" else "below"
    bound = margin if expect == "positive" else -margin
    iv = f"the 95% interval [{ci.low:+.3f}, {ci.high:+.3f}]"
    verdict = judge(ci, margin, expect)
    if verdict == "holds":
        return f"{iv} lies {side} 0"
    if verdict == "does_not_hold":
        return f"{iv} rules out an effect of {bound:+.3f} or more in the claimed direction"
    return f"{iv} contains 0 and reaches {bound:+.3f}: too wide to decide"


def label_efficiency(
    by_labels: Mapping[int | str, tuple[Matrix, Matrix]],
    margin: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Evidence:
    """Instruction-tuned start vs base start at matched label counts.

    Args:
        by_labels: label count (or ``"all"``) -> (instruction-tuned start, base start) scores,
            seeds x rows on the same test rows. ``"all"`` is the full set; the measure
            pools the counts below it (every count without ``"all"``; the full set alone when it
            is the only one).
        margin: smallest difference that matters (score units).
    """
    head = _head("label_efficiency")
    if not by_labels:
        return _not_measured(*head, "no label-count runs were evaluated")
    order = sorted(by_labels, key=_label_rank)
    kept = [k for k in order if k != "all"] or order  # the subsets; all labels alone if only
    diffs = paired_differences({_label_name(k): by_labels[k] for k in order}, n_boot, seed)
    ci = pooled([diffs[_label_name(k)] for k in kept])
    counts = "/".join(_label_name(k) for k in kept)
    where = f"mean over {counts} labels" if len(kept) > 1 else f"with {counts} labels"
    verdict = judge(ci, margin, "positive")
    points = [
        {"labels": _label_name(k), **_point(by_labels[k], diffs[_label_name(k)], STARTS)}
        for k in order
    ]
    return Evidence(
        *head,
        measured=f"instruction-tuned start − base start, {where}: {ci.mean:+.3f}",
        value=ci.mean,
        ci95=(ci.low, ci.high),
        verdict=verdict,
        detail=f"{_cap(judge_in_words(ci, margin, 'positive'))}. Per label count: "
        + "; ".join(f"{_label_name(k)}: {_iv(diffs[_label_name(k)])}" for k in order)
        + ".",
        points=points,
    )


def convergence(
    by_tokens: Mapping[int, tuple[Matrix, Matrix]],
    margin: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Evidence:
    """Instruction-tuned start vs base start along the single-task learning curve.

    The measure is the difference averaged over the token budgets: the area between the two
    learning curves divided by the number of budgets (plotted on the budgets' own, usually
    doubling, axis). The difference at the largest budget ("higher") is given in the detail.
    """
    head = _head("convergence")
    if not by_tokens:
        return _not_measured(*head, "no learning-curve runs were evaluated")
    order = sorted(by_tokens)
    diffs = paired_differences({str(t): by_tokens[t] for t in order}, n_boot, seed)
    ci = pooled([diffs[str(t)] for t in order])
    last = diffs[str(order[-1])]
    verdict = judge(ci, margin, "positive")
    points = [{"tokens": t, **_point(by_tokens[t], diffs[str(t)], STARTS)} for t in order]
    return Evidence(
        *head,
        measured=(
            f"instruction-tuned start − base start, mean over {len(order)} token budgets "
            f"({order[0]:,}–{order[-1]:,}): {ci.mean:+.3f}"
        ),
        value=ci.mean,
        ci95=(ci.low, ci.high),
        verdict=verdict,
        detail=(
            f"{_cap(judge_in_words(ci, margin, 'positive'))}. At the largest budget ({order[-1]:,} tokens) "
            f"the difference is {_iv(last)}."
        ),
        points=points,
    )


def replay_forgetting(
    by_replay: Mapping[float, Matrix],
    margin: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Evidence:
    """Forgetting of instruction skills by sequential SFT, and how much a small replay keeps.

    Args:
        by_replay: replay ratio -> per-row forgetting (instruction score before the SFT stage
            minus after), seeds x rows on the same instruction eval rows. Needs ratio 0 and at
            least one ratio in (0, 0.05].
        margin: smallest forgetting (and reduction of it) that matters.
    """
    head = _head("replay_forgetting")
    small = [r for r in by_replay if 0 < r <= SMALL_REPLAY]
    if 0 not in by_replay or not small:
        return _not_measured(
            *head, f"needs a run without replay and one with replay in (0, {SMALL_REPLAY:g}]"
        )
    order = sorted(by_replay)
    means = {r: float(np.mean(as_matrix(by_replay[r]))) for r in order}
    # the lowest observed forgetting among the small ratios (chosen after seeing the data: the
    # reduction is slightly optimistic when several small ratios were run)
    best = min(small, key=lambda r: (means[r], r))
    boots = bootstrap_means({f"{r:g}": as_matrix(by_replay[r]) for r in order}, n_boot, seed)
    level = {r: interval(boots[f"{r:g}"], means[r]) for r in order}
    f0 = level[0]
    red = interval(boots["0"] - boots[f"{best:g}"], means[0] - means[best])
    f0_verdict, red_verdict = judge(f0, margin, "positive"), judge(red, margin, "positive")
    kept = red.mean >= 0.5 * f0.mean
    if f0_verdict == "holds" and red_verdict == "holds" and kept:
        verdict: Verdict = "holds"
        reason = f"forgetting at replay 0 is significant and replay {best:g} removes {red.mean / f0.mean:.0%} of it"
    elif f0_verdict == "does_not_hold":
        verdict = "does_not_hold"
        reason = f"there is no forgetting to keep: at replay 0 it is {_iv(f0)}, ruling out {margin:+.3f} or more"
    elif red_verdict == "does_not_hold":
        verdict = "does_not_hold"
        reason = (
            f"replay {best:g} does not reduce forgetting: {judge_in_words(red, margin, 'positive')}"
        )
    elif f0_verdict != "holds":
        verdict = "inconclusive"
        reason = f"forgetting at replay 0 is {_iv(f0)}: {judge_in_words(f0, margin, 'positive')}"
    elif red_verdict != "holds":
        verdict = "inconclusive"
        reason = f"the reduction by replay {best:g}: {judge_in_words(red, margin, 'positive')}"
    else:
        verdict = "inconclusive"
        reason = f"replay {best:g} removes only {red.mean / f0.mean:.0%} of the forgetting at replay 0, less than half"
    return Evidence(
        *head,
        measured=(
            f"forgetting at replay 0 − forgetting at replay {best:g}: {red.mean:+.3f} "
            f"(forgetting at replay 0: {f0.mean:+.3f})"
        ),
        value=red.mean,
        ci95=(red.low, red.high),
        verdict=verdict,
        detail=(
            f"{_cap(reason)}. Reduction {_iv(red)}; forgetting per replay ratio: "
            + "; ".join(f"{r:g}: {_iv(level[r])}" for r in order)
            + "."
        ),
        points=[{"replay": float(r), **_bounds(level[r], "forgetting")} for r in order],
    )


def heldout_clusters(
    it_model: Matrix | None,
    base: Matrix | None,
    margin: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Evidence:
    """Instruction-tuned model vs base on rows of task clusters that no arm trained on."""
    head = _head("heldout_clusters")
    if is_empty(it_model) or is_empty(base):
        return _not_measured(*head, "no held-out cluster was evaluated")
    assert it_model is not None and base is not None
    ci = paired_differences({"heldout": (it_model, base)}, n_boot, seed)["heldout"].ci
    return Evidence(
        *head,
        measured=f"instruction-tuned − base on held-out cluster rows: {ci.mean:+.3f}",
        value=ci.mean,
        ci95=(ci.low, ci.high),
        verdict=judge(ci, margin, "negative"),
        detail=f"{_cap(judge_in_words(ci, margin, 'negative'))}.",
        points=[{"rows": "heldout", **_point((it_model, base), ci, ("it", "base"))}],
    )


def lora_vs_full(
    target_full: Matrix,
    target_lora: Matrix,
    forget_full: Matrix,
    forget_lora: Matrix,
    margin: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Evidence:
    """Full fine-tuning vs LoRA at the same budget: target score and forgetting (full − LoRA).

    Holds when both differences are significantly positive (full learns more and forgets more);
    does not hold when either is ruled out beyond ``margin``; inconclusive otherwise.
    """
    head = _head("lora_vs_full")
    if any(is_empty(m) for m in (target_full, target_lora, forget_full, forget_lora)):
        return _not_measured(*head, "no run of the other method (or no forgetting) was evaluated")
    # target rows and instruction rows differ: two bootstraps
    target = paired_differences({"t": (target_full, target_lora)}, n_boot, seed)["t"].ci
    forget = paired_differences({"f": (forget_full, forget_lora)}, n_boot, seed + 1)["f"].ci
    verdicts = (judge(target, margin, "positive"), judge(forget, margin, "positive"))
    verdict: Verdict = (
        "holds"
        if verdicts == ("holds", "holds")
        else "does_not_hold"
        if "does_not_hold" in verdicts
        else "inconclusive"
    )
    return Evidence(
        *head,
        measured=f"target score, full − LoRA: {target.mean:+.3f}",
        value=target.mean,
        ci95=(target.low, target.high),
        verdict=verdict,
        detail=(
            f"Target score full − LoRA {target.mean:+.3f}: "
            f"{judge_in_words(target, margin, 'positive')}. Forgetting full − LoRA "
            f"{forget.mean:+.3f}: {judge_in_words(forget, margin, 'positive')}."
        ),
        points=[
            {"metric": "target", **_point((target_full, target_lora), target, FULL_LORA)},
            {"metric": "forgetting", **_point((forget_full, forget_lora), forget, FULL_LORA)},
        ],
    )


# --- helpers -------------------------------------------------------------------------------------


def _point(
    pair: tuple[Matrix, Matrix], diff: Diff | Interval, names: tuple[str, str]
) -> dict[str, float]:
    """Each group's mean (named ``<name>_mean``) and the difference's interval."""
    ci = diff.ci if isinstance(diff, Diff) else diff
    a, b = (float(np.mean(as_matrix(m))) for m in pair)
    return {f"{names[0]}_mean": a, f"{names[1]}_mean": b, **_bounds(ci, "difference")}


def _bounds(ci: Interval, name: str) -> dict[str, float]:
    return {name: ci.mean, "low": ci.low, "high": ci.high}


def _label_rank(key: int | str) -> float:
    return math.inf if key == "all" else float(key)


def _label_name(key: int | str) -> str:
    return "all" if key == "all" else str(int(key))


def _head(id: str) -> tuple[str, str, str]:
    return (id, *CLAIMS[id])


def _not_measured(id: str, claim: str, source: str, why_not: str) -> Evidence:
    nan, measured, detail = math.nan, f"not measured: {why_not}", f"{_cap(why_not)}."
    return Evidence(id, claim, source, measured, nan, (nan, nan), "inconclusive", detail)


def _iv(x: Diff | Interval) -> str:
    ci = x.ci if isinstance(x, Diff) else x
    return f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
