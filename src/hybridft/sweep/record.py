"""The sweep's record: ``trials.json`` (what a report reads) and one MLflow run per trial.

``SweepRecorder`` is a Tune callback: it runs in the sweep driver, the one process that writes the
file and talks to MLflow (explicit run ids through ``Registry``, no fluent global state), so
parallel trials never race on either. Each trial's MLflow run is nested under the sweep's run
(``mlflow.parentRunId``). On resume the file is read back and the same MLflow runs continue.

``trials.json``: a list, in the order the searcher proposed the trials, of
``{trial_id, index, optuna_number, params, status (running | completed | stopped | error),
starts, failures and last_failure (a trial Tune started again after it failed; absent: none),
process: {fresh, started_at}, intermediate: [{sweep_tokens, sweep_steps, iteration,
seed, stage, val_loss, loss, time/...}],
objectives: {name: mean over seeds}, per_seed: {seed: outcome.json of that run (run_name,
run_dir, objectives, trained_tokens, global_steps, wall_s, timings)}, trained_tokens, mlflow_run_id,
finished_at}``. ``stopped`` means early-stopped (ASHA): no objectives.

``sweep.json`` (``SWEEP_FILE``, written by ``sweep.tune``) names the space file and the study;
``best_sweep_job`` reads both files back into the best completed trial's job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper

from hybridft import atomic
from hybridft.errors import UserError
from hybridft.registry.client import Registry
from hybridft.specs import JobSpec
from hybridft.sweep.params import apply_params
from hybridft.sweep.space import load_space

TRIALS_FILE = "trials.json"
SWEEP_FILE = "sweep.json"  # the sweep's own record: space file, study, resources
COMPLETE_KEY = "trial_complete"  # in a trial's final report: every seed trained and measured
OPTUNA_NUMBER = "optuna_number"  # the Optuna trial number, carried in each trial's config
# Kept with each intermediate point: the run's seconds of work so far (data preparation,
# training steps, set-up, validation, checkpoint writes): what a stopped trial did, for
# accounting (benchmarks/sweep_efficiency.py).
WORK_KEYS = ("time/prepare_s", "time/steps_s", "time/setup_s", "time/validation_s",
             "time/checkpoint_s")  # fmt: skip
# On every relayed record (see sweep.trial.process_stamp): the trial's process
FRESH_PROCESS, PROCESS_STARTED_AT = "trial/fresh_process", "trial/process_started_at"


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (``hybridft.atomic``): a reader or a killed driver never sees half a
    file, and two writers never share a temporary file."""
    atomic.write_json(path, obj)


def read_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / TRIALS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def best_sweep_job(sweep_dir: str | Path) -> JobSpec:
    """The concrete job of a sweep's best completed trial (its first objective): where a monitor
    policy's ``retrain.sweep`` starts retraining from."""
    info_path = Path(sweep_dir) / SWEEP_FILE
    if not info_path.is_file():
        raise UserError(f"retrain.sweep: {sweep_dir} is not a sweep directory (no {SWEEP_FILE})")
    space = load_space(json.loads(info_path.read_text(encoding="utf-8"))["space_file"])
    objective, direction = space.objective_names[0], space.directions[0]
    done = [
        t
        for t in read_trials(sweep_dir)
        if t.get("status") == "completed" and objective in t.get("objectives", {})
    ]
    if not done:
        raise UserError(f"retrain.sweep: {sweep_dir} has no completed trial")
    sign = -1.0 if direction == "minimize" else 1.0
    best = max(done, key=lambda t: sign * float(t["objectives"][objective]))
    return apply_params(space.base_job, best["params"], total_tokens=space.budget.tokens)


