"""The Flagger-style fixed rule, and a Monte-Carlo comparison of it with the sequential test.

``fixed_threshold_rule`` is the baseline: an interval's check fails when the canary's success rate
is below an absolute threshold (the primary is ignored), N consecutive failed checks roll back, and
reaching max weight without a rollback promotes.

Each run is one canary: every interval ``interval_requests`` requests are routed, each to the
canary with probability ``canary_share``; the primary succeeds with ``p_primary``, the canary with
``p_primary - drop``. Both rules see the same streams, for ``max_requests // interval_requests``
intervals (the horizon: max weight reached, promote). The sequential test looks at cumulative
counts after every interval; the fixed rule at each interval's canary success rate.

"Requests to detect" counts requests routed to the canary up to the rollback; quantiles are over
all runs with a run that never rolls back counted as infinite, so a p90 is finite only when the
rule detects in at least 90% of runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hybridft.release.analysis import Action, SuccessTestConfig, rate_and_variance, success_log_lrs


@dataclass(frozen=True)
class RuleDecision:
    action: Action
    intervals_checked: int
    failed_streak: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_streaks(interval_rates: np.ndarray, threshold: float) -> np.ndarray:
    """Consecutive failed checks after each interval, for ``(runs, intervals)`` success rates.

    A check fails when the rate < ``threshold``; a NaN rate (no requests) neither fails nor passes.
    """
    rates = np.atleast_2d(np.asarray(interval_rates, dtype=float))
    out = np.zeros(rates.shape, dtype=int)
    streak = np.zeros(rates.shape[0], dtype=int)
    for i in range(rates.shape[1]):
        col = rates[:, i]
        streak = np.where(np.isnan(col), streak, np.where(col < threshold, streak + 1, 0))
        out[:, i] = streak
    return out


def first_rollback_interval(
    interval_rates: np.ndarray, threshold: float, failed_check_limit: int
) -> np.ndarray:
    """Per run, the first interval index at which the fixed rule rolls back, or -1."""
    hit = failed_streaks(interval_rates, threshold) >= failed_check_limit
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def fixed_threshold_rule(
    interval_successes: Sequence[int],
    interval_requests: Sequence[int],
    *,
    threshold: float = 0.90,
    failed_check_limit: int = 3,
    max_intervals: int = 10,
) -> RuleDecision:
    """Flagger-style rule over the canary's per-interval success so far.

    An interval fails its check when the canary's success rate < ``threshold`` (absolute, the
    primary is ignored); ``failed_check_limit`` consecutive failures roll back; reaching
    ``max_intervals`` intervals (max weight) without a rollback promotes.
    """
    ok = np.asarray(interval_successes, dtype=float)
    n = np.asarray(interval_requests, dtype=float)
    rates = np.where(n > 0, ok / np.maximum(n, 1), np.nan)[None, :]
    streaks = failed_streaks(rates, threshold)[0]
    hits = np.flatnonzero(streaks >= failed_check_limit)
    if hits.size:
        at = int(hits[0])
        return RuleDecision(
            "rollback",
            at + 1,
            failed_check_limit,
            f"rollback: {failed_check_limit} consecutive intervals below {threshold:g} "
            f"(last {rates[0, at]:.4f}) at interval {at + 1}",
        )
    checked = streaks.size
    streak = int(streaks[-1]) if checked else 0
    if checked >= max_intervals:
        return RuleDecision(
            "promote", checked, streak, f"promote: {checked} intervals without rollback"
        )
    return RuleDecision(
        "continue",
        checked,
        streak,
        f"continue: {checked}/{max_intervals} intervals, {streak} failed in a row",
    )


@dataclass(frozen=True)
class FixedRule:
    """The Flagger-style baseline: absolute success threshold, N consecutive failed checks."""

    threshold: float = 0.90
    failed_check_limit: int = 3


@dataclass(frozen=True)
class DetectionStats:
    detection_rate: float  # rolled back before the horizon, at the simulated drop
    median_requests: float  # canary requests to rollback (inf: not detected)
    p90_requests: float
    early_promotion_rate: float  # promoted before the horizon, at the simulated drop
    false_rollback_rate: float  # rolled back at drop = 0
    median_requests_to_decide_h0: float  # canary requests until rollback/promotion at drop = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Streams:
    canary_ok: np.ndarray  # (runs, intervals) per-interval counts
    canary_n: np.ndarray
    primary_ok: np.ndarray
    primary_n: np.ndarray


def _streams(
    rng: np.random.Generator,
    p_primary: float,
    p_canary: float,
    n_runs: int,
    n_intervals: int,
    interval_requests: int,
    canary_share: float,
) -> _Streams:
    shape = (n_runs, n_intervals)
    cn = rng.binomial(interval_requests, canary_share, size=shape)
    pn = interval_requests - cn
    return _Streams(rng.binomial(cn, p_canary), cn, rng.binomial(pn, p_primary), pn)


@dataclass(frozen=True)
class _Outcome:
    rollback_at: np.ndarray  # interval index or -1
    promote_at: np.ndarray  # interval index or -1 (before the horizon)


def _sequential(s: _Streams, config: SuccessTestConfig) -> _Outcome:
    cn = s.canary_n.cumsum(axis=1)
    pn = s.primary_n.cumsum(axis=1)
    c_rate, c_var = rate_and_variance(s.canary_ok.cumsum(axis=1), cn)
    p_rate, p_var = rate_and_variance(s.primary_ok.cumsum(axis=1), pn)
    worse, not_worse = success_log_lrs(c_rate - p_rate, c_var + p_var, config)
    ready = (cn >= config.min_samples) & (pn >= 1)
    rollback = _first(ready & (worse >= np.log(1 / config.alpha)))
    promote = _first(ready & (not_worse >= np.log(1 / config.beta)))
    # the test stops at its first decision; "worse" wins a tie
    promote = np.where((rollback >= 0) & ((promote < 0) | (rollback <= promote)), -1, promote)
    rollback = np.where((promote >= 0) & (promote < rollback), -1, rollback)
    return _Outcome(rollback, promote)


def _interval_rates(s: _Streams) -> np.ndarray:
    return np.where(s.canary_n > 0, s.canary_ok / np.maximum(s.canary_n, 1), np.nan)


def _fixed(s: _Streams, rule: FixedRule) -> _Outcome:
    rollback = first_rollback_interval(_interval_rates(s), rule.threshold, rule.failed_check_limit)
    return _Outcome(rollback, np.full_like(rollback, -1))


def _first(hit: np.ndarray) -> np.ndarray:
    """First True column per row, or -1."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def _requests_at(s: _Streams, at: np.ndarray) -> np.ndarray:
    cum = s.canary_n.cumsum(axis=1)
    return np.where(at >= 0, cum[np.arange(len(at)), np.maximum(at, 0)], np.inf)


