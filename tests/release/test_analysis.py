"""Canary analysis: error bounds of the sequential test under continuous monitoring, drift,
per-interval checks and the Flagger-style baseline, asserted as invariants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybridft.release.analysis import (
    SuccessTestConfig,
    confidence_check,
    error_rate_check,
    latency_check,
    log_mixture_lr,
    rate_and_variance,
    success_log_lrs,
    success_test,
    success_test_vs_rate,
)
from hybridft.release.simulate import (
    _Scenario,
    _sequential,
    calibrate_fixed_rule,
    first_rollback_interval,
    fixed_threshold_rule,
    simulate_detection,
)
from hybridft.stats.psi import length_bins, psi, psi_test

RUNS = 2000


def slack(rate: float, n: int = RUNS) -> float:
    """Three Monte-Carlo standard errors of a rate estimated from n runs."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


# --- sequential success test: error bounds under repeated looks -------------------------------


@pytest.mark.parametrize("p", [0.5, 0.95])
@pytest.mark.parametrize("share", [0.1, 0.5])
@pytest.mark.parametrize("drop", [0.0, -0.03])  # equal, and a better canary (composite null)
def test_false_rollback_rate_is_at_most_alpha_over_200_looks(p, share, drop):
    test = SuccessTestConfig(margin=0.05, alpha=0.05, min_samples=1)
    got = simulate_detection(
        p, drop, test=test, n_runs=RUNS, interval_requests=50,
        canary_share=share, max_requests=50 * 200, seed=11,
    )["sequential"]  # fmt: skip
    assert got.false_rollback_rate <= 0.05 + slack(0.05)
    if drop < 0:
        assert got.detection_rate <= 0.05 + slack(0.05)  # "worse" on a better canary


@pytest.mark.parametrize("p0", [0.5, 0.95])
def test_known_rate_false_rollback_rate_is_at_most_alpha_at_every_request(p0):
    config = SuccessTestConfig(margin=0.05, alpha=0.05, min_samples=1)
    rng = np.random.default_rng(3)
    n = np.arange(1, 2001)
    successes = (rng.random((RUNS, n.size)) < p0).cumsum(axis=1)
    rate, var = rate_and_variance(successes, n)
    worse, _ = success_log_lrs(rate - p0, var, config)  # the path of success_test_vs_rate
    false_rollback = np.mean((worse >= math.log(1 / config.alpha)).any(axis=1))
    assert false_rollback <= 0.05 + slack(0.05)
    look = success_test_vs_rate(int(successes[0, 99]), 100, p0, margin=0.05, min_samples=1)
    assert look.log_lr_worse == pytest.approx(worse[0, 99])


def test_false_promotion_at_the_margin_is_at_most_beta():
    test = SuccessTestConfig(margin=0.05, beta=0.2)
    got = simulate_detection(0.9, 0.05, test=test, n_runs=RUNS, seed=5)["sequential"]
    assert got.early_promotion_rate <= 0.2 + slack(0.2)


def test_big_drop_is_detected_with_power_and_equal_canaries_promote_early():
    got = simulate_detection(0.95, 0.10, n_runs=RUNS, seed=7)
    seq, fixed = got["sequential"], got["fixed_threshold"]
    assert seq.detection_rate >= 0.95
    assert math.isfinite(seq.p90_requests)
    # with no cap on time, a sequential test promotes a good canary before max weight
    assert seq.median_requests_to_decide_h0 < fixed.median_requests_to_decide_h0


def test_simulation_replays_the_public_test_look_by_look():
    config = SuccessTestConfig(margin=0.02, min_samples=30)
    scenario = _Scenario(0.95, 0.05, 40, 200, 0.2, 200 * 30, seed=2)
    streams, _ = scenario.streams()
    outcome = _sequential(streams, config)
    cum = {k: getattr(streams, k).cumsum(axis=1) for k in ("canary_ok", "canary_n")}
    cum |= {k: getattr(streams, k).cumsum(axis=1) for k in ("primary_ok", "primary_n")}
    for run in range(40):
        first = ("continue", -1)
        for i in range(scenario.n_intervals):
            look = success_test(
                int(cum["canary_ok"][run, i]), int(cum["canary_n"][run, i]),
                int(cum["primary_ok"][run, i]), int(cum["primary_n"][run, i]),
                margin=0.02, min_samples=30,
            )  # fmt: skip
            if look.decision != "continue":
                first = (look.decision, i)
                break
        if outcome.rollback_at[run] >= 0:
            assert first == ("worse", outcome.rollback_at[run])
        elif outcome.promote_at[run] >= 0:
            assert first == ("not_worse", outcome.promote_at[run])
        else:
            assert first == ("continue", -1)


