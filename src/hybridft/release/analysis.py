"""Canary analysis: statistics that judge a candidate ("canary") against the primary.

Pure functions and small dataclasses: no Ray, no I/O. The canary controller calls them every
interval with cumulative (success test) or per-interval (checks) numbers.

Success test (task success, Bernoulli outcomes). Two one-sided, always-valid mixture SPRTs
(mSPRT, Johari, Koomen, Pekelis & Walsh 2017, "Peeking at A/B tests") on the difference of
success rates ``theta = p_canary - p_primary``. With ``d = p̂_c - p̂_p`` and its variance
``V = p̃_c(1-p̃_c)/n_c + p̃_p(1-p̃_p)/n_p`` (``p̃ = (s+1)/(n+2)``: the rates are used raw, only the
variance is smoothed so that an arm with no failures yet has V > 0), the likelihood ratio of
``theta = theta0 + delta`` against ``theta0`` is ``exp((delta*(d-theta0) - delta²/2) / V)``
(normal approximation). Mixing it over a half-normal ``delta ~ |N(0, tau²)|`` on the alternative's
side gives, with ``x = d - theta0``, ``m = x tau²/(V+tau²)``, ``s² = V tau²/(V+tau²)``::

    Lambda = 2 Φ(±m/s) · sqrt(V/(V+tau²)) · exp(tau² x² / (2V(V+tau²)))

(``+`` for the alternative ``theta > theta0``, ``-`` for ``theta < theta0``). Lambda is a
nonnegative martingale at ``theta0`` and a supermartingale on the null side of it, so by Ville's
inequality P(sup_t Lambda_t >= 1/alpha) <= alpha however often it is looked at. The decisions:

- ``"worse"``: Lambda for H0 ``p_c >= p_p - worse_margin`` against ``p_c < p_p - worse_margin``
  reaches ``1/alpha``. ``worse_margin`` is 0 by default, so a canary whose success rate is equal
  to or higher than the primary's is rolled back with probability <= alpha over all looks.
- ``"not_worse"``: Lambda for H0 ``p_c <= p_p - margin`` against ``p_c > p_p - margin`` reaches
  ``1/beta``: a canary worse by ``margin`` or more is promoted with probability <= beta.
- ``"continue"``: neither, or fewer than ``min_samples`` canary outcomes. When both cross at the
  same look (a true gap between ``worse_margin`` and ``margin``), ``"worse"`` wins.

Against a known baseline rate ``p0`` (labelled probes with a long primary history) the same
statistic is used with the primary's variance term set to 0.

Per-interval checks: error rate, p95 latency, mean confidence, each relative to the primary.
Output drift (PSI over bins plus a chi-square test of homogeneity, so that a few requests with a
noisy histogram do not count as drift) is :mod:`hybridft.stats.psi`, shared with the monitor. The
Flagger-style baseline and the simulation that compares it with the success test are in
:mod:`hybridft.release.simulate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

Decision = Literal["worse", "not_worse", "continue"]
Action = Literal["rollback", "promote", "continue"]
Status = Literal["pass", "fail", "insufficient"]
_ACTIONS: dict[str, Action] = {"worse": "rollback", "not_worse": "promote", "continue": "continue"}


# ---------------------------------------------------------------------------------------------
# Sequential success test
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuccessTestConfig:
    """Settings of the success test; see the module docstring for what each bounds."""

    margin: float = 0.05  # "not worse" = canary at most this much lower (absolute rate)
    worse_margin: float = 0.0  # "worse" = canary lower by more than this
    alpha: float = 0.05  # false rollback rate (canary no worse than primary - worse_margin)
    beta: float = 0.2  # false promotion rate (canary worse by margin or more)
    tau: float | None = None  # mixture scale; None = margin (the effect size cared about)
    min_samples: int = 30  # canary outcomes before any decision

    def __post_init__(self) -> None:
        if not 0 <= self.worse_margin < self.margin < 1:
            raise ValueError(
                f"need 0 <= worse_margin < margin < 1, got {self.worse_margin}, {self.margin}"
            )
        for name in ("alpha", "beta"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.tau is not None and self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")

    @property
    def mixture_scale(self) -> float:
        return self.tau if self.tau is not None else self.margin


@dataclass(frozen=True)
class SequentialDecision:
    """One look of the success test. ``diff`` = canary rate - reference rate."""

    decision: Decision
    diff: float
    canary_rate: float
    reference_rate: float
    canary_n: int
    reference_n: int | None  # None: compared with a known rate
    log_lr_worse: float
    log_lr_not_worse: float
    log_threshold_worse: float  # log(1/alpha)
    log_threshold_not_worse: float  # log(1/beta)
    reason: str

    @property
    def action(self) -> Action:
        return _ACTIONS[self.decision]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action}


def rate_and_variance(successes: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw success rate and the smoothed variance of its estimate (vectorised; n=0 gives rate 0)."""
    s = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    rate = s / np.maximum(n, 1.0)
    smoothed = (s + 1.0) / (n + 2.0)
    return rate, smoothed * (1.0 - smoothed) / np.maximum(n, 1.0)


