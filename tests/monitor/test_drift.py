"""Drift monitors: error bounds of the sequential test under continuous monitoring with a finite
reference, its power, the vectorised statistic against a plain loop, and the fixed PSI baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybridft.monitor.drift import (
    calibrate_fixed_psi_rule,
    categorical_drift,
    first_crossing,
    fixed_psi_alarms,
    fixed_psi_rule,
    intent_from_label_probs,
    length_bin_labels,
    length_drift,
    psi_many,
    sequential_log_evalues,
    simulate_window,
)
from hybridft.stats.psi import length_bins, psi

BASE = np.array([0.30, 0.25, 0.15, 0.12, 0.10, 0.08])
INTENTS = ["network", "identity", "hardware", "software", "facilities", "other"]
RUNS = 600


def slack(rate: float, n: int = RUNS) -> float:
    """Three Monte-Carlo standard errors of a rate estimated from n runs."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def shifted(points: float) -> np.ndarray:
    p = BASE.copy()
    p[0] -= points / 100
    p[-1] += points / 100
    return p


def detection_at(shares, n_ref, horizon, *, alpha=0.01, runs=RUNS, seed=0, plug_in=False):
    """First crossing per simulated run (0: none); each run has its own reference sample."""
    rng = np.random.default_rng(seed)
    ref = rng.multinomial(n_ref, BASE, size=runs).astype(float)
    codes = simulate_window(rng, shares, runs, horizon)
    if plug_in:
        # a null that takes the reference shares as exact: the same counts, a billion times over
        ref = (ref + 0.5) * 1e9 - 0.5
    return first_crossing(sequential_log_evalues(ref, codes), alpha)


# --- the sequential test: error bounds and power ----------------------------------------------


@pytest.mark.parametrize(("n_ref", "horizon"), [(300, 6000), (3000, 3000)])
def test_false_alarms_stay_within_alpha_over_every_look_with_a_finite_reference(n_ref, horizon):
    alpha = 0.05
    bound = alpha + slack(alpha)
    false_alarms = np.mean(detection_at(BASE, n_ref, horizon, alpha=alpha, seed=n_ref) > 0)
    assert false_alarms <= bound
    if n_ref < horizon:  # taking the reference's shares as exact breaks the bound
        plug_in = detection_at(BASE, n_ref, horizon, alpha=alpha, seed=n_ref, plug_in=True)
        assert np.mean(plug_in > 0) > bound


def test_a_large_shift_is_detected_quickly_and_bigger_shifts_sooner():
    horizon = 3000
    medians = []
    for points in (5, 10, 20):
        at = detection_at(shifted(points), 2000, horizon, runs=200, seed=points)
        if points >= 10:
            assert np.mean(at > 0) >= 0.95
        medians.append(np.median(np.where(at > 0, at, horizon)))
    assert medians[0] > medians[1] > medians[2]
    assert medians[2] < 200  # a 20-point shift takes a few dozen requests, not thousands


def loop_log_evalues(reference: list[str], current: list[str], kappa: float) -> list[float]:
    """The e-value of the module docstring, one request at a time, with plain dicts."""
    labels = sorted({*reference, *current})
    a = {c: reference.count(c) + 0.5 for c in labels}
    a0 = sum(a.values())
    seen = dict.fromkeys(labels, 0)
    log_e, out = 0.0, []
    for i, x in enumerate(current):
        alt = (kappa * a[x] / a0 + seen[x]) / (kappa + i)
        null = (a[x] + seen[x]) / (a0 + i)
        log_e += math.log(alt / null)
        out.append(log_e)
        seen[x] += 1
    return out


def test_vectorised_evalue_equals_a_per_request_loop():
    rng = np.random.default_rng(4)
    reference = list(rng.choice(INTENTS[:5], size=400, p=[0.4, 0.3, 0.1, 0.1, 0.1]))
    current = list(rng.choice(INTENTS, size=300, p=[0.2, 0.3, 0.1, 0.1, 0.1, 0.2]))
    labels = sorted({*reference, *current})
    codes = np.array([labels.index(c) for c in current])
    counts = np.array([reference.count(c) for c in labels])
    expected = loop_log_evalues(reference, current, kappa=100.0)
    assert np.allclose(sequential_log_evalues(counts, codes), expected, rtol=1e-10, atol=1e-10)
    report = categorical_drift(reference, current, monitor="intent", version="3", alpha=0.01)
    assert report.log_evidence == pytest.approx(max(0.0, max(expected)))
    first = next(i + 1 for i, v in enumerate(expected) if v >= math.log(100))
    assert report.drifted and report.detected_after == first
    assert report.p_value == pytest.approx(math.exp(-max(expected)))


# --- reports -----------------------------------------------------------------------------------


def test_report_psi_and_shares_agree_with_the_counts():
    rng = np.random.default_rng(5)
    reference = list(rng.choice(INTENTS, size=2000, p=BASE))
    current = list(rng.choice(INTENTS, size=700, p=shifted(4)))
    report = categorical_drift(reference, current, monitor="intent", version="7")
    ref_counts = [reference.count(c) for c in report.reference_dist]
    cur_counts = [current.count(c) for c in report.reference_dist]
    assert report.psi == pytest.approx(psi(ref_counts, cur_counts))
    assert sum(report.reference_dist.values()) == pytest.approx(1.0)
    assert sum(report.current_dist.values()) == pytest.approx(1.0)
    assert report.current_dist["other"] == pytest.approx(current.count("other") / 700)
    assert (report.n_reference, report.n_current) == (2000, 700)
    assert json.loads(json.dumps(report.to_dict()))["monitor"] == "intent"
    assert f"{report.psi:.3f}" in report.reason