def _stats(drop_s: _Streams, drop_o: _Outcome, h0_s: _Streams, h0_o: _Outcome) -> DetectionStats:
    to_detect = _requests_at(drop_s, drop_o.rollback_at)
    decided_h0 = np.where(h0_o.rollback_at >= 0, h0_o.rollback_at, h0_o.promote_at)
    horizon = h0_s.canary_n.sum(axis=1)  # undecided: promoted at max weight
    to_decide = np.where(decided_h0 >= 0, _requests_at(h0_s, decided_h0), horizon)
    return DetectionStats(
        detection_rate=float(np.mean(drop_o.rollback_at >= 0)),
        median_requests=float(np.quantile(to_detect, 0.5, method="inverted_cdf")),
        p90_requests=float(np.quantile(to_detect, 0.9, method="inverted_cdf")),
        early_promotion_rate=float(np.mean(drop_o.promote_at >= 0)),
        false_rollback_rate=float(np.mean(h0_o.rollback_at >= 0)),
        median_requests_to_decide_h0=float(np.median(to_decide)),
    )


@dataclass(frozen=True)
class _Scenario:
    p_primary: float
    drop: float
    n_runs: int
    interval_requests: int
    canary_share: float
    max_requests: int
    seed: int
    n_intervals: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.p_primary <= 1 or not 0 <= self.p_primary - self.drop <= 1:
            raise ValueError(f"rates out of [0, 1]: {self.p_primary}, drop {self.drop}")
        if self.max_requests < self.interval_requests:
            raise ValueError("max_requests must cover at least one interval")
        object.__setattr__(self, "n_intervals", self.max_requests // self.interval_requests)

    def streams(self) -> tuple[_Streams, _Streams]:
        """(streams at the drop, streams at drop = 0), independent, from ``seed``."""
        seeds = np.random.SeedSequence(self.seed).spawn(2)
        drop_rng, h0_rng = (np.random.default_rng(s) for s in seeds)
        args = (self.n_runs, self.n_intervals, self.interval_requests, self.canary_share)
        return (
            _streams(drop_rng, self.p_primary, self.p_primary - self.drop, *args),
            _streams(h0_rng, self.p_primary, self.p_primary, *args),
        )


def simulate_detection(
    p_primary: float = 0.95,
    drop: float = 0.05,
    *,
    rule: FixedRule | None = None,
    test: SuccessTestConfig | None = None,
    n_runs: int = 2000,
    interval_requests: int = 500,
    canary_share: float = 0.1,
    max_requests: int = 20_000,
    seed: int = 0,
) -> dict[str, DetectionStats]:
    """Run both rules on the same simulated canaries.

    Args:
        p_primary: The primary's success rate.
        drop: How much lower the canary's rate is (negative: a better canary).
        rule: The fixed-threshold baseline's settings.
        test: The sequential test's settings.
        n_runs: Simulated canaries per scenario (one at ``drop``, one at drop = 0).
        interval_requests: Requests (both arms) per analysis interval.
        canary_share: Probability that a request goes to the canary.
        max_requests: Requests (both arms) until max weight; the horizon.
        seed: Seed of both scenarios.

    Returns:
        ``{"sequential": ..., "fixed_threshold": ...}``.
    """
    scenario = _Scenario(
        p_primary, drop, n_runs, interval_requests, canary_share, max_requests, seed
    )
    drop_s, h0_s = scenario.streams()
    test = test or SuccessTestConfig()
    rule = rule or FixedRule()
    return {
        "sequential": _stats(drop_s, _sequential(drop_s, test), h0_s, _sequential(h0_s, test)),
        "fixed_threshold": _stats(drop_s, _fixed(drop_s, rule), h0_s, _fixed(h0_s, rule)),
    }


@dataclass(frozen=True)
class CalibratedRule:
    rule: FixedRule
    false_rollback_rate: float  # on the calibration runs
    detection_rate: float
    median_requests: float


def calibrate_fixed_rule(
    p_primary: float = 0.95,
    drop: float = 0.05,
    *,
    target_false_rollback: float = 0.05,
    thresholds: np.ndarray | None = None,
    limits: range | None = None,
    n_runs: int = 2000,
    interval_requests: int = 500,
    canary_share: float = 0.1,
    max_requests: int = 20_000,
    seed: int = 1,
) -> CalibratedRule:
    """The fixed rule's best (threshold, failed_check_limit) at false rollback <= the target.

    Searches the grid on simulated canaries and keeps, among the settings whose false rollback
    rate at drop = 0 is within ``target_false_rollback``, the one that detects ``drop`` most
    often, then soonest. Tuned to the very drop it is scored on, so the comparison favours the
    baseline; use a seed other than the evaluation's.
    """
    scenario = _Scenario(
        p_primary, drop, n_runs, interval_requests, canary_share, max_requests, seed
    )
    drop_s, h0_s = scenario.streams()
    grid = np.round(np.arange(0.5, 1.0, 0.005), 3) if thresholds is None else thresholds
    limits = limits or range(1, min(scenario.n_intervals, 10) + 1)
    h0_rates, drop_rates = _interval_rates(h0_s), _interval_rates(drop_s)
    best: CalibratedRule | None = None
    for threshold in grid:
        h0_streaks = failed_streaks(h0_rates, float(threshold))
        drop_streaks = failed_streaks(drop_rates, float(threshold))
        for limit in limits:
            frr = float(np.mean((h0_streaks >= limit).any(axis=1)))
            if frr > target_false_rollback:
                continue
            at = _first(drop_streaks >= limit)
            power = float(np.mean(at >= 0))
            median = float(np.quantile(_requests_at(drop_s, at), 0.5, method="inverted_cdf"))
            if best is None or (power, -median) > (best.detection_rate, -best.median_requests):
                best = CalibratedRule(FixedRule(float(threshold), limit), frr, power, median)
    if best is None:
        raise ValueError(f"no setting in the grid has false rollback <= {target_false_rollback}")
    return best
