"""One trial of a sweep: a sampled configuration trained once per seed by ``train.run``.

The trial function runs inside Tune. With ``plan.in_process`` it trains right there (Ray Train's
local mode, in a trial actor Tune reuses from trial to trial); otherwise the training's worker
group is launched from a zero-CPU task beside it (see ``sweep.tune`` for why). Either way the
training loop's validation records reach Tune through ``MetricsRelay``. Each finished seed leaves
``outcome.json`` in its run directory: a trial restarted after a driver kill reuses it instead
of training that seed again.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train import UserCallback
from ray.tune import Trainable

from hybridft.specs import JobSpec
from hybridft.sweep.objectives import forget_eval, measure
from hybridft.sweep.params import apply_params
from hybridft.sweep.record import COMPLETE_KEY, FRESH_PROCESS, PROCESS_STARTED_AT, write_json
from hybridft.sweep.space import SearchSpace
from hybridft.train import train_job

OUTCOME_FILE = "outcome.json"
ATTEMPTS_FILE = "attempts.jsonl"  # one line per training start (a resumed run included)


@dataclass
class TrialPlan:
    """What every trial of a sweep shares (shipped to trials with ``tune.with_parameters``)."""

    space: SearchSpace
    sweep_dir: Path
    measures: list[str]  # measured for every seed: the objectives + the cheap training measures
    relay_metric: str  # records carrying it are forwarded to Tune while training
    in_process: bool = False  # train in the trial's own process (see the module doc)

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
        self,
        metric: str,
        tokens_before: int,
        steps_before: int,
        seed: int,
        budget: int,
        sink: Callable[[dict[str, Any]], None] | None = None,
        stamp: dict[str, Any] | None = None,
    ) -> None:
        # In process, records go to the trial's own ``sink``. From a worker group, through
        # Ray's callback, which binds to the trial's report queue (it is built in the trial).
        self._sink = sink or _tune_report_callback_sink()
        self.metric = metric
        self.tokens_before, self.steps_before, self.seed = tokens_before, steps_before, seed
        self.budget = budget
        self.stamp = dict(stamp or {})  # added to every record (the trial process's start)

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
        out.update(self.stamp)
        self._sink(out)


def _tune_report_callback_sink() -> Callable[[dict[str, Any]], None]:
    from ray.tune.integration.ray_train import TuneReportCallback

    callback = TuneReportCallback()
    # after_report reads no run context (there is no Train run here): only the metrics
    return lambda record: callback.after_report(None, [record], None)


def train_and_measure(
    job: JobSpec,
    run_name: str,
    resume: bool,
    runs_dir: str,
    measures: list[str],
    callbacks: list,
    in_process: bool = False,
    confirm: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One seed of one trial: ``train.run``, the measures, ``outcome.json``; then drop the
    intermediate checkpoints (the final and stage models were copied out by ``train.run``).

    ``confirm`` is called between the training and the measures: an in-process trial waits
    there until Tune has taken every record and asked for more, and raises ``TrialStopped`` if
    Tune stopped the trial instead (its run then leaves no ``outcome.json``).
    """
    result = train_job(
        job,
        run_name=run_name,
        resume=resume,
        output_dir=runs_dir,
        callbacks=callbacks,
        in_process=in_process,
    )
    if confirm is not None:
        confirm()
    last = result.final_metrics
    t0 = time.perf_counter()
    objectives = measure(job, result, measures)
    eval_s = forget_eval(result)  # this process may train more trials: keep no eval around
    timings = result.extra.get("timings", {})
    outcome = {
        "run_name": run_name,
        "run_dir": str(result.run_dir),
        "seed": job.seed,
        "objectives": objectives,
        "trained_tokens": int(last.get("trained_tokens", 0)),
        "global_steps": int(last.get("global_step", 0)),
        "wall_s": result.wall_s,
        # inside wall_s: the training steps themselves and the validation (ASHA's signal)
        "loop_s": float(timings.get("steps_s", 0.0)),
        "validation_s": float(timings.get("validation_s", 0.0)),
        "eval_s": eval_s,
        "measure_s": time.perf_counter() - t0,  # the objectives, evaluation included
        "in_process": in_process,
        "timings": timings,
    }
    write_json(result.run_dir / OUTCOME_FILE, outcome)
    for ckpt in (Path(runs_dir) / "ray" / run_name).glob("checkpoint_*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    return outcome


# From a trial that launches a worker group: a zero-CPU task outside the trial's placement group
train_and_measure_task = ray.remote(num_cpus=0, max_retries=0)(train_and_measure)


def _read_outcome(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / OUTCOME_FILE
    return json.loads(path.read_text()) if path.is_file() else None


_TRIALS_IN_THIS_PROCESS = [0]


def process_stamp() -> dict[str, Any]:
    """Whether this trial is the first in its process, and when the process started: a trial
    that starts a fresh actor pays the process start and its imports, before Tune counts the
    trial as started (``on_trial_start`` comes once the actor is up). The benchmark adds that."""
    import psutil

    _TRIALS_IN_THIS_PROCESS[0] += 1
    return {
        FRESH_PROCESS: int(_TRIALS_IN_THIS_PROCESS[0] == 1),
        PROCESS_STARTED_AT: psutil.Process().create_time(),
    }


def trial_body(
    config: dict[str, Any],
    plan: TrialPlan,
    trial_id: str,
    sink: Callable | None = None,
    confirm: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The sampled configuration, trained once per seed; returns the trial's final result.

    ``sink`` receives the relayed validation records (in process); ``None`` relays them through
    Ray's ``TuneReportCallback`` from the worker group's controller. ``confirm``: see
    ``train_and_measure``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    params = {k: v for k, v in config.items() if k in plan.space.parameters}
    job = apply_params(plan.space.base_job, params, plan.space.budget.tokens)
    node = ray.get_runtime_context().get_node_id()
    stamp = process_stamp()
    tokens, steps = 0, 0
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in plan.space.budget.seeds:
        run_name = f"{trial_id}-seed{seed}"
        outcome = _read_outcome(plan.runs_dir / run_name)  # done before a driver kill: keep it
        if outcome is None:
            resume = (plan.runs_dir / "ray" / run_name).exists()
            with open(plan.sweep_dir / ATTEMPTS_FILE, "a") as fh:
                fh.write(json.dumps({"trial_id": trial_id, "run_name": run_name, "seed": seed,
                                     "resume": resume, "time": time.time(),
                                     "pid": os.getpid()}) + "\n")  # fmt: skip
            budget = plan.space.budget.tokens * len(plan.space.budget.seeds)
            relay = MetricsRelay(plan.relay_metric, tokens, steps, seed, budget, sink, stamp)
            args = (job.model_copy(update={"seed": seed}), run_name, resume, str(plan.runs_dir),
                    plan.measures, [relay])  # fmt: skip
            if plan.in_process:
                outcome = train_and_measure(*args, in_process=True, confirm=confirm)
            else:
                task = train_and_measure_task.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                )
                outcome = ray.get(task.remote(*args))
        per_seed[str(seed)] = outcome
        tokens += outcome["trained_tokens"]
        steps += outcome["global_steps"]
    objectives = {
        name: statistics.fmean(o["objectives"][name] for o in per_seed.values())
        for name in plan.space.objective_names
    }
    return {
        COMPLETE_KEY: True,
        **objectives,
        "objectives": objectives,
        "per_seed": per_seed,
        "trial_tokens": tokens,
        "trial_steps": steps,
    }


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable (worker-group trials): the trial, then its final report."""
    from ray import tune

    tune.report(trial_body(config, plan, tune.get_context().get_trial_id()))


class TrialStopped(BaseException):
    """Raised in an in-process trial's training thread once Tune has stopped the trial (ASHA):
    a request to stop, like ``SystemExit`` in Tune's function trainables, not a failure (so
    ``train.run`` lets it through instead of reporting a failed run)."""


class InProcessTrial(Trainable):
    """Tune class trainable for in-process trials: the trial trains in a thread of this actor.

    Not a function trainable: those install Tune's process-wide session, and Ray Train refuses
    ``ray.train.report`` / ``get_context`` in a process that has one, local mode included. Here
    ``step()`` hands Tune the relayed records one at a time and the final result last; Tune
    reuses the actor for the next trial (``reset_config``), with everything already imported.
    """

    def setup(self, config: dict[str, Any], plan: TrialPlan | None = None) -> None:
        # optional only to keep Trainable.setup's signature: tune.with_parameters always gives it
        if plan is None:
            raise TypeError("InProcessTrial needs plan=, given by tune.with_parameters")
        self.plan = plan
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._turn = threading.Condition()
        self._asking = False  # step() is waiting for the next event
        self._thread = threading.Thread(target=self._train, args=(config,), daemon=True)
        self._thread.start()

    def _train(self, config: dict[str, Any]) -> None:
        try:
            final = trial_body(
                config, self.plan, self.trial_id, sink=self._emit, confirm=self._confirm
            )
            self._events.put(("final", {**final, "done": True}))
        except TrialStopped:
            self._events.put(("stopped", {"done": True}))
        except BaseException as exc:  # noqa: BLE001 - raised in step(), on Tune's thread
            self._events.put(("error", exc))

    def _emit(self, record: dict[str, Any]) -> None:
        if self._stop.is_set():
            raise TrialStopped
        self._events.put(("record", record))

    def _confirm(self) -> None:
        """The training thread, before a run's measures and ``outcome.json``: wait until Tune
        has taken every record and asked for the next result (so ASHA let the trial go on), or
        raise ``TrialStopped`` if it stopped the trial. Training runs ahead of Tune, so without
        this a trial ASHA stopped at one of its last records could still finish and measure."""
        with self._turn:
            self._turn.wait_for(
                lambda: self._stop.is_set() or (self._asking and self._events.empty())
            )
        if self._stop.is_set():
            raise TrialStopped

    def step(self) -> dict[str, Any]:
        with self._turn:
            self._asking = True
            self._turn.notify_all()
        try:
            kind, payload = self._events.get()
        finally:
            with self._turn:
                self._asking = False
        if kind == "error":
            raise payload
        return payload

    def _halt(self) -> bool:
        """Stop the training thread at its next report; whether it ended in time."""
        with self._turn:
            self._stop.set()
            self._turn.notify_all()
        self._thread.join(timeout=HALT_TIMEOUT_S)
        return not self._thread.is_alive()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        if not self._halt():
            return False  # Tune then starts a fresh actor
        self._start(new_config)
        return True

    def cleanup(self) -> None:
        self._halt()


HALT_TIMEOUT_S = 120.0  # a stopped trial ends at its next validation record
