"""Published directions and the undertrained guard on synthetic scores with a known true effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybridft.sweep.evidence import (
    convergence,
    heldout_clusters,
    judge,
    label_efficiency,
    lora_vs_full,
    replay_forgetting,
)
from hybridft.sweep.guard import STEEP_GAIN_PER_DOUBLING, guard, steepness
from hybridft.sweep.stats import Interval, decide

MARGIN = 0.05


def _bernoulli(p: float, seeds: int, rows: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((seeds, rows)) < p).astype(float)


def _shuffled(m: np.ndarray, seed: int) -> np.ndarray:
    """The same rows' scores in another order per seed: a true (and observed) effect of zero."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(r) for r in m])


def _labels(effect: float, rows: int, base_p: float = 0.5) -> dict:
    return {
        n: (_bernoulli(base_p + effect, 3, rows, 10 + i), _bernoulli(base_p, 1, rows, 20 + i))
        for i, n in enumerate((50, 200, 1000, "all"))
    }


# --- judge -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "expect", "verdict"),
    [
        (Interval(0.1, 0.02, 0.2), "positive", "holds"),
        (Interval(-0.1, -0.2, -0.02), "positive", "does_not_hold"),  # opposite direction
        (Interval(0.0, -0.03, 0.03), "positive", "does_not_hold"),  # tight around 0
        (Interval(0.0, -0.2, 0.2), "positive", "inconclusive"),  # wide
        (Interval(-0.1, -0.2, -0.02), "negative", "holds"),
        (Interval(0.0, -0.03, 0.03), "negative", "does_not_hold"),
        (Interval(0.0, -0.2, 0.2), "negative", "inconclusive"),
    ],
)
def test_judge_rules(ci, expect, verdict):
    assert judge(ci, MARGIN, expect) == verdict


def test_judge_nan_interval_is_inconclusive():
    nan = math.nan
    assert judge(Interval(nan, nan, nan), MARGIN, "positive") == "inconclusive"


# --- label efficiency ------------------------------------------------------------------------


def test_a_large_positive_effect_holds():
    e = label_efficiency(_labels(0.3, 300), MARGIN)
    assert e.verdict == "holds" and e.ci95[0] > 0
    assert e.ci95[0] <= e.value <= e.ci95[1]
    assert "50/200/1000" in e.measured  # pooled below "all"
    assert [p["labels"] for p in e.points] == ["50", "200", "1000", "all"]
    for p in e.points:
        assert p["difference"] == pytest.approx(p["it_start_mean"] - p["base_start_mean"])
        assert p["low"] <= p["difference"] <= p["high"]


def test_a_large_negative_effect_does_not_hold():
    e = label_efficiency(_labels(-0.3, 300), MARGIN)
    assert e.verdict == "does_not_hold" and e.ci95[1] < 0


def test_a_zero_effect_with_few_rows_is_inconclusive():
    data = {n: (_bernoulli(0.5, 3, 30, i), None) for i, n in enumerate((50, 200, "all"))}
    data = {n: (it, _shuffled(it, 7)) for n, (it, _) in data.items()}
    e = label_efficiency(data, MARGIN)
    assert e.verdict == "inconclusive"
    assert e.ci95[0] <= 0 <= e.ci95[1] and e.ci95[1] - e.ci95[0] > 2 * MARGIN


def test_a_zero_effect_with_many_rows_is_ruled_out_beyond_the_margin():
    data = {n: (_bernoulli(0.5, 3, 5000, i), None) for i, n in enumerate((50, 200, "all"))}
    data = {n: (it, _shuffled(it, 7)) for n, (it, _) in data.items()}
    e = label_efficiency(data, MARGIN)
    assert e.verdict == "does_not_hold"
    assert -MARGIN < e.ci95[0] <= 0 <= e.ci95[1] < MARGIN


def test_without_all_every_count_is_pooled_and_a_lone_full_set_is_used():
    data = _labels(0.2, 200)
    no_all = {50: data[50], 200: data[200]}
    assert "50/200 labels" in label_efficiency(no_all, MARGIN).measured
    full = label_efficiency(data, MARGIN)  # "all" is the full set: a point, not pooled
    assert "50/200/1000 labels" in full.measured and full.points[-1]["labels"] == "all"
    only = label_efficiency({"all": data["all"]}, MARGIN)
    assert "with all labels" in only.measured and len(only.points) == 1


def test_evidence_is_deterministic_for_a_seed():
    data = _labels(0.05, 100)
    a, b = label_efficiency(data, MARGIN, seed=3), label_efficiency(data, MARGIN, seed=3)
    assert a == b
    other = label_efficiency(data, MARGIN, seed=4)
    assert other.value == a.value and other.ci95 != a.ci95  # the bootstrap, not the data, moved


