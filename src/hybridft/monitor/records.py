"""The monitor's plain records: what drift tests, KPI series and alerts hand to the status page,
the retraining trigger and the CLI. Plain dataclasses, JSON-ready through ``to_dict``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["warning", "critical"]
Direction = Literal["above", "below"]


@dataclass(frozen=True)
class Alert:
    """One monitor rule that fired.

    ``monitor`` names the rule: ``drift.intent``, ``drift.input_length``, ``drift.prediction``,
    ``kpi.<name>`` (control limits), ``forecast.<name>`` (a threshold predicted to be crossed),
    ``threshold.<name>`` (a threshold crossed now).
    """

    monitor: str
    severity: Severity
    version: str
    message: str
    value: float | None = None
    threshold: float | None = None
    at: float | None = None  # unix seconds of the evidence (bucket start or request time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftReport:
    """One drift test of a version's current window against its reference window."""

    monitor: str  # "intent", "input_length", "prediction"
    version: str
    n_reference: int
    n_current: int
    psi: float
    log_evidence: float  # log of the test's e-value at the end (or at detection)
    p_value: float  # always-valid p-value, min(1, 1 / max e-value)
    alpha: float
    drifted: bool
    detected_after: int | None  # requests into the current window when the test fired
    reference_dist: dict[str, float]  # bin or label -> share
    current_dist: dict[str, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KpiSeries:
    """One KPI of one version over time buckets, with its control limits and forecast."""

    name: str  # "task_success", "escalation_rate", "latency_p95_s", "error_rate"
    version: str
    unit: str
    times: list[float]  # bucket starts, unix seconds
    values: list[float | None]  # None: no observation in the bucket
    counts: list[int]  # observations per bucket
    center: float | None = None  # the baseline mean the control limits are built around
    lower: list[float | None] = field(default_factory=list)  # control limits per bucket
    upper: list[float | None] = field(default_factory=list)
    anomalies: list[int] = field(default_factory=list)  # indices of out-of-control buckets
    threshold: float | None = None  # the policy's limit
    direction: Direction = "below"  # alert when the value goes below (or above) the threshold
    forecast_times: list[float] = field(default_factory=list)
    forecast_values: list[float] = field(default_factory=list)
    forecast_crossing: float | None = None  # predicted time the threshold is crossed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StatusData:
    """Everything the status page shows; gathered by ``monitor.status``."""

    generated_at: float
    traffic_root: str
    model: str
    # one row per live version: model, version, aliases (list), arm ("primary"/"canary"/...),
    # weight, requests, errors, error_rate, latency_p95_s, success_rate, flagged
    versions: list[dict[str, Any]] = field(default_factory=list)
    canary: dict[str, Any] | None = None  # serve.canary.CanaryState.model_dump()
    drift: list[DriftReport] = field(default_factory=list)
    kpis: list[KpiSeries] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    review: dict[str, int] = field(default_factory=dict)  # {"open": n, "resolved": n}
    problems: list[str] = field(default_factory=list)  # skipped partitions, unreadable stores
    retrain: dict[str, Any] | None = None  # the trigger's verdict: {"fire": bool, "reasons": [...]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
