"""``hybridft monitor``: read the traffic log, run the drift and KPI monitors per live version,
collect alerts, and gather what the status page shows (``StatusData``).

Windows per version: the *reference* is the version's first ``drift.reference_requests``
answers; the *current* window is the answers after those within the last
``drift.current_window_s``, at most the latest ``drift.current_requests`` of them. KPIs are bucketed over ``kpis.lookback_s``; the first
``kpis.baseline_buckets`` buckets set the control limits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridft.monitor.drift import categorical_drift, intent_from_label_probs, length_drift
from hybridft.monitor.kpi import Agg, drift_alerts, kpi_alerts, kpi_series
from hybridft.monitor.policy import KpiName, MonitorPolicy
from hybridft.monitor.records import Alert, Direction, DriftReport, KpiSeries, StatusData
from hybridft.monitor.trigger import champion_version, evaluate_trigger
from hybridft.serve.canary import CanaryState, CanaryStore, ServePaths
from hybridft.serve.review import ReviewQueue
from hybridft.telemetry.traffic_log import TrafficLog, joined_requests

USER_ARMS_OUT = ("shadow", "forced")
CONFIDENCE_BANDS = ("<0.5", "0.5-0.7", "0.7-0.9", ">=0.9")
KPI_UNITS: dict[KpiName, tuple[str, Agg]] = {
    "task_success": ("", "rate"),
    "escalation_rate": ("", "rate"),
    "error_rate": ("", "rate"),
    "latency_p95_s": ("s", "p95"),
}


def confidence_band(confidence: float) -> str:
    """The prediction-drift category of one answer's calibrated confidence."""
    edges = (0.5, 0.7, 0.9)
    return CONFIDENCE_BANDS[int(np.searchsorted(edges, confidence, side="right"))]


def _probs(value: Any) -> dict[str, float] | None:
    """Label probabilities as read from Parquet (a map: list of pairs) or as a dict."""
    if not value:
        return None
    return dict(value) if not isinstance(value, dict) else value


def drift_reports(
    rows: Sequence[dict[str, Any]], version: str, policy: MonitorPolicy, now: float
) -> list[DriftReport]:
    """The policy's drift monitors over one version's answers (oldest first)."""
    cfg = policy.drift
    reference = list(rows[: cfg.reference_requests])
    current = [r for r in rows[cfg.reference_requests :] if r["ts"] >= now - cfg.current_window_s]
    if cfg.current_requests is not None:
        current = current[-cfg.current_requests :]
    if len(reference) < cfg.reference_requests or len(current) < cfg.min_requests:
        return []
    alpha, min_psi = cfg.alpha, cfg.min_psi
    out = []
    if "intent" in cfg.monitors:
        ref = intent_from_label_probs([_probs(r["label_probs"]) for r in reference])
        cur = intent_from_label_probs([_probs(r["label_probs"]) for r in current])
        if ref and cur:
            out.append(
                categorical_drift(
                    ref, cur, monitor="intent", version=version, alpha=alpha, min_psi=min_psi
                )
            )
    if "input_length" in cfg.monitors:
        ref_len = [r["prompt_tokens"] or r["prompt_chars"] or 0 for r in reference]
        cur_len = [r["prompt_tokens"] or r["prompt_chars"] or 0 for r in current]
        out.append(length_drift(ref_len, cur_len, version=version, alpha=alpha, min_psi=min_psi))
    if "prediction" in cfg.monitors:
        ref_c = [confidence_band(r["confidence"]) for r in reference if r["confidence"] is not None]
        cur_c = [confidence_band(r["confidence"]) for r in current if r["confidence"] is not None]
        if ref_c and cur_c:
            out.append(
                categorical_drift(
                    ref_c,
                    cur_c,
                    monitor="prediction",
                    version=version,
                    alpha=alpha,
                    min_psi=min_psi,
                    categories=CONFIDENCE_BANDS,
                )
            )
    return out


def kpis(
    rows: Sequence[dict[str, Any]], version: str, policy: MonitorPolicy, now: float
) -> list[KpiSeries]:
    """Task success, escalation (flagged for review), error rate and p95 latency over time."""
    cfg = policy.kpis
    start = now - cfg.lookback_s
    recent = [r for r in rows if r["ts"] >= start]
    if not recent:
        return []
    values: dict[KpiName, list[tuple[float, float]]] = {
        "task_success": [
            (r["ts"], float(r["success"])) for r in recent if r["success"] is not None
        ],
        "escalation_rate": [(r["ts"], float(bool(r["flagged"]))) for r in recent],
        "error_rate": [(r["ts"], float((r["status_code"] or 0) >= 400)) for r in recent],
        "latency_p95_s": [(r["ts"], r["latency_s"]) for r in recent if r["latency_s"] is not None],
    }
    out = []
    for name, points in values.items():
        if not points:
            continue
        unit, agg = KPI_UNITS[name]
        limit = cfg.limits.get(name)
        threshold = None if limit is None else (limit.min if limit.min is not None else limit.max)
        direction: Direction = "below" if limit is not None and limit.min is not None else "above"
        if limit is None:
            direction = "below" if name == "task_success" else "above"
        times, vals = zip(*points, strict=True)
        out.append(
            kpi_series(
                name, version, unit, list(times), list(vals),
                bucket_s=cfg.bucket_s, agg=agg, baseline=cfg.baseline_buckets,
                threshold=threshold, direction=direction, horizon=cfg.horizon_buckets,
                kind="proportion" if agg == "rate" else "mean",
            )
        )  # fmt: skip
    return out


