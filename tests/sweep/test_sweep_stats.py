"""The decision statistics on hand-built cases: intervals, paired differences, verdicts, Pareto."""

from __future__ import annotations

import numpy as np
import pytest

from hybridft.sweep.stats import bootstrap_means, decide, pareto_front


def _bernoulli(p: float, rows: int, seeds: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return (rng.random((seeds, rows)) < p).astype(float).tolist()


def test_interval_width_matches_the_binomial_standard_error():
    scores = {"a": _bernoulli(0.5, 400, 1, 1), "b": _bernoulli(0.5, 400, 1, 2)}
    v = decide(scores, {"a": 1, "b": 1}, n_boot=3000)
    iv = v.intervals["a"]
    half = (iv.high - iv.low) / 2
    # 1.96 * sqrt(0.25 / 400) = 0.049
    assert half == pytest.approx(0.049, abs=0.008)
    assert iv.contains(iv.mean)


def test_equal_arms_are_no_significant_difference_and_the_cheaper_is_recommended():
    base = _bernoulli(0.7, 300, 3, 3)
    scores = {"sft_only": base, "best_hybrid": [list(r) for r in base]}
    v = decide(scores, {"sft_only": 1000.0, "best_hybrid": 5000.0})
    assert not v.significant and v.ties
    assert v.recommended == "sft_only"
    assert "No significant difference" in v.text


def test_a_clearly_better_arm_is_significant():
    scores = {
        "best_hybrid": _bernoulli(0.9, 300, 3, 4),
        "sft_only": _bernoulli(0.5, 300, 3, 5),
        "instruction_only": _bernoulli(0.2, 300, 3, 6),
    }
    v = decide(scores, {"best_hybrid": 3, "sft_only": 1, "instruction_only": 2})
    assert v.significant and v.best == v.recommended == "best_hybrid"
    assert all(d.low > 0 for d in v.differences.values())
    assert v.differences["sft_only"].mean == pytest.approx(
        np.mean(scores["best_hybrid"]) - np.mean(scores["sft_only"])
    )


def test_pairing_over_rows_narrows_the_difference_interval():
    """Two arms that differ on exactly the same 10% of rows: paired resampling sees a constant
    difference on the shared rows, so its interval is far narrower than either arm's own."""
    rng = np.random.default_rng(7)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    b[:40] = 1.0 - a[:40]  # flip 40 rows
    v = decide({"a": [a.tolist()], "b": [b.tolist()]}, {"a": 1, "b": 1}, n_boot=2000)
    other = "b" if v.best == "a" else "a"
    diff_width = v.differences[other].high - v.differences[other].low
    arm_width = v.intervals["a"].high - v.intervals["a"].low
    assert diff_width < arm_width


def test_bootstrap_is_deterministic_for_a_seed_and_checks_shapes():
    scores = {"a": _bernoulli(0.5, 50, 2, 8), "b": _bernoulli(0.6, 50, 2, 9)}
    one, two = bootstrap_means(scores, 100, seed=3), bootstrap_means(scores, 100, seed=3)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    with pytest.raises(ValueError, match="same rows"):
        bootstrap_means({"a": [[1.0, 0.0]], "b": [[1.0]]})


def test_pareto_front_on_a_hand_built_set():
    # (score: maximize, tokens: minimize)
    points = [(0.9, 100), (0.8, 50), (0.85, 120), (0.7, 50), (0.95, 200)]
    assert pareto_front(points, ["maximize", "minimize"]) == [0, 1, 4]


def test_verdict_does_not_depend_on_the_order_of_the_arms():
    scores = {"b": _bernoulli(0.5, 80, 2, 10), "a": _bernoulli(0.5, 80, 2, 11)}
    flipped = {"a": scores["a"], "b": scores["b"]}
    cost = {"a": 1, "b": 1}
    assert decide(scores, cost).to_json() == decide(flipped, cost).to_json()