def test_same_seed_gives_the_same_simulation():
    a = simulate_detection(n_runs=300, seed=9)
    b = simulate_detection(n_runs=300, seed=9)
    assert {k: v.to_dict() for k, v in a.items()} == {k: v.to_dict() for k, v in b.items()}


# --- sequential success test: shape of the statistic --------------------------------------------


def test_mixture_is_mirror_symmetric_and_swapping_arms_swaps_directions():
    x = np.linspace(-0.1, 0.1, 21)
    assert np.allclose(
        log_mixture_lr(x, 1e-4, 0.05, "less"), log_mixture_lr(-x, 1e-4, 0.05, "greater")
    )
    a_rate, a_var = rate_and_variance(180, 200)
    b_rate, b_var = rate_and_variance(950, 1000)
    a_lower = log_mixture_lr(a_rate - b_rate, a_var + b_var, 0.05, "less")
    b_higher = log_mixture_lr(b_rate - a_rate, b_var + a_var, 0.05, "greater")
    assert a_lower == pytest.approx(b_higher)


def test_more_canary_failures_mean_more_evidence_of_worse():
    looks = [success_test(s, 500, 9500, 10_000, margin=0.03) for s in range(400, 501)]
    worse = [d.log_lr_worse for d in looks]
    not_worse = [d.log_lr_not_worse for d in looks]
    assert all(np.diff(worse) < 0) and all(np.diff(not_worse) > 0)
    order = {"worse": 0, "continue": 1, "not_worse": 2}
    ranks = [order[d.decision] for d in looks]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 2


def test_decisions_quote_their_numbers_and_serialise():
    bad = success_test(400, 500, 9500, 10_000, margin=0.05)
    assert bad.decision == "worse" and bad.action == "rollback"
    assert "0.8000" in bad.reason and "0.9500" in bad.reason and bad.diff == pytest.approx(-0.15)
    assert json.loads(json.dumps(bad.to_dict()))["action"] == "rollback"
    early = success_test(10, 10, 9500, 10_000, margin=0.05, min_samples=30)
    assert early.decision == "continue" and "fewer than 30" in early.reason


def test_known_rate_matches_a_huge_primary():
    vs_rate = success_test_vs_rate(460, 500, 0.95, margin=0.05)
    huge = success_test(460, 500, 95_000_000, 100_000_000, margin=0.05)
    assert vs_rate.decision == huge.decision
    assert vs_rate.log_lr_worse == pytest.approx(huge.log_lr_worse, rel=1e-3)
    assert vs_rate.reference_n is None and "baseline" in vs_rate.reason


def test_config_rejects_inverted_margins():
    with pytest.raises(ValueError, match="worse_margin"):
        SuccessTestConfig(margin=0.02, worse_margin=0.03)
    with pytest.raises(ValueError, match="alpha"):
        SuccessTestConfig(alpha=0.0)


# --- drift -------------------------------------------------------------------------------------


def test_psi_is_zero_for_identical_distributions_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(*length_bins(ref, ref)) == pytest.approx(0.0)
    values = [psi(*length_bins(ref, rng.normal(loc=m, size=5000))) for m in (0.0, 0.2, 0.5, 1.0)]
    assert values == sorted(values) and values[0] < 0.02 < values[-1]
    e, a = [10, 20, 30, 40], [40, 30, 20, 10]
    assert psi(e, a) == pytest.approx(psi(a, e))  # PSI is symmetric
    assert math.isfinite(psi([5, 0], [0, 5]))


def test_psi_test_needs_evidence_not_just_a_large_psi():
    small_e, small_a = [4, 3, 3], [1, 3, 6]
    noisy = psi_test(small_e, small_a, alpha=0.01, max_psi=0.25)
    assert noisy.psi > 0.25 and not noisy.drifted  # a fixed PSI > 0.25 rule would flag it
    big = psi_test([c * 100 for c in small_e], [c * 100 for c in small_a])
    assert big.psi == pytest.approx(noisy.psi) and big.drifted and big.p_value < 1e-6
    # with huge samples a tiny shift is significant but below max_psi: not drift either
    tiny = psi_test([50_000, 50_000], [51_000, 49_000])
    assert tiny.p_value < 0.01 and not tiny.drifted
    assert "PSI" in tiny.reason and json.dumps(tiny.to_dict())


