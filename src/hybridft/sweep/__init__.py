"""Sweeps of hybrid schedules: a search space over a base job (``space``, ``params``), run with
Ray Tune + Optuna + ASHA around ``train.run`` (``tune``, ``trial``), recorded per trial in
``trials.json`` and MLflow (``record``); what a trial measures lives in ``objectives``; the
decision report (``report*``) trains and compares the arms."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours (tune: Ray Tune, Optuna)
_EXPORTS = {
    "OBJECTIVES": "objectives",
    "measure": "objectives",
    "apply_params": "params",
    "best_sweep_job": "record",
    "read_trials": "record",
    "build_report": "report",
    "SearchSpace": "space",
    "load_space": "space",
    "SweepResult": "tune",
    "run_sweep": "tune",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
