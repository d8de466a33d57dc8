"""The monitoring and retraining policy (``policies/monitor.yaml``): windows, KPI limits, alert
rules and what fires a retrain. Data only: ``monitor.status`` and ``monitor.retrain`` read it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hybridft.specfile import load_yaml_model
from hybridft.specs import Strict

PosFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]
DriftMonitor = Literal["intent", "input_length", "prediction"]
KpiName = Literal["task_success", "escalation_rate", "latency_p95_s", "error_rate"]
DRIFT_MONITORS: tuple[DriftMonitor, ...] = ("intent", "input_length", "prediction")
KPI_NAMES: tuple[KpiName, ...] = ("task_success", "escalation_rate", "latency_p95_s", "error_rate")


class DriftPolicy(Strict):
    """Each version's current window against its reference window (its first answers)."""

    monitors: list[DriftMonitor] = list(DRIFT_MONITORS)
    reference_requests: Annotated[int, Field(ge=20)] = 300  # the version's first answers
    current_window_s: PosFloat = 3600.0  # answers after the reference, within this window
    # ... and at most this many, the latest: a shift that began late in a long window is not
    # averaged away by the answers before it. Each run's test is always-valid over its window.
    current_requests: Annotated[int, Field(ge=1)] | None = 500
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01  # false alarms per test, all looks
    min_psi: Annotated[float, Field(ge=0)] = 0.1  # and at least this much shift to alert
    min_requests: Annotated[int, Field(ge=1)] = 50  # in the current window, before testing


class Limit(Strict):
    """A KPI's limit: alert below ``min`` or above ``max`` (one of them)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Limit:
        if (self.min is None) == (self.max is None):
            raise ValueError("set exactly one of min, max")
        return self


class KpiPolicy(Strict):
    bucket_s: PosFloat = 300.0
    baseline_buckets: Annotated[int, Field(ge=2)] = 6  # the control limits' baseline
    horizon_buckets: Annotated[int, Field(ge=1)] = 3  # forecast this far ahead
    lookback_s: PosFloat = 86400.0
    limits: dict[KpiName, Limit] = {
        "task_success": Limit(min=0.8),
        "escalation_rate": Limit(max=0.3),
        "latency_p95_s": Limit(max=2.0),
        "error_rate": Limit(max=0.05),
    }


class RetrainPolicy(Strict):
    """When ``hybridft retrain`` trains, on what, and where the result goes."""

    # Alert monitors that fire a retrain (prefix match: "drift." fires on any drift alert).
    on_alerts: list[str] = ["drift.intent", "threshold.task_success"]
    schedule_days: PosFloat | None = None  # also retrain when the champion is older than this
    min_reviewed_rows: Annotated[int, Field(ge=1)] = 20
    # What trains: a job spec, or the best completed trial of a sweep (one of the two); the
    # reviewed rows join its last stage.
    job: str | None = None
    sweep: str | None = None
    reviewed_source: str = "reviewed"  # the source name the reviewed rows are added under
    reviewed_weight: PosFloat = 0.5  # their mixture weight in the last stage
    from_champion: bool = True  # start from the champion's weights (else the job's base)
    gate_policy: str = "policies/default.yaml"  # registration, gates and @canary
    start_canary: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> RetrainPolicy:
        if (self.job is None) == (self.sweep is None):
            raise ValueError("set exactly one of job (a job spec) or sweep (a sweep directory)")
        return self


class MonitorPolicy(Strict):
    """``policies/monitor.yaml``."""

    model: Annotated[str, Field(min_length=1)]
    serve_dir: str = ".hybridft/serve"
    drift: DriftPolicy = DriftPolicy()
    kpis: KpiPolicy = KpiPolicy()
    retrain: RetrainPolicy | None = None
    source_file: str = Field("", exclude=True)


def load_monitor_policy(path: str | Path) -> MonitorPolicy:
    """Read ``policies/monitor.yaml`` (file:line:key errors)."""
    policy = load_yaml_model(path, MonitorPolicy)
    policy.source_file = str(path)
    return policy