def test_psi_many_is_analysis_psi_row_by_row():
    rng = np.random.default_rng(6)
    e, a = rng.integers(0, 50, size=(20, 6)) + 1, rng.integers(0, 50, size=(20, 6))
    a[:, 0] += 1
    assert np.allclose(psi_many(e, a), [psi(x, y) for x, y in zip(e, a, strict=True)])


def test_the_psi_floor_keeps_a_significant_but_small_shift_from_counting():
    rng = np.random.default_rng(7)
    reference = list(rng.choice(INTENTS, size=20_000, p=BASE))
    current = list(rng.choice(INTENTS, size=20_000, p=shifted(4)))
    plain = categorical_drift(reference, current, monitor="intent", version="1")
    floored = categorical_drift(reference, current, monitor="intent", version="1", min_psi=0.1)
    assert plain.drifted and plain.psi < 0.1
    assert not floored.drifted and floored.detected_after == plain.detected_after
    assert "floor" in floored.reason


def test_fixed_categories_keep_unseen_ones_and_reject_strangers():
    report = categorical_drift(
        ["a"] * 50 + ["b"] * 50, ["a"] * 30, monitor="prediction", version="1",
        categories=["a", "b", "c"],
    )  # fmt: skip
    assert list(report.current_dist) == ["a", "b", "c"] and report.current_dist["c"] == 0.0
    with pytest.raises(ValueError, match="not in the given set"):
        categorical_drift(["a"], ["z"], monitor="prediction", version="1", categories=["a"])
    empty = categorical_drift(["a", "b"], [], monitor="intent", version="1")
    assert not empty.drifted and empty.n_current == 0 and empty.p_value == 1.0


def test_length_drift_bins_are_analysis_length_bins():
    rng = np.random.default_rng(8)
    reference = rng.poisson(30, size=3000).tolist()
    current = (rng.poisson(36, size=800)).tolist() + [0, 500]
    report = length_drift(reference, current, version="2", n_bins=10)
    ref_counts, cur_counts = length_bins(reference, current, n_bins=10)
    assert report.monitor == "input_length"
    assert np.allclose(np.array(list(report.reference_dist.values())) * 3000, ref_counts)
    assert np.allclose(np.array(list(report.current_dist.values())) * 802, cur_counts)
    assert report.psi == pytest.approx(psi(ref_counts, cur_counts))
    assert report.drifted  # six tokens longer on average is a real shift
    labels = list(report.reference_dist)
    assert labels[0].startswith("<=") and labels[-1].startswith(">=")


def test_length_bin_labels_name_each_bins_values():
    assert length_bin_labels([12.5, 20.5, 40.5], integer=True) == ["<=12", "13-20", "21-40", ">=41"]
    assert length_bin_labels([12, 13], integer=True) == ["<=11", "12", ">=13"]
    assert length_bin_labels([0.5], integer=False) == ["<0.5", ">=0.5"]
    assert length_bin_labels([], integer=True) == ["all"]


def test_intent_is_the_most_probable_label_and_missing_ones_are_dropped():
    probs = [{"network": 0.7, "identity": 0.3}, None, {}, {"network": 0.1, "hardware": 0.9}]
    assert intent_from_label_probs(probs) == ["network", "hardware"]


# --- the fixed PSI rule ------------------------------------------------------------------------


def test_fixed_rule_fires_on_an_obvious_shift_and_never_before_min_n():
    reference = ["a"] * 500 + ["b"] * 500
    assert fixed_psi_rule(reference, ["b"] * 1000, min_n=30, check_every=50) == 30
    noisy_start = ["b"] * 20 + ["a", "b"] * 500  # PSI is huge for the first requests only
    at = fixed_psi_rule(reference, noisy_start, min_n=100, check_every=50)
    assert at is None
    assert fixed_psi_rule(reference, noisy_start, min_n=10, check_every=50) == 10
    rng = np.random.default_rng(9)
    ref = rng.multinomial(1000, BASE, size=300)
    alarms = fixed_psi_alarms(ref, simulate_window(rng, BASE, 300, 2000), min_n=40, check_every=25)
    fired = alarms[alarms > 0]
    assert fired.size and np.all(fired >= 40) and np.all((fired - 40) % 25 == 0)


def test_calibration_picks_the_smallest_min_n_within_the_target():
    kw = {"n_reference": 2000, "horizon": 1000, "check_every": 50, "n_runs": 400, "seed": 3}
    rule = calibrate_fixed_psi_rule(BASE, target_false_alarm=0.02, **kw)
    assert rule.false_alarm_rate <= 0.02 and rule.min_n > 10
    smaller = calibrate_fixed_psi_rule(BASE, target_false_alarm=1.0, min_n_grid=[10], **kw)
    assert smaller.false_alarm_rate > 0.02
    with pytest.raises(ValueError, match="no min_n"):
        calibrate_fixed_psi_rule(BASE, target_false_alarm=0.0, min_n_grid=[10], **kw)
