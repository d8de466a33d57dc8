"""Sweeps of hybrid schedules: a search space over a base job (``space``, ``params``), run with
Ray Tune + Optuna + ASHA around ``train.run`` (``tune``, ``trial``), recorded per trial in
``trials.json`` and MLflow (``record``); what a trial measures lives in ``objectives``."""