def test_to_json_has_the_documented_keys_and_round_trips():
    doc = json.loads(json.dumps(label_efficiency(_labels(0.2, 100), MARGIN).to_json()))
    assert {
        "id",
        "claim",
        "source",
        "measured",
        "ci95",
        "verdict",
        "value",
        "detail",
        "points",
    } <= set(doc)
    assert doc["id"] == "label_efficiency" and len(doc["ci95"]) == 2
    assert all(isinstance(x, float) for x in doc["ci95"])


def test_groups_on_different_rows_are_refused():
    with pytest.raises(ValueError, match="same rows"):
        label_efficiency({"all": (_bernoulli(0.5, 2, 10, 0), _bernoulli(0.5, 1, 11, 1))}, MARGIN)


# --- convergence, held-out clusters, LoRA vs full --------------------------------------------


def test_convergence_pools_the_budgets_and_reports_the_largest():
    curves = {
        t: (_bernoulli(0.4 + 0.1 * i + 0.2, 3, 300, i), _bernoulli(0.4 + 0.1 * i, 3, 300, 50 + i))
        for i, t in enumerate((1000, 2000, 4000))
    }
    e = convergence(curves, MARGIN)
    assert e.verdict == "holds" and e.ci95[0] <= e.value <= e.ci95[1]
    assert "4,000 tokens" in e.detail and [p["tokens"] for p in e.points] == [1000, 2000, 4000]


def test_heldout_claim_expects_a_negative_effect():
    worse = heldout_clusters(_bernoulli(0.3, 3, 400, 1), _bernoulli(0.7, 1, 400, 2), MARGIN)
    better = heldout_clusters(_bernoulli(0.7, 3, 400, 1), _bernoulli(0.3, 1, 400, 2), MARGIN)
    assert worse.verdict == "holds" and better.verdict == "does_not_hold"


@pytest.mark.parametrize("missing", [None, [], np.zeros((0, 0))])
def test_heldout_without_rows_is_inconclusive_and_says_so(missing):
    e = heldout_clusters(missing, missing, MARGIN)
    assert e.verdict == "inconclusive" and "no held-out cluster was evaluated" in e.detail.lower()
    assert json.loads(json.dumps(e.to_json()))["ci95"] == [None, None]


def test_lora_vs_full_needs_both_directions():
    hi, lo = _bernoulli(0.8, 3, 300, 1), _bernoulli(0.5, 3, 300, 2)
    both = lora_vs_full(hi, lo, hi, lo, MARGIN)
    assert both.verdict == "holds" and both.value == pytest.approx(hi.mean() - lo.mean())
    forgets_less_with_full = lora_vs_full(hi, lo, lo, hi, MARGIN)
    assert forgets_less_with_full.verdict == "does_not_hold"
    assert "Forgetting full − LoRA" in forgets_less_with_full.detail


# --- replay ----------------------------------------------------------------------------------


def test_replay_that_removes_most_forgetting_holds():
    by_replay = {
        0.0: _bernoulli(0.4, 3, 400, 1),
        0.01: _bernoulli(0.2, 3, 400, 2),
        0.05: _bernoulli(0.05, 3, 400, 3),
        0.2: _bernoulli(0.02, 3, 400, 4),
    }
    e = replay_forgetting(by_replay, MARGIN)
    assert e.verdict == "holds" and "replay 0.05" in e.measured  # the best small ratio, not 0.2
    assert e.ci95[0] <= e.value <= e.ci95[1]
    assert [p["replay"] for p in e.points] == [0.0, 0.01, 0.05, 0.2]


def test_no_forgetting_at_replay_0_does_not_hold_with_the_reason():
    by_replay = {0: np.zeros((3, 400)), 0.05: np.zeros((3, 400))}
    e = replay_forgetting(by_replay, MARGIN)
    assert e.verdict == "does_not_hold" and "no forgetting to keep" in e.detail


def test_replay_that_keeps_little_is_not_a_hold():
    by_replay = {0: _bernoulli(0.4, 3, 400, 1), 0.05: _bernoulli(0.3, 3, 400, 2)}
    e = replay_forgetting(by_replay, MARGIN)
    assert e.ci95[0] > 0 and e.value < 0.5 * e.points[0]["forgetting"]  # significant, but small
    assert e.verdict == "inconclusive" and "less than half" in e.detail


def test_replay_without_a_small_ratio_is_not_measured():
    e = replay_forgetting({0: _bernoulli(0.4, 3, 50, 1), 0.5: _bernoulli(0.1, 3, 50, 2)}, MARGIN)
    assert e.verdict == "inconclusive" and e.to_json()["value"] is None


# --- guard -----------------------------------------------------------------------------------


