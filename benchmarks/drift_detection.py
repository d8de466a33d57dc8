"""Drift detection in simulation: requests needed to detect a shift in the intent mix.

Our sequential test (``monitor.drift.categorical_drift``'s e-value, alpha = 0.01) against the
common fixed rule "PSI > 0.25", checked every ``--check-every`` requests of the cumulative window
from a ``min_n`` calibrated to <= 1% false alarms on unshifted streams (other seed).

Each replication draws its own reference window of ``--n-ref`` requests from the base mix of six
IT-desk intents and a monitored window of ``--horizon`` requests, unshifted or with
``shift`` points moved from the largest intent to the smallest from the first request on. Both
rules see the same windows. False alarms count alarms anywhere in the horizon on unshifted
windows. Requests to detect: median and p90 over replications, a replication that never
detects counted as the horizon (censored), so a figure equal to the horizon means "not detected
within H" for at least that share of replications; ratios built on it are lower bounds.

Run: ``python benchmarks/drift_detection.py`` (about 15 s on 2 cores). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hybridft.monitor.drift import (
    CalibratedPsiRule,
    calibrate_fixed_psi_rule,
    first_crossing,
    fixed_psi_alarms,
    psi_many,
    sequential_log_evalues,
    simulate_window,
)

INTENTS = ("network", "identity", "hardware", "software", "facilities", "other")
BASE = np.array([0.30, 0.25, 0.15, 0.12, 0.10, 0.08])


def shifted_shares(points: float) -> np.ndarray:
    """The base mix with ``points`` percentage points moved from the largest to the smallest."""
    p = BASE.copy()
    p[p.argmax()] -= points / 100
    p[p.argmin()] += points / 100
    return p


def detections(
    shares: np.ndarray, rule: CalibratedPsiRule, args: argparse.Namespace, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(our detection index, the fixed rule's) per replication; 0 = none within the horizon."""
    rng = np.random.default_rng(seed)
    ours, fixed = [], []
    for start in range(0, args.runs, args.chunk):
        n = min(args.chunk, args.runs - start)
        ref = rng.multinomial(args.n_ref, BASE, size=n)
        codes = simulate_window(rng, shares, n, args.horizon)
        ours.append(first_crossing(sequential_log_evalues(ref, codes), args.alpha))
        fixed.append(
            fixed_psi_alarms(
                ref, codes, threshold=rule.threshold, min_n=rule.min_n,
                check_every=rule.check_every,
            )
        )  # fmt: skip
    return np.concatenate(ours), np.concatenate(fixed)


def summarise(at: np.ndarray, horizon: int) -> dict:
    """Detection figures with never-detected replications censored at the horizon."""
    requests = np.where(at > 0, at, horizon)
    median = float(np.quantile(requests, 0.5, method="inverted_cdf"))
    p90 = float(np.quantile(requests, 0.9, method="inverted_cdf"))
    return {
        "detection_rate": float(np.mean(at > 0)),
        "median_requests": median,
        "p90_requests": p90,
        "never_detected_share": float(np.mean(at == 0)),
        "median_censored": bool(np.mean(at == 0) >= 0.5),
    }


def label(figures: dict, horizon: int) -> str:
    if figures["median_censored"]:
        return f"not detected within H={horizon} (median censored)"
    return (
        f"median {figures['median_requests']:.0f}, p90 {figures['p90_requests']:.0f}"
        f"{' (censored)' if figures['p90_requests'] >= horizon else ''}, "
        f"never {figures['never_detected_share']:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shifts", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--runs", type=int, default=2000, help="replications per scenario")
    parser.add_argument("--n-ref", type=int, default=5000, help="reference window")
    parser.add_argument("--horizon", type=int, default=20_000, help="monitored window H")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--psi-threshold", type=float, default=0.25)
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--target-false-alarm", type=float, default=0.01)
    parser.add_argument("--calibration-runs", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=50, help="replications per vectorised batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()

    rule = calibrate_fixed_psi_rule(
        BASE, n_reference=args.n_ref, horizon=args.horizon, threshold=args.psi_threshold,
        check_every=args.check_every, target_false_alarm=args.target_false_alarm,
        n_runs=args.calibration_runs, seed=args.seed + 1000,
    )  # fmt: skip
    print(
        f"fixed rule: PSI > {rule.threshold:g} every {rule.check_every} requests from "
        f"min_n={rule.min_n} (false alarms {rule.false_alarm_rate:.2%} on "
        f"{args.calibration_runs} calibration runs)"
    )
    seeds = np.random.SeedSequence(args.seed).generate_state(len(args.shifts) + 1)
    ours_h0, fixed_h0 = detections(BASE, rule, args, int(seeds[0]))
    fa_ours, fa_fixed = float(np.mean(ours_h0 > 0)), float(np.mean(fixed_h0 > 0))
    print(
        f"false alarms over H={args.horizon} on {args.runs} unshifted windows "
        f"(n_ref={args.n_ref}): ours {fa_ours:.2%}, fixed PSI {fa_fixed:.2%}"
    )
    results = []
    for points, seed in zip(args.shifts, seeds[1:], strict=True):
        shares = shifted_shares(points)
        ours_at, fixed_at = detections(shares, rule, args, int(seed))
        ours = summarise(ours_at, args.horizon)
        fixed = summarise(fixed_at, args.horizon)
        true_psi = float(psi_many(BASE, shares))
        ratio = fixed["median_requests"] / ours["median_requests"]
        print(
            f"shift {points:g} points (population PSI {true_psi:.3f}):\n"
            f"  ours      {label(ours, args.horizon)}\n"
            f"  fixed PSI {label(fixed, args.horizon)}\n"
            f"  median requests fixed / ours: {'>= ' if fixed['median_censored'] else ''}"
            f"{ratio:.1f}"
        )
        results.append(
            {
                "benchmark": "drift_detection",
                "shift_points": points,
                "population_psi": round(true_psi, 4),
                "ours": ours,
                "fixed_psi": {**fixed, "min_n": rule.min_n, "check_every": rule.check_every},
                "ratio_requests_to_detect_fixed_over_ours": round(ratio, 2),
                "ratio_is_lower_bound": fixed["median_censored"],
                "false_alarm_ours": fa_ours,
                "false_alarm_fixed": fa_fixed,
            }
        )
    print(f"({time.perf_counter() - t0:.1f} s, {args.runs} replications per scenario)")
    summary = {
        "benchmark": "drift_detection",
        "horizon": args.horizon,
        "n_reference": args.n_ref,
        "runs": args.runs,
        "alpha": args.alpha,
        "false_alarm_ours": fa_ours,
        "false_alarm_fixed": fa_fixed,
        "shifts": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
