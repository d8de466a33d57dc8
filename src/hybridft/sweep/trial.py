"""One trial of a sweep: a sampled configuration trained once per seed by ``train.run``.

The trial function runs inside Tune; the training runs in a zero-CPU task beside it (see
``sweep.tune`` for why), and the training loop's validation records reach Tune through
``MetricsRelay``. Each finished seed leaves ``outcome.json`` in its run directory: a trial
restarted after a driver kill reuses it instead of training that seed again.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train import UserCallback

from hybridft.specs import JobSpec
from hybridft.sweep.params import apply_params
from hybridft.sweep.record import COMPLETE_KEY, write_json
from hybridft.sweep.space import SearchSpace

OUTCOME_FILE = "outcome.json"
ATTEMPTS_FILE = "attempts.jsonl"  # one line per training start (a resumed run included)


@dataclass
class TrialPlan:
    """What every trial of a sweep shares (shipped to trials with ``tune.with_parameters``)."""

    space: SearchSpace
    sweep_dir: Path
    measures: list[str]  # measured for every seed: the objectives + the cheap training measures
    relay_metric: str  # records carrying it are forwarded to Tune while training

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"


class MetricsRelay(UserCallback):
    """Ray Train callback: forwards records carrying ``metric`` to the Tune trial that built it.

    Adds the trial-wide time axis (``sweep_tokens`` / ``sweep_steps``: trained so far, summed
    over the trial's earlier seeds) and the seed. Checkpoints stay with Train (the trial resumes
    by run name), so none is forwarded.
    """

    def __init__(
        self, metric: str, tokens_before: int, steps_before: int, seed: int, budget: int
    ) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        self._tune = TuneReportCallback()  # binds to the current trial's report queue
        self.metric = metric
        self.tokens_before, self.steps_before, self.seed = tokens_before, steps_before, seed
        self.budget = budget

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        record = metrics[0]  # rank 0: the loop's records are already summed over workers
        tokens = self.tokens_before + int(record.get("trained_tokens", 0))
        if self.metric not in record or tokens >= self.budget:
            # Past the trial's token budget (stages round up to whole steps) the trial is
            # finishing: its last values come with the objectives in the final report. Sent
            # alone, they could reach a milestone and ASHA would stop a trial whose training is
            # over, before its objectives are measured.
            return
        # "done" marks the Train run's last report; to Tune it would mean the trial ended
        out = {
            k: v
            for k, v in record.items()
            if isinstance(v, int | float | str) and k not in ("done", "stage_end")
        }
        out["sweep_tokens"] = tokens
        out["sweep_steps"] = self.steps_before + int(record.get("global_step", 0))
        out["seed"] = self.seed
        self._tune.after_report(run_context, [out], None)


@ray.remote(num_cpus=0, max_retries=0)
def train_and_measure(
    job: JobSpec, run_name: str, resume: bool, runs_dir: str, measures: list[str], callbacks: list
) -> dict[str, Any]:
    """One seed of one trial: ``train.run``, the measures, ``outcome.json``; then drop the
    intermediate checkpoints (the final and stage models were copied out by ``train.run``)."""
    from hybridft.sweep.objectives import EVAL_SECONDS, measure
    from hybridft.train.run import run

    result = run(job, run_name=run_name, resume=resume, output_dir=runs_dir, callbacks=callbacks)
    last = result.final_metrics
    outcome = {
        "run_name": run_name,
        "run_dir": str(result.run_dir),
        "seed": job.seed,
        "objectives": measure(job, result, measures),
        "trained_tokens": int(last.get("trained_tokens", 0)),
        "global_steps": int(last.get("global_step", 0)),
        "wall_s": result.wall_s,
        # inside wall_s: the training steps themselves (the rest is start-up, data, checkpoints)
        "loop_s": sum(float(h.get("window_s", 0.0)) for h in result.history),
        "eval_s": EVAL_SECONDS.get(str(result.run_dir), 0.0),
    }
    write_json(result.run_dir / OUTCOME_FILE, outcome)
    for ckpt in (Path(runs_dir) / "ray" / run_name).glob("checkpoint_*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    return outcome


def _read_outcome(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / OUTCOME_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function: the sampled configuration, trained once per seed, then its final report."""
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    trial_id = tune.get_context().get_trial_id()
    params = {k: v for k, v in config.items() if k in plan.space.parameters}
    job = apply_params(plan.space.base_job, params, plan.space.budget.tokens)
    node = ray.get_runtime_context().get_node_id()
    tokens, steps = 0, 0
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in plan.space.budget.seeds:
        run_name = f"{trial_id}-seed{seed}"
        outcome = _read_outcome(plan.runs_dir / run_name)  # done before a driver kill: keep it
        if outcome is None:
            resume = (plan.runs_dir / "ray" / run_name).exists()
            with open(plan.sweep_dir / ATTEMPTS_FILE, "a") as fh:
                fh.write(json.dumps({"trial_id": trial_id, "run_name": run_name, "seed": seed,
                                     "resume": resume, "time": time.time()}) + "\n")  # fmt: skip
            budget = plan.space.budget.tokens * len(plan.space.budget.seeds)
            relay = MetricsRelay(plan.relay_metric, tokens, steps, seed, budget)
            task = train_and_measure.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            )
            outcome = ray.get(
                task.remote(
                    job.model_copy(update={"seed": seed}),
                    run_name,
                    resume,
                    str(plan.runs_dir),
                    plan.measures,
                    [relay],
                )
            )
        per_seed[str(seed)] = outcome
        tokens += outcome["trained_tokens"]
        steps += outcome["global_steps"]
    objectives = {
        name: statistics.fmean(o["objectives"][name] for o in per_seed.values())
        for name in plan.space.objective_names
    }
    tune.report(
        {
            COMPLETE_KEY: True,
            **objectives,
            "objectives": objectives,
            "per_seed": per_seed,
            "trial_tokens": tokens,
            "trial_steps": steps,
        }
    )