def version_row(rows: Sequence[dict[str, Any]], version: str) -> dict[str, Any]:
    """One live version's totals for the versions table."""
    n = len(rows)
    errors = sum(1 for r in rows if (r["status_code"] or 0) >= 400)
    latencies = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    judged = [r["success"] for r in rows if r["success"] is not None]
    return {
        "version": version,
        "requests": n,
        "errors": errors,
        "error_rate": errors / n if n else None,
        "latency_p95_s": float(np.percentile(latencies, 95)) if latencies else None,
        "success_rate": sum(judged) / len(judged) if judged else None,
        "feedback": len(judged),
        "flagged": sum(1 for r in rows if r["flagged"]),
    }


def gather_status(
    policy: MonitorPolicy, registry: Any | None = None, now: float | None = None
) -> StatusData:
    """Run every monitor of ``policy`` over the traffic log; nothing here raises on bad data."""
    now = time.time() if now is None else now
    paths = ServePaths(policy.serve_dir)
    data = StatusData(generated_at=now, traffic_root=str(paths.traffic_log), model=policy.model)
    read = TrafficLog(paths.traffic_log).read(model=policy.model)
    data.problems = [s.message() for s in read.skipped]
    rows = joined_requests(read.table)
    state = _canary_state(paths, data.problems)
    data.canary = state.model_dump(mode="json") if state is not None else None
    aliases = _aliases(registry, policy.model, data.problems)
    live = _live_versions(state, aliases, rows)
    for version, arm, weight in live:
        # users' answers: shadows were never returned, forced requests are tests and probes
        vrows = [r for r in rows if r["version"] == version and r["arm"] not in USER_ARMS_OUT]
        row = version_row(vrows, version)
        row.update(model=policy.model, arm=arm, weight=weight)
        row["aliases"] = sorted(a for a, v in aliases.items() if v == version)
        data.versions.append(row)
        try:
            data.drift.extend(drift_reports(vrows, version, policy, now))
        except ValueError as exc:  # e.g. a label outside a fixed category set
            data.problems.append(f"drift of version {version}: {exc}")
        data.kpis.extend(kpis(vrows, version, policy, now))
    data.alerts = drift_alerts(data.drift) + [a for s in data.kpis for a in kpi_alerts(s)]
    if paths.review.is_file():
        data.review = ReviewQueue(paths.review).counts()
    if policy.retrain is not None:
        created = _champion_created(registry, policy.model)
        data.retrain = evaluate_trigger(policy.retrain, data.alerts, created, now).to_dict()
    return data


def _canary_state(paths: ServePaths, problems: list[str]) -> CanaryState | None:
    store = CanaryStore(paths.state)
    if not store.exists():
        return None
    try:
        return store.read()
    except Exception as exc:  # the page still shows the traffic
        problems.append(f"canary state unreadable: {exc}")
        return None


def _aliases(registry: Any | None, model: str, problems: list[str]) -> dict[str, str]:
    if registry is None:
        return {}
    try:
        found = registry.client.get_registered_model(model).aliases or {}
    except Exception as exc:
        problems.append(f"registry: model {model!r}: {type(exc).__name__}: {str(exc)[:200]}")
        return {}
    return {alias: str(v) for alias, v in found.items()}


def _champion_created(registry: Any | None, model: str) -> float | None:
    champion = champion_version(registry, model)
    return champion.creation_timestamp / 1000 if champion is not None else None


def _live_versions(
    state: CanaryState | None, aliases: dict[str, str], rows: Sequence[dict[str, Any]]
) -> list[tuple[str, str, float | None]]:
    """(version, arm, weight): the routed versions, else the champion, else what the log holds."""
    if state is not None:
        live: list[tuple[str, str, float | None]] = [(state.primary, "primary", 1.0 - state.weight)]
        if state.canary and state.status in ("running", "paused"):
            live.append((state.canary, "canary", state.weight))
        return live
    if "champion" in aliases:
        return [(aliases["champion"], "primary", 1.0)]
    seen = sorted({r["version"] for r in rows}, key=lambda v: (len(v), v))
    return [(v, "logged", None) for v in seen]


def alerts_table(alerts: Sequence[Alert]) -> list[list[str]]:
    """Rows for a terminal table: severity, monitor, version, message."""
    order = sorted(alerts, key=lambda a: (a.severity != "critical", a.monitor))
    return [[a.severity, a.monitor, a.version, a.message] for a in order]
