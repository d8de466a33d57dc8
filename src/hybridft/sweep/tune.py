"""``run_sweep``: a search space swept with Ray Tune + Optuna (TPE) + ASHA around ``train.run``.

How a trial runs in process (``trial_runner: auto`` for one-worker jobs, the demo's case):
the trial (``trial.InProcessTrial``, a class trainable) holds the worker's resources and calls
``train.run(in_process=True)`` in a thread of its own actor: Ray Train's local mode, checkpoints
persisted, validation records handed to Tune by ``step()``. Tune reuses trial actors
(``reuse_actors``), so a trial after the first starts in a process that has Ray Train, torch and
transformers imported: a worker group would start two processes and import them again for every
trial (~12 s here, more than a demo trial trains).

How a trial runs with a worker group (Ray Train V2 inside a Tune function):

1. Tune starts the trial function with a fraction of a CPU, in a placement group that captures
   child tasks. The trial does not call ``train.run`` itself: it launches it in a zero-CPU task
   pinned to its own node with ``NodeAffinitySchedulingStrategy``. An explicit strategy takes the
   task (and the Train controller and workers it creates) out of the trial's placement group, so
   the worker group is scheduled on the cluster's free resources like any standalone run; pinning
   keeps the Train driver beside its trial (Tune's "safe node" advice still applies).
2. Intermediate metrics come back through Ray's ``TuneReportCallback`` (built inside the trial,
   it owns the trial's report queue; Train's controller calls it after every report). A small
   relay forwards only records carrying the early-stopping metric, with the trial-wide time axis,
   so ASHA can stop a trial between two validations.
3. A stopped trial's actor ends; the task it owns, the Train controller and the workers die with
   it (Ray fate-shares a task with its owner), which frees the worker group's resources.

Concurrency is sized from what the cluster can schedule (``train.resources``): a trial needs its
driver's fraction plus a whole worker group, and Tune never starts more trials than the cluster
holds at once, so a worker group never waits on resources that other trials' drivers hold (no
deadlock on 2 CPUs). On an autoscaled cluster that is what its node types provide (max count x
resources), not the nodes up now: a GPU sweep on a cluster that has none running yet still runs.

Resume: Tune's experiment state and the Optuna study (sqlite) live in the sweep directory;
``Tuner.restore`` re-queues unfinished trials, which continue their Train runs from the last
checkpoint (same run name), while every seed that finished wrote ``outcome.json`` and is never
trained again.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridft.errors import UserError
from hybridft.model import base_of
from hybridft.registry.client import Registry, flatten, git_commit
from hybridft.runtime import ensure_ray, environment
from hybridft.specfile import line_of
from hybridft.specs import ScalingSpec
from hybridft.sweep.objectives import NEEDS_VALIDATION
from hybridft.sweep.record import (
    OPTUNA_NUMBER,
    SWEEP_FILE,
    SweepRecorder,
    read_trials,
    write_json,
)
from hybridft.sweep.search import asha_milestones, scheduler, searcher, study_url, time_attr
from hybridft.sweep.space import SearchSpace, load_space
from hybridft.sweep.trial import InProcessTrial, TrialPlan, run_trial
from hybridft.train import (
    Capacity,
    as_count,
    describe,
    new_run_name,
    schedulable_capacity,
    trials_that_fit,
    worker_resources,
)

TRIAL_DRIVER_CPU = 0.1  # the trial function only waits and relays; training runs in its workers


@dataclass
class SweepResult:
    name: str
    sweep_dir: Path
    trials: list[dict[str, Any]]  # as in trials.json
    best: list[dict[str, Any]]  # best trial, or the Pareto front when multi-objective
    study_name: str
    study_storage: str  # sqlite URL: optuna-dashboard opens it
    mlflow_run_id: str
    max_concurrent: int
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def trial_resources(scaling: ScalingSpec, in_process: bool = False) -> dict[str, float]:
    """What one trial holds: in process, its one worker's resources; with a worker group, the
    group's plus the trial driver's CPU fraction (the group is scheduled outside the trial)."""
    need = {r: n * scaling.num_workers for r, n in worker_resources(scaling).items()}
    if not in_process:
        need["CPU"] = need.get("CPU", 0.0) + TRIAL_DRIVER_CPU
    return need


def max_concurrent_trials(
    scaling: ScalingSpec,
    cluster: Mapping[str, float] | Capacity,
    cap: int | None = None,
    in_process: bool = False,
) -> int:
    """How many trials fit at once (``trial_resources`` each). ``cluster``: what it can schedule
    (``train.resources.schedulable_capacity()``), or plain live resources."""
    capacity = cluster if isinstance(cluster, Capacity) else Capacity(live=dict(cluster))
    fits = trials_that_fit(
        capacity,
        trial_resources(scaling, in_process),
        worker_resources(scaling),
        scaling.num_workers,
    )
    return as_count(min(fits, cap) if cap else fits)


@contextlib.contextmanager
def _tune_environment(verbose: int) -> Iterator[None]:
    """Environment Tune reads on the driver (and passes to trial actors) while a sweep runs."""
    wanted: dict[str, str | None] = {
        # Tune's strict check wants every searcher metric in every result; ours arrive last
        "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
        # trials keep the driver's working directory: job specs name data by relative paths
        # (in-process trials read them in the trial actor itself)
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        # Tune's experiment state (which trials exist, for --resume) saved every second: its
        # default waits >= 10 s, longer than a warm in-process trial takes to start and
        # checkpoint, and a driver killed in that gap would lose the trial's place to resume
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
    }
    if verbose == 0:  # only Tune's legacy console output is silent at 0: the new one still
        wanted["RAY_AIR_NEW_OUTPUT"] = "0"  # prints where results are and how to see them
    with environment(wanted):
        yield


def _concurrency(space: SearchSpace) -> int:
    job = space.base_job
    capacity = schedulable_capacity()
    fits = max_concurrent_trials(
        job.scaling, capacity, space.budget.max_concurrent, space.in_process
    )
    if fits < 1:
        need = trial_resources(job.scaling, space.in_process)
        raise UserError(
            f"{space.source_file}:{line_of(space.source_file, ('job',))}: job: expected a trial "
            f"that fits the cluster ({need} per trial; the cluster has "
            f"{describe(capacity, need)}), got scaling {job.scaling.model_dump()}"
        )
    return min(fits, space.budget.trials)


def _best(space: SearchSpace, sweep_dir: Path, name: str, trials: list[dict[str, Any]]) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=study_url(sweep_dir))
    try:
        numbers = {t.number for t in study.best_trials}  # a duplicate ties with its twin
    except ValueError:  # no completed trial
        return []
    return [t for t in trials if t.get(OPTUNA_NUMBER) in numbers]


def run_sweep(
    space_path: str | Path,
    sweep_name: str | None = None,
    resume: bool = False,
    storage_dir: str | Path = ".hybridft/sweeps",
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> SweepResult:
    """Sweep a search space; every trial a Ray Train run, every result in ``trials.json``.

    Args:
        space_path: a ``search_spaces/*.yaml`` file.
        sweep_name: the sweep's name (default: ``<space name>-<time>-<hex>``); with ``resume``,
            the sweep to continue.
        resume: continue a sweep whose driver died: finished trials are kept, unfinished ones
            continue from their Train checkpoints.
        storage_dir: where sweeps live (on a cluster: storage every node sees, like
            ``--output-dir`` for a training run).
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI`` or the local store).
        verbose: Tune's console verbosity (0 silent, 1 status tables).
    """
    from ray import tune

    t0 = time.perf_counter()
    space = load_space(space_path)
    root = Path(storage_dir).resolve()
    if resume and not sweep_name:
        raise UserError("--resume needs the name of the sweep to continue")
    sweep_name = sweep_name or new_run_name(space.name)
    sweep_dir = root / sweep_name
    if resume and not (sweep_dir / SWEEP_FILE).is_file():
        raise UserError(f"--resume {sweep_name}: no such sweep under {root}")
    if not resume and sweep_dir.exists():
        raise UserError(f"sweep {sweep_name!r} already exists under {root}; pass --resume")
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)

    ensure_ray()
    concurrent = _concurrency(space)
    for seed in space.budget.seeds:  # built once here, never by racing trials
        base_of(space.base_job.model, seed, on_event=print)
    registry = Registry(tracking_uri)
    if resume:
        info = json.loads((sweep_dir / SWEEP_FILE).read_text())
        registry.client.update_run(info["mlflow_run_id"], status="RUNNING")
    else:
        commit = git_commit()
        run_id = registry.start_run(
            sweep_name,
            tags={"hybridft.kind": "sweep", "hybridft.space_file": space.source_file,
                  "hybridft.job": space.base_job.name, "hybridft.git_commit": commit},
        )  # fmt: skip
        registry.log_params(run_id, flatten(space.model_dump(mode="json")))
        info = {
            "name": sweep_name,
            "space_file": space.source_file,
            "space": space.model_dump(mode="json"),
            "study": {"name": sweep_name, "storage": study_url(sweep_dir)},
            "mlflow_run_id": run_id,
            "tracking_uri": registry.tracking_uri,
            "time_attr": time_attr(space),
            "milestones": asha_milestones(space),
            "max_concurrent": concurrent,
            "started": time.time(),
        }
        write_json(sweep_dir / SWEEP_FILE, info)

    extra = [
        m
        for m in ("val_loss", "trained_tokens", "wall_time_s")
        if m not in NEEDS_VALIDATION or space.base_job.data.validation
    ]
    plan = TrialPlan(
        space=space,
        sweep_dir=sweep_dir,
        measures=list(dict.fromkeys(space.objective_names + extra)),
        # ASHA's metric; without ASHA the validation loss still gives every trial its curve
        relay_metric=space.asha.metric if space.asha else "val_loss",
        in_process=space.in_process,
    )
    # in process the trial actor holds the worker's resources; with a worker group it holds a
    # fraction of a CPU, and the group is scheduled on the cluster beside it
    trainable = tune.with_resources(
        tune.with_parameters(InProcessTrial if space.in_process else run_trial, plan=plan),
        trial_resources(space.base_job.scaling, True)
        if space.in_process
        else {"CPU": TRIAL_DRIVER_CPU},
    )
    tune_dir = sweep_dir / "tune"
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise UserError(f"--resume {sweep_name}: the sweep stopped before Tune saved any state")
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True)
    else:
        recorder = SweepRecorder(
            sweep_dir,
            list(space.parameters),
            info["time_attr"],
            plan.relay_metric,
            registry.tracking_uri,
            info["mlflow_run_id"],
            sweep_name,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher(space, sweep_dir, sweep_name),
                scheduler=scheduler(space),
                num_samples=space.budget.trials,
                max_concurrent_trials=concurrent,
                reuse_actors=space.in_process,  # warm processes: the point of in-process trials
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(sweep_dir),
                callbacks=[recorder],
                verbose=verbose,
                # trials resume by run name from their Train checkpoints, not Tune's
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                # in process, a failed trial (its process died: OOM, a lost node) is started
                # again on a fresh actor, up to the job's max_failures, and its run resumes from
                # its last checkpoint; a worker group restarts failed workers itself
                failure_config=tune.FailureConfig(
                    max_failures=space.base_job.scaling.max_failures if space.in_process else 0
                ),
            ),
        )
    tune_started = time.time()  # a fresh trial process's start-up is counted from here at most
    with _tune_environment(verbose):
        tuner.fit()

    trials = read_trials(sweep_dir)
    best = _best(space, sweep_dir, sweep_name, trials)
    run_id = info["mlflow_run_id"]
    if best:
        registry.log_metrics(run_id, {f"best/{k}": v for k, v in best[0]["objectives"].items()})
        registry.set_tags(run_id, {"hybridft.best_trials": ",".join(t["trial_id"] for t in best)})
    registry.log_dict(run_id, trials, "trials.json")
    registry.end_run(run_id)
    info.update(finished=time.time(), best=[t["trial_id"] for t in best])
    write_json(sweep_dir / SWEEP_FILE, info)
    return SweepResult(
        name=sweep_name,
        sweep_dir=sweep_dir,
        trials=trials,
        best=best,
        study_name=sweep_name,
        study_storage=study_url(sweep_dir),
        mlflow_run_id=run_id,
        max_concurrent=concurrent,
        wall_s=time.perf_counter() - t0,
        extra={"tune_started": tune_started},
    )