def _loss(t: float, c: float = 0.5) -> float:
    return 1 + 5 * t**-c


def _power_curve(budget: int, points: int = 4, c: float = 0.5) -> list[tuple[float, float]]:
    tokens = budget / 2.0 ** np.arange(points)[::-1]
    return [(float(t), float(_loss(t, c))) for t in tokens]


def _true_doubling_gain(t: float, first: float, end: float) -> float:
    """The true curve's drop from t to 2t, as a share of the drop from ``first`` to ``end``."""
    return (_loss(t) - _loss(2 * t)) / (_loss(first) - _loss(end))


def _good_scores() -> dict[str, np.ndarray]:
    return {"best_hybrid": _bernoulli(0.9, 3, 400, 1), "sft_only": _bernoulli(0.6, 3, 400, 2)}


FLAT = {"best_hybrid": [(100.0, 1.0), (200.0, 1.0), (400.0, 1.0), (800.0, 1.0)]}


def test_all_good_is_not_inconclusive():
    scores = _good_scores()
    diffs = decide(scores, {"best_hybrid": 1, "sft_only": 1}).differences
    g = guard(scores, 0.5, FLAT, 800, MARGIN, diffs)
    assert not g.inconclusive and g.reasons == [] and g.suggested_tokens is None


def test_best_arm_at_the_majority_baseline_is_inconclusive():
    scores = {"a": _bernoulli(0.5, 3, 400, 1), "b": _bernoulli(0.45, 3, 400, 2)}
    g = guard(
        scores, majority=float(scores["a"].mean()), val_curves={}, budget_tokens=800, margin=MARGIN
    )
    assert g.inconclusive and "majority-class baseline" in g.reasons[0] and "(a)" in g.reasons[0]


def test_a_steep_curve_gives_the_reason_and_a_larger_budget_that_flattens_it():
    budget = 800
    first = _power_curve(budget)[0][0]
    assert _true_doubling_gain(budget, first, budget) > STEEP_GAIN_PER_DOUBLING  # the premise
    g = guard(_good_scores(), 0.5, {"best_hybrid": _power_curve(budget)}, budget, MARGIN)
    assert g.inconclusive and "still falling steeply" in g.reasons[0]
    assert g.suggested_tokens is not None and g.suggested_tokens > budget
    assert _true_doubling_gain(g.suggested_tokens, first, budget) < STEEP_GAIN_PER_DOUBLING
    assert f"{g.suggested_tokens:,}" in g.reasons[0]


def test_a_steep_curve_beyond_the_cap_says_more_than_16x():
    budget = 10  # a slow power law (t^-0.1): its drops shrink too slowly to flatten within 16x
    g = guard(_good_scores(), 0.5, {"a": _power_curve(budget, c=0.1)}, budget, MARGIN)
    assert g.suggested_tokens is None and "more than 16x" in g.reasons[0]


def test_too_few_points_fall_back_to_doubling():
    s = steepness(_power_curve(800, points=3), 800)
    assert s is not None and not s.fitted and s.gain > STEEP_GAIN_PER_DOUBLING
    assert s.resolves_at == 1600


def test_a_flat_or_rising_curve_is_not_steep():
    rising = {"a": [(100.0, 1.0), (200.0, 1.1), (400.0, 1.2), (800.0, 1.3)]}
    for curves in (FLAT, rising):
        g = guard(_good_scores(), 0.5, curves, 800, MARGIN)
        assert not any("steeply" in r for r in g.reasons)


def test_wide_differences_are_the_third_reason():
    diffs = {"sft_only": Interval(0.02, -0.10, 0.14), "tight": Interval(0.0, -0.01, 0.01)}
    g = guard(_good_scores(), 0.5, FLAT, 800, MARGIN, diffs)
    assert g.inconclusive and len(g.reasons) == 1 and g.suggested_tokens is None
    assert "best − sft_only" in g.reasons[0] and "[-0.100, +0.140]" in g.reasons[0]
    assert "tight" not in g.reasons[0] and "not more tokens" in g.reasons[0]


def test_guard_to_json():
    doc = json.loads(json.dumps(guard(_good_scores(), 0.5, FLAT, 800, MARGIN).to_json()))
    assert doc == {"inconclusive": False, "reasons": [], "suggested_tokens": None}


def test_best_arm_ruled_out_above_majority_plus_margin_is_inconclusive():
    scores = {"a": _bernoulli(0.52, 3, 5000, 1), "b": _bernoulli(0.4, 3, 5000, 2)}
    g = guard(scores, majority=0.5, val_curves={}, budget_tokens=800, margin=MARGIN)
    assert scores["a"].mean() > 0.5  # above the baseline, but not by a margin worth acting on
    assert g.inconclusive and "rules out beating the majority-class baseline" in g.reasons[0]