def test_length_bins_uses_reference_quantiles_and_keeps_outliers():
    rng = np.random.default_rng(1)
    ref = rng.integers(1, 400, size=1000)
    other = np.concatenate([ref, [-5, 10_000]])
    a, b = length_bins(ref, other, n_bins=10)
    assert a.sum() == 1000 and b.sum() == 1002 and len(a) == len(b)
    assert a.max() - a.min() <= 0.05 * 1000  # roughly equal-mass reference bins
    assert b[0] == a[0] + 1 and b[-1] == a[-1] + 1
    ties_a, ties_b = length_bins([1, 1, 1, 1, 2], [1, 2, 2], n_bins=4)
    assert len(ties_a) == len(ties_b) and ties_a.sum() == 5


# --- per-interval checks ------------------------------------------------------------------------


def test_latency_check_insufficient_pass_and_fail():
    rng = np.random.default_rng(2)
    primary = rng.lognormal(mean=-2, sigma=0.3, size=500)
    assert latency_check(primary[:19], primary, 1.5, min_samples=20).status == "insufficient"
    assert latency_check(rng.lognormal(-2, 0.3, 300), primary, 1.5).status == "pass"
    slow = latency_check(primary * 2, primary, 1.5)
    assert slow.status == "fail" and slow.value == pytest.approx(2.0)
    assert json.dumps(slow.to_dict())


def test_error_rate_check_fails_on_a_planted_increase():
    assert error_rate_check(1, 10, 10, 1000, 0.02, min_samples=20).status == "insufficient"
    assert error_rate_check(12, 1000, 10, 1000, 0.02).status == "pass"
    planted = error_rate_check(60, 1000, 10, 1000, 0.02)
    assert planted.status == "fail" and planted.value == pytest.approx(0.05)


def test_confidence_check_fails_on_a_planted_drop():
    assert confidence_check(0.80, 0.82, 0.10).status == "pass"
    assert confidence_check(0.60, 0.82, 0.10).status == "fail"
    assert confidence_check(None, 0.82, 0.10).status == "insufficient"
    assert confidence_check(float("nan"), 0.82, 0.10).status == "insufficient"


# --- Flagger-style baseline ---------------------------------------------------------------------


def test_fixed_rule_counts_consecutive_failures_only():
    # 0.85 fails, 0.95 passes, 0 requests is skipped
    ok, n = [85, 85, 95, 85, 0, 85, 85], [100, 100, 100, 100, 0, 100, 100]
    d = fixed_threshold_rule(ok, n, threshold=0.9, failed_check_limit=3, max_intervals=10)
    assert d.action == "rollback" and d.intervals_checked == 7  # the 3rd failure in a row
    assert fixed_threshold_rule(ok[:5], n[:5], failed_check_limit=3).action == "continue"
    good = fixed_threshold_rule([95] * 10, [100] * 10, failed_check_limit=3, max_intervals=10)
    assert good.action == "promote" and json.dumps(good.to_dict())


def test_vectorised_fixed_rule_matches_the_scalar_rule():
    rng = np.random.default_rng(4)
    n = rng.integers(0, 30, size=(200, 12))
    ok = rng.binomial(n, 0.9)
    rates = np.where(n > 0, ok / np.maximum(n, 1), np.nan)
    first = first_rollback_interval(rates, 0.9, 2)
    for row in range(200):
        d = fixed_threshold_rule(ok[row], n[row], threshold=0.9, failed_check_limit=2)
        assert (d.action == "rollback") == (first[row] >= 0)
        if first[row] >= 0:
            assert d.intervals_checked == first[row] + 1


def test_calibrated_fixed_rule_holds_its_false_rollback_rate_on_fresh_runs():
    calibrated = calibrate_fixed_rule(0.95, 0.05, target_false_rollback=0.05, n_runs=RUNS, seed=1)
    assert calibrated.false_rollback_rate <= 0.05
    fresh = simulate_detection(0.95, 0.05, rule=calibrated.rule, n_runs=RUNS, seed=2)
    assert fresh["fixed_threshold"].false_rollback_rate <= 0.05 + slack(0.05)
