"""What the request log and feedback say about the canary against the primary.

The controller's inputs, read from ``traffic.db``: per-interval checks (error rate, p95 latency,
mean confidence, output drift on predicted labels and answer lengths) over the same interval for
both versions, and the sequential success test over everything since the canary started. The
statistics themselves live in :mod:`hybridft.release.analysis` and :mod:`hybridft.stats.psi`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from hybridft.release import analysis
from hybridft.serve.canary import Checks, Success
from hybridft.serve.review import FeedbackStore
from hybridft.stats.psi import length_bins, psi_test

CANARY_ARMS = ("canary", "shadow")  # forced (testing) requests are left out of the analysis


def interval_checks(
    traffic: FeedbackStore, cfg: Checks, primary: str, canary: str, since: float, until: float
) -> tuple[list[dict[str, Any]], int]:
    """The canary's checks over ``[since, until)`` and its request count there."""
    c_rows = [r for r in traffic.window(canary, since, until) if r["arm"] in CANARY_ARMS]
    p_rows = traffic.window(primary, since, until, arm="primary")
    n = cfg.min_requests
    checks = [
        analysis.error_rate_check(
            _errors(c_rows),
            len(c_rows),
            _errors(p_rows),
            len(p_rows),
            cfg.max_error_rate_increase,
            min_samples=n,
        ),
        analysis.latency_check(
            _ok(c_rows, "latency_s"),
            _ok(p_rows, "latency_s"),
            cfg.max_p95_latency_ratio,
            min_samples=n,
        ),
        analysis.confidence_check(
            _mean(_ok(c_rows, "confidence"), n),
            _mean(_ok(p_rows, "confidence"), n),
            cfg.max_confidence_drop,
        ),
        _drift(cfg, "predicted_label", c_rows, p_rows),
        _drift(cfg, "completion_chars", c_rows, p_rows),
    ]
    return [c.to_dict() for c in checks], len(c_rows)


def success_verdict(
    traffic: FeedbackStore, cfg: Success, primary: str, canary: str, since: float
) -> analysis.SequentialDecision:
    """The sequential test on all feedback and probe outcomes since ``since``."""
    c = traffic.summary(canary, since=since)
    p = traffic.summary(primary, since=since)
    return analysis.success_test(
        c["successes"],
        c["n"],
        p["successes"],
        p["n"],
        margin=cfg.margin,
        alpha=cfg.alpha,
        beta=cfg.beta,
        min_samples=cfg.min_samples,
    )


def _drift(
    cfg: Checks, column: str, c_rows: list[dict[str, Any]], p_rows: list[dict[str, Any]]
) -> analysis.Check:
    name = "label_drift" if column == "predicted_label" else "length_drift"
    c_vals, p_vals = _ok(c_rows, column), _ok(p_rows, column)
    if min(len(c_vals), len(p_vals)) < cfg.min_requests:
        detail = f"{len(c_vals)} canary / {len(p_vals)} primary values (< {cfg.min_requests})"
        return analysis.Check(name, "insufficient", None, cfg.max_psi, detail)
    if column == "predicted_label":
        cats = sorted(set(c_vals) | set(p_vals))
        pc, cc = Counter(p_vals), Counter(c_vals)
        expected = np.array([pc[k] for k in cats], float)
        actual = np.array([cc[k] for k in cats], float)
    else:
        expected, actual = length_bins(p_vals, c_vals)
    result = psi_test(expected, actual, alpha=cfg.drift_alpha, max_psi=cfg.max_psi)
    status: analysis.Status = "fail" if result.drifted else "pass"
    return analysis.Check(name, status, result.psi, cfg.max_psi, result.reason)


def _errors(rows: list[dict[str, Any]]) -> int:
    return sum(1 for r in rows if r["status_code"] >= 500)


def _ok(rows: list[dict[str, Any]], column: str) -> list[Any]:
    return [r[column] for r in rows if r["status_code"] < 400 and r[column] is not None]


def _mean(values: list[float], min_n: int) -> float | None:
    return float(np.mean(values)) if len(values) >= min_n else None