class SweepRecorder(Callback):
    """Keeps ``trials.json`` and the trials' MLflow runs up to date as Tune reports."""

    def __init__(
        self,
        sweep_dir: Path,
        param_names: list[str],
        time_attr: str,
        metric: str | None,
        tracking_uri: str | None,
        parent_run_id: str | None,
        sweep_name: str,
    ) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.param_names = param_names
        self.time_attr = time_attr
        self.metric = metric
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self._trials: dict[str, dict[str, Any]] = {}
        self._registry: Any = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        return {**self.__dict__, "_registry": None, "_trials": {}}

    # -- Tune hooks -----------------------------------------------------------------------
    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self._trials = {t["trial_id"]: t for t in read_trials(self.sweep_dir)}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self._entry(trial)
        entry["status"] = "running"
        entry["starts"] += 1
        entry.setdefault("started_at", time.time())
        if self.tracking_uri and not entry.get("mlflow_run_id"):
            registry = self._mlflow()
            tags = {
                "hybridft.kind": "sweep-trial",
                "hybridft.sweep": self.sweep_name,
                "hybridft.trial_id": trial.trial_id,
            }
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run_id = registry.start_run(f"{self.sweep_name}-{trial.trial_id}", tags=tags)
            registry.log_params(run_id, {k: str(v) for k, v in entry["params"].items()})
            entry["mlflow_run_id"] = run_id
        elif entry.get("mlflow_run_id"):
            self._mlflow().client.update_run(entry["mlflow_run_id"], status="RUNNING")
        self._save()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if result.get(COMPLETE_KEY) or self.time_attr not in result:
            return
        point: dict[str, Any] = {
            "sweep_tokens": result.get("sweep_tokens"),
            "sweep_steps": result.get("sweep_steps"),
            "iteration": result.get("training_iteration"),
            "seed": result.get("seed"),
            "stage": result.get("stage"),
        }
        for key in ("val_loss", "loss", self.metric, *WORK_KEYS):
            if key and key in result:
                point[key] = result[key]
        entry = self._entry(trial)
        if FRESH_PROCESS in result and "process" not in entry:
            # the trial's process: fresh (its start-up is part of the trial) or reused
            entry["process"] = {
                "fresh": bool(result[FRESH_PROCESS]),
                "started_at": float(result[PROCESS_STARTED_AT]),
            }
        entry["intermediate"].append(point)
        if entry.get("mlflow_run_id"):
            metrics = {k: v for k, v in point.items() if k in ("val_loss", "loss", self.metric)}
            self._mlflow().log_metrics(
                entry["mlflow_run_id"], metrics, step=int(point[self.time_attr])
            )
        self._save()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        entry = self._entry(trial)
        # A trial that returns without its final report was stopped early (ASHA).
        entry["status"] = "completed" if result.get(COMPLETE_KEY) else "stopped"
        entry["objectives"] = dict(result.get("objectives", {}))
        entry["per_seed"] = dict(result.get("per_seed", {}))
        entry["trained_tokens"] = result.get("trial_tokens") or (
            entry["intermediate"][-1]["sweep_tokens"] if entry["intermediate"] else 0
        )
        entry["finished_at"] = time.time()
        self._finish(entry, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The trial failed and Tune starts it again (``scaling.max_failures`` in process)."""
        entry = self._entry(trial)
        entry["failures"] = entry.get("failures", 0) + 1
        entry["last_failure"] = str(getattr(trial, "error_file", "") or "")
        if entry.get("mlflow_run_id"):
            self._mlflow().set_tags(
                entry["mlflow_run_id"], {"hybridft.trial_failures": str(entry["failures"])}
            )
        self._save()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self._entry(trial)
        entry["status"] = "error"
        entry["error"] = str(getattr(trial, "error_file", "") or "")
        entry["finished_at"] = time.time()
        self._finish(entry, "FAILED")

    # -- helpers ------------------------------------------------------------------------------
    def _entry(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self._trials:
            config = dict(trial.config)
            self._trials[trial.trial_id] = {
                "trial_id": trial.trial_id,
                # the order the searcher proposed it (Optuna's trial number)
                "index": config.get(OPTUNA_NUMBER, len(self._trials)),
                OPTUNA_NUMBER: config.get(OPTUNA_NUMBER),
                "params": {k: config[k] for k in self.param_names if k in config},
                "status": "pending",
                "starts": 0,
                "intermediate": [],
                "objectives": {},
                "per_seed": {},
            }
        return self._trials[trial.trial_id]

    def _finish(self, entry: dict[str, Any], status: str) -> None:
        if entry.get("mlflow_run_id"):
            registry = self._mlflow()
            registry.log_metrics(entry["mlflow_run_id"], entry["objectives"])
            registry.set_tags(entry["mlflow_run_id"], {"hybridft.trial_status": entry["status"]})
            runs = [s.get("run_name", "") for s in entry["per_seed"].values()]
            if runs:
                registry.set_tags(entry["mlflow_run_id"], {"hybridft.runs": ",".join(runs)})
            registry.end_run(entry["mlflow_run_id"], status=status)
        self._save()

    def _mlflow(self) -> Any:
        if self._registry is None:
            self._registry = Registry(self.tracking_uri)
        return self._registry

    def _save(self) -> None:
        ordered = sorted(self._trials.values(), key=lambda t: t["index"])
        write_json(self.sweep_dir / TRIALS_FILE, ordered)
