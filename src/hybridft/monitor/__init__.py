"""Monitoring: drift and KPI monitors over the traffic log, alerts, the status page, the retrain
trigger and retraining, and tracing an answer back to its data."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours
# (retrain: training and evaluation)
_EXPORTS = {
    "categorical_drift": "drift",
    "length_drift": "drift",
    "drift_alerts": "kpi",
    "kpi_alerts": "kpi",
    "kpi_series": "kpi",
    "MonitorPolicy": "policy",
    "RetrainPolicy": "policy",
    "load_monitor_policy": "policy",
    "Alert": "records",
    "DriftReport": "records",
    "KpiSeries": "records",
    "StatusData": "records",
    "RetrainOutcome": "retrain",
    "alerts_table": "status",
    "gather_status": "status",
    "render_status": "status_page",
    "trace_request": "trace",
    "trace_tree": "trace",
    "TriggerVerdict": "trigger",
    "champion_version": "trigger",
    "evaluate_trigger": "trigger",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