def log_mixture_lr(
    x: Any, var: Any, tau: float, alternative: Literal["less", "greater"]
) -> np.ndarray:
    """log Lambda of the one-sided half-normal mixture (module docstring), vectorised.

    Args:
        x: Estimate minus the null boundary, ``d - theta0``.
        var: Variance of the estimate (> 0).
        tau: Scale of the half-normal mixture over the effect.
        alternative: ``"less"`` for ``theta < theta0``, ``"greater"`` for ``theta > theta0``.
    """
    x = np.asarray(x, dtype=float)
    var = np.asarray(var, dtype=float)
    t2 = tau * tau
    post_mean = x * t2 / (var + t2)
    post_sd = np.sqrt(var * t2 / (var + t2))
    sign = -1.0 if alternative == "less" else 1.0
    return (
        0.5 * np.log(var / (var + t2))
        + t2 * x * x / (2.0 * var * (var + t2))
        + math.log(2.0)
        + stats.norm.logcdf(sign * post_mean / post_sd)
    )


def success_log_lrs(
    diff: Any, var: Any, config: SuccessTestConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(log Lambda for "worse", log Lambda for "not_worse") of ``diff`` with variance ``var``."""
    tau = config.mixture_scale
    worse = log_mixture_lr(np.asarray(diff) + config.worse_margin, var, tau, "less")
    not_worse = log_mixture_lr(np.asarray(diff) + config.margin, var, tau, "greater")
    return worse, not_worse


def _decide(
    canary_successes: int,
    canary_n: int,
    reference_rate: float,
    reference_var: float,
    reference_n: int | None,
    config: SuccessTestConfig,
) -> SequentialDecision:
    rate, var = rate_and_variance(canary_successes, canary_n)
    diff = float(rate) - reference_rate
    lw, lnw = (float(v) for v in success_log_lrs(diff, float(var) + reference_var, config))
    tw, tnw = math.log(1 / config.alpha), math.log(1 / config.beta)
    ref = "baseline" if reference_n is None else "primary"
    ref_n = "" if reference_n is None else f" (n={reference_n})"
    head = (
        f"canary {float(rate):.4f} (n={canary_n}) vs {ref} {reference_rate:.4f}{ref_n}, "
        f"diff {diff:+.4f}"
    )
    if canary_n < config.min_samples or (reference_n is not None and reference_n < 1):
        decision: Decision = "continue"
        why = f"fewer than {config.min_samples} canary outcomes"
    elif lw >= tw:
        decision = "worse"
        why = (
            f"log LR for 'lower than {ref} - {config.worse_margin:g}' {lw:.2f} "
            f">= log(1/alpha) {tw:.2f}"
        )
    elif lnw >= tnw:
        decision = "not_worse"
        why = f"log LR for 'within {config.margin:g} of {ref}' {lnw:.2f} >= log(1/beta) {tnw:.2f}"
    else:
        decision = "continue"
        why = f"log LR worse {lw:.2f} < {tw:.2f} and not-worse {lnw:.2f} < {tnw:.2f}"
    return SequentialDecision(
        decision=decision,
        diff=diff,
        canary_rate=float(rate),
        reference_rate=reference_rate,
        canary_n=canary_n,
        reference_n=reference_n,
        log_lr_worse=lw,
        log_lr_not_worse=lnw,
        log_threshold_worse=tw,
        log_threshold_not_worse=tnw,
        reason=f"{decision}: {head}; {why}",
    )


def success_test(
    canary_successes: int,
    canary_n: int,
    primary_successes: int,
    primary_n: int,
    *,
    margin: float = 0.05,
    worse_margin: float = 0.0,
    alpha: float = 0.05,
    beta: float = 0.2,
    tau: float | None = None,
    min_samples: int = 30,
) -> SequentialDecision:
    """Always-valid sequential test of canary vs primary task success (cumulative counts).

    Call it after every interval with the counts so far and stop at the first decision that is not
    ``"continue"``; the error bounds hold under that continuous monitoring.

    Returns:
        ``"worse"`` (roll back; P(false) <= alpha when ``p_c >= p_p - worse_margin``),
        ``"not_worse"`` (safe to promote; P(false) <= beta when ``p_c <= p_p - margin``) or
        ``"continue"``.
    """
    config = SuccessTestConfig(margin, worse_margin, alpha, beta, tau, min_samples)
    p_rate, p_var = rate_and_variance(primary_successes, primary_n)
    return _decide(canary_successes, canary_n, float(p_rate), float(p_var), primary_n, config)


def success_test_vs_rate(
    canary_successes: int,
    canary_n: int,
    baseline_rate: float,
    *,
    margin: float = 0.05,
    worse_margin: float = 0.0,
    alpha: float = 0.05,
    beta: float = 0.2,
    tau: float | None = None,
    min_samples: int = 30,
) -> SequentialDecision:
    """:func:`success_test` against a known success rate ``baseline_rate`` (no sampling noise)."""
    if not 0 <= baseline_rate <= 1:
        raise ValueError(f"baseline_rate must be in [0, 1], got {baseline_rate}")
    config = SuccessTestConfig(margin, worse_margin, alpha, beta, tau, min_samples)
    return _decide(canary_successes, canary_n, baseline_rate, 0.0, None, config)


# ---------------------------------------------------------------------------------------------
# Per-interval checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    value: float | None
    threshold: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_rate_check(
    canary_errors: int,
    canary_n: int,
    primary_errors: int,
    primary_n: int,
    max_increase: float,
    *,
    min_samples: int = 20,
) -> Check:
    """Fail when canary error rate - primary error rate > ``max_increase``."""
    name = "error_rate_increase"
    if min(canary_n, primary_n) < min_samples:
        detail = f"{canary_n} canary / {primary_n} primary requests, need {min_samples} each"
        return Check(name, "insufficient", None, max_increase, detail)
    c, p = canary_errors / canary_n, primary_errors / primary_n
    status: Status = "fail" if c - p > max_increase else "pass"
    detail = (
        f"canary {c:.4f} ({canary_errors}/{canary_n}) - primary {p:.4f} "
        f"({primary_errors}/{primary_n}) = {c - p:+.4f}, max {max_increase:g}"
    )
    return Check(name, status, c - p, max_increase, detail)


def latency_check(
    canary_latencies: Sequence[float],
    primary_latencies: Sequence[float],
    max_ratio: float,
    *,
    min_samples: int = 20,
) -> Check:
    """Fail when canary p95 latency / primary p95 latency > ``max_ratio``."""
    name = "p95_latency_ratio"
    nc, np_ = len(canary_latencies), len(primary_latencies)
    if min(nc, np_) < min_samples:
        detail = f"{nc} canary / {np_} primary latencies, need {min_samples} each"
        return Check(name, "insufficient", None, max_ratio, detail)
    c95 = float(np.percentile(canary_latencies, 95))
    p95 = float(np.percentile(primary_latencies, 95))
    ratio = c95 / p95 if p95 > 0 else (math.inf if c95 > 0 else 1.0)
    status: Status = "fail" if ratio > max_ratio else "pass"
    detail = f"p95 canary {c95:.4g}s / primary {p95:.4g}s = {ratio:.3f}, max {max_ratio:g}"
    return Check(name, status, ratio, max_ratio, detail)


def confidence_check(
    canary_mean_conf: float | None, primary_mean_conf: float | None, max_drop: float
) -> Check:
    """Fail when primary mean confidence - canary mean confidence > ``max_drop``."""
    name = "confidence_drop"
    if any(v is None or math.isnan(v) for v in (canary_mean_conf, primary_mean_conf)):
        detail = f"mean confidence canary {canary_mean_conf}, primary {primary_mean_conf}"
        return Check(name, "insufficient", None, max_drop, detail)
    assert canary_mean_conf is not None and primary_mean_conf is not None
    drop = primary_mean_conf - canary_mean_conf
    status: Status = "fail" if drop > max_drop else "pass"
    detail = (
        f"primary {primary_mean_conf:.4f} - canary {canary_mean_conf:.4f} = {drop:+.4f}, "
        f"max {max_drop:g}"
    )
    return Check(name, status, drop, max_drop, detail)
