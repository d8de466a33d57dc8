"""Sweep efficiency: ASHA + Optuna TPE vs the full grid, on a grid over the demo search space.

Both search the same points: instruction share x SFT learning rate, as categorical choices (the
grid trains every combination once, with no early stopping; the search trains fewer trials and
ASHA stops the weaker ones at token milestones of the validation loss). Reported:

* best objective of each (the space's first objective: the demo's is the target task's
  validation loss) and the gap between them;
* trained tokens of each (every trial's tokens, stopped trials included), and the ratio;
* Ray's per-trial overhead (start-up, scheduling, reporting): a completed trial's wall time
  (Tune's trial start to its completion, on the driver) minus the work its runs timed
  themselves: data preparation, model set-up, training steps, validation, checkpoint writes,
  copying the models out, and the objectives' measurement (evaluation included). What is left is
  the Train controller and worker start-up, Tune's scheduling and result handling, reporting and
  persisting checkpoints, shutdown, plus a little untimed bookkeeping of ours (counted against
  us). Summed over every trial that ended (an ASHA-stopped trial's work is read from its
  intermediate records), as a share of their summed wall time; ``_completed`` is the same over
  completed trials only. A trial that starts a fresh actor is timed from the process's start
  (not before Tune's start), so its process start and imports count here (Ray's start-up):
  Tune's own trial start comes only once the actor is up. ``_from_trial_start`` leaves that
  start-up out, as earlier notes did;
* the same share without counting data preparation, set-up and checkpoints as work (everything
  but training steps, validation and evaluation), the stricter figure earlier notes reported;
* slot use: the sweep's wall time x its concurrency, against all trials' work (stopped trials
  included, from their intermediate records): idle slots and cold process starts show here;
* the import floor: what a fresh trial process pays for its imports alone (the trial module,
  Ray Train, torch, transformers and the model's code, the training and evaluation path), timed
  in bare Python processes started together, as many as the search runs at once, after the
  sweeps. Every fresh trial process pays that, under any runner, on this machine:
  ``import_floor_share_*`` is the share of each sweep's trial time that its fresh processes'
  imports come to. It is not a lower bound of ``ray_overhead_share``: part of a trial's imports
  runs inside the phases its runs time as work (the first model build imports the model code);
* where the overhead sits: ``warm_overhead_s_per_trial`` (a trial on a reused process: Tune's
  scheduling, reporting and result handling; the per-trial cost proper) and
  ``fresh_overhead_s_per_process`` (the rest, per fresh process: its start-up and imports),
  and from them ``work_s_per_trial_for_target``: the mean work per trial at which this sweep's
  overhead would come to 10% (with the same number of trials and fresh processes);
* Ray's actor floor: seconds from asking Ray for an actor to its first answer, for a bare actor
  that loads only what Tune's trial actor loads before a trial starts (Ray Tune and the trial
  module; no torch), in fresh worker processes, as many at once as the search runs, on the same
  Ray instance after the sweeps. No trial can start sooner on a fresh process: with fewer than
  a few trials per process, it alone bounds how low the overhead can go at this trial length;
* with ``--runners both`` (default), the grid again with ``trial_runner: worker_group`` (a Ray
  Train worker group per trial): the runner the in-process one replaced, measured in this run.

Targets (issue): search within 1 point of the grid's best with <= 40% of its tokens; Ray's
overhead <= 10% of trial time. Run: ``python benchmarks/sweep_efficiency.py`` (needs ``hybridft
data synth`` first; about 8 minutes on 2 cores). ``--token-scale K`` trains every trial K times
the space's token budget (ASHA's first milestone scaled alike): the same sweeps with longer
trials. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hybridft.sweep.record import WORK_KEYS  # the running sums kept on each point

SHARES = [0.0, 0.25, 0.5, 0.75, 1.0]
LRS = [1.0e-3, 3.0e-3]


def write_space(
    base: dict, out: Path, grid: bool, trials: int, runner: str = "auto", token_scale: int = 1
) -> Path:
    space = json.loads(json.dumps(base))
    space["job"] = str(Path(base["job"]).resolve())
    # longer trials, same shape: the token budget and ASHA's first milestone scale together
    space["budget"]["tokens"] = int(space["budget"]["tokens"]) * token_scale
    if space.get("asha") and "grace_period" in space["asha"]:
        space["asha"]["grace_period"] = int(space["asha"]["grace_period"]) * token_scale
    space["parameters"] = {
        "instruction_share": {"type": "categorical", "choices": SHARES},
        "lr.sft": {"type": "categorical", "choices": LRS},
    }
    space["budget"]["trials"] = trials
    space["job_overrides"].setdefault("eval", {})["max_examples"] = 100
    space["trial_runner"] = runner
    if grid:
        space["sampler"] = {"type": "grid"}
        space.pop("asha", None)
    else:
        space["sampler"] = {"type": "tpe", "startup_trials": 3}
    out.write_text(yaml.safe_dump(space, sort_keys=False))
    return out


WORK = ("prepare_s", "setup_s", "steps_s", "validation_s", "checkpoint_s", "collect_s")
PHASES = (*WORK, "measure_s")  # a finished run's work: its phases and the objectives' measure


def seed_work(outcome: dict) -> dict[str, float]:
    """A finished run's own timed work (its outcome.json), by phase."""
    timings = outcome.get("timings", {})
    out = {k: float(timings.get(k, 0.0)) for k in WORK}
    out["measure_s"] = float(outcome.get("measure_s", 0.0))  # evaluation included
    out["eval_s"] = float(outcome.get("eval_s", 0.0))
    return out


def stopped_work(trial: dict) -> float:
    """Work of a trial ASHA stopped, from each run's last intermediate record: its sums of
    training steps (every logged record's window, relayed or not), data preparation, set-up,
    validation and checkpoint writes."""
    last = {p.get("seed"): p for p in trial.get("intermediate", [])}
    return sum(float(p.get(k, 0.0)) for p in last.values() for k in WORK_KEYS)


# what a trial process imports before it trains (hybridft.sweep.trial brings Ray Train and Tune)
TRIAL_IMPORTS = (
    "hybridft.sweep.trial",
    "hybridft.sweep.objectives",
    "hybridft.train.run",
    "hybridft.train.in_process",
    "hybridft.train.loop",
    "hybridft.train.prepare",
    "hybridft.evaluate.job",
    "ray.train.torch",
    "ray.tune.integration.ray_train",
    "transformers",
    "transformers.models.llama.modeling_llama",  # the demo's tiny model
)
PROBE = (
    "import importlib, json, resource, time\n"
    "t = time.perf_counter()\n"
    "for m in {mods!r}: importlib.import_module(m)\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(json.dumps({{'wall_s': time.perf_counter() - t, 'cpu_s': r.ru_utime + r.ru_stime}}))"
)


def import_floor(processes: int, rounds: int = 2) -> dict:
    """Seconds a fresh Python process spends importing ``TRIAL_IMPORTS``, with ``processes`` of
    them started at once (a sweep's first trials start together); the lower round's mean."""
    code = PROBE.format(mods=list(TRIAL_IMPORTS))
    best = None
    for _ in range(rounds):
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]
        out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        mean = {k: sum(o[k] for o in out) / len(out) for k in ("wall_s", "cpu_s")}
        if best is None or mean["wall_s"] < best["wall_s"]:
            best = mean
    return {**best, "processes": processes}


def ray_actor_floor(processes: int, rounds: int = 2) -> dict:
    """Seconds from ``.remote()`` to the first answer of ``processes`` bare actors created at
    once, each importing what Tune's trial actor imports before its trial starts; every actor
    gets its own ``runtime_env`` (as Tune's trial actors have one), so each starts a fresh worker
    process. Runs on the instance the sweeps used; the lower round's mean."""
    import ray

    @ray.remote(num_cpus=0.01)
    class Bare:
        def __init__(self) -> None:
            # what Tune's trial actor loads before its trial starts: Tune, then our trainable
            import ray.tune  # noqa: F401

            import hybridft.sweep.trial  # noqa: F401

        def ready(self) -> bool:
            return True

    best = None
    for r in range(rounds):
        t0 = time.perf_counter()
        actors = [
            Bare.options(runtime_env={"env_vars": {"HYBRIDFT_BENCH_FLOOR": f"{r}-{i}"}}).remote()
            for i in range(processes)
        ]
        ray.get([a.ready.remote() for a in actors])
        wall = time.perf_counter() - t0
        for a in actors:
            ray.kill(a)
        if best is None or wall < best:
            best = wall
        time.sleep(1.0)
    return {"wall_s": best, "processes": processes}


def launched_at(trial: dict, tune_started: float) -> float:
    """When the trial began costing time: Tune's trial start (``on_trial_start``) on a reused
    process; on a fresh one, the process's start (not before Tune's): Tune calls
    ``on_trial_start`` only once the actor is up, after the process start and the imports."""
    process = trial.get("process")
    if process and process["fresh"]:
        return min(trial["started_at"], max(process["started_at"], tune_started))
    return trial["started_at"]


def trial_wall(trial: dict, tune_started: float) -> float:
    return trial["finished_at"] - launched_at(trial, tune_started)


def trial_work(trial: dict) -> float:
    """The work a trial's runs timed: from its outcomes (completed) or its last intermediate
    records (stopped by ASHA)."""
    if trial["status"] != "completed":
        return stopped_work(trial)
    return sum(seed_work(o)[k] for o in trial["per_seed"].values() for k in PHASES)


def summarise(
    trials: list[dict],
    objective: str,
    direction: str,
    wall_s: float,
    concurrency: int,
    tune_started: float,
) -> dict:
    done = [t for t in trials if t["status"] == "completed" and objective in t["objectives"]]
    pick = min if direction == "minimize" else max
    best = pick((t["objectives"][objective] for t in done), default=float("nan"))
    tokens = sum(int(t.get("trained_tokens") or 0) for t in trials)
    wall = work = steps_val_eval = steps_eval = 0.0
    phases = dict.fromkeys(PHASES, 0.0)
    stopped = [t for t in trials if t["status"] == "stopped" and t.get("finished_at")]
    stopped_wall = sum(trial_wall(t, tune_started) for t in stopped)
    stopped_busy = sum(trial_work(t) for t in stopped)
    # the part of it before Tune's trial start: fresh processes' start-up
    startup = sum(t["started_at"] - launched_at(t, tune_started) for t in trials
                  if t.get("finished_at"))  # fmt: skip
    for t in done:
        wall += trial_wall(t, tune_started)
        work += trial_work(t)
        for outcome in t["per_seed"].values():
            w = seed_work(outcome)
            for k in phases:
                phases[k] += w[k]
            steps_val_eval += w["steps_s"] + w["validation_s"] + w["eval_s"]
            steps_eval += w["steps_s"] + w["eval_s"]
    all_wall, all_work = wall + stopped_wall, work + stopped_busy
    # where it sits: per trial on a reused process, and the rest per fresh process
    ended = done + stopped
    fresh = [t for t in ended if (t.get("process") or {}).get("fresh")]
    warm = [t for t in ended if t not in fresh]
    warm_over = sum(trial_wall(t, tune_started) - trial_work(t) for t in warm)
    per_warm = warm_over / len(warm) if warm else 0.0
    per_fresh = (
        (all_wall - all_work - warm_over - per_warm * len(fresh)) / len(fresh) if fresh else 0.0
    )
    over_per_trial = (all_wall - all_work) / len(ended) if ended else float("nan")
    return {
        "trials": len(trials),
        "completed": len(done),
        "best": best,
        "tokens": tokens,
        # every trial that ended, ASHA-stopped ones included
        "ray_overhead_share": (all_wall - all_work) / all_wall if all_wall else float("nan"),
        "ray_overhead_share_completed": (wall - work) / wall if wall else float("nan"),
        # the same share with trials timed from Tune's trial start (fresh processes' start-up
        # not counted): the figure earlier notes reported
        "ray_overhead_share_from_trial_start": (all_wall - startup - all_work)
        / (all_wall - startup)
        if all_wall
        else float("nan"),
        "fresh_process_startup_s": startup,
        "fresh_processes": sum(bool((t.get("process") or {}).get("fresh")) for t in trials),
        "ray_overhead_s_per_trial": (all_wall - all_work) / (len(done) + len(stopped))
        if done or stopped
        else float("nan"),
        "non_training_share": (wall - steps_val_eval) / wall if wall else float("nan"),
        "non_training_share_validation_as_overhead": (wall - steps_eval) / wall
        if wall
        else float("nan"),
        "warm_overhead_s_per_trial": per_warm,
        "warm_overhead_share": warm_over / sum(trial_wall(t, tune_started) for t in warm)
        if warm
        else float("nan"),
        "fresh_overhead_s_per_process": per_fresh,
        # overhead <= 10% of trial time <=> work >= 9x overhead, trial by trial on average
        "work_s_per_trial_for_target": 9 * over_per_trial,
        "work_s_per_trial": all_work / len(ended) if ended else float("nan"),
        "slot_use": all_work / (wall_s * concurrency) if wall_s else float("nan"),
        "trial_wall_s": wall / len(done) if done else float("nan"),
        "all_trials_wall_s": all_wall,
        "all_trials_work_s": all_work,
        "work_s_by_phase": {k: round(v, 2) for k, v in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="search_spaces/demo.yaml")
    parser.add_argument("--search-trials", type=int, default=5)
    parser.add_argument("--out", default=None, help="sweep storage (default: a temp dir)")
    parser.add_argument(
        "--runners",
        choices=["both", "in_process"],
        default="both",
        help="both: also run the grid with a worker group per trial (the baseline runner)",
    )
    parser.add_argument(
        "--token-scale",
        type=int,
        default=1,
        help="train every trial K times the space's token budget (ASHA's grace period scaled "
        "alike): how the overhead share falls as trials get longer",
    )
    args = parser.parse_args()
    if args.token_scale < 1:
        parser.error(f"--token-scale: expected an integer >= 1, got {args.token_scale}")

    from hybridft.sweep.tune import run_sweep

    base = yaml.safe_load(Path(args.space).read_text())
    objective = base["objectives"][0]["name"]
    direction = base["objectives"][0]["direction"]
    root = Path(args.out or tempfile.mkdtemp(prefix="sweep-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    n_grid = len(SHARES) * len(LRS)
    contenders = [("grid", True, n_grid, "auto"), ("asha_tpe", False, args.search_trials, "auto")]
    if args.runners == "both":
        contenders.append(("grid_worker_group", True, n_grid, "worker_group"))
    figures = {}
    for label, grid, trials, runner in contenders:
        path = write_space(base, root / f"{label}.yaml", grid, trials, runner, args.token_scale)
        t0 = time.perf_counter()
        result = run_sweep(
            path, sweep_name=label, storage_dir=root, tracking_uri=tracking, verbose=0
        )
        wall = time.perf_counter() - t0
        figures[label] = {
            **summarise(
                result.trials,
                objective,
                direction,
                result.wall_s,
                result.max_concurrent,
                result.extra["tune_started"],
            ),
            "wall_s": wall,
            "max_concurrent": result.max_concurrent,
        }
        print(f"{label}: {json.dumps(figures[label])}", flush=True)
    grid, search = figures["grid"], figures["asha_tpe"]
    floor = import_floor(search["max_concurrent"])
    print(f"import_floor: {json.dumps(floor)}", flush=True)
    actor = ray_actor_floor(search["max_concurrent"])
    print(f"ray_actor_floor: {json.dumps(actor)}", flush=True)

    out = {
        "objective": objective,
        "token_scale": args.token_scale,
        "tokens_per_trial": int(base["budget"]["tokens"]) * args.token_scale,
        "grid_best": grid["best"],
        "search_best": search["best"],
        # how much worse the search's best is than the grid's (objective units; 100x for a
        # score in [0, 1] reads as points), and relative to the grid's best
        "gap": (search["best"] - grid["best"]) * (1 if direction == "minimize" else -1),
        "gap_relative": abs(search["best"] - grid["best"]) / max(abs(grid["best"]), 1e-12),
        "token_ratio": search["tokens"] / max(grid["tokens"], 1),
        "wall_ratio": search["wall_s"] / max(grid["wall_s"], 1e-9),
        # the figure the target is about: the search a user runs, at the demo's trial length,
        # each fresh process's start-up counted as overhead
        "ray_overhead_share": search["ray_overhead_share"],
        "ray_overhead_share_grid": grid["ray_overhead_share"],
        "ray_overhead_share_search": search["ray_overhead_share"],
        "ray_overhead_share_grid_from_trial_start": grid["ray_overhead_share_from_trial_start"],
        "ray_overhead_share_search_from_trial_start": search["ray_overhead_share_from_trial_start"],
        "import_floor_s": floor["wall_s"],
        "import_floor_cpu_s": floor["cpu_s"],
        "import_floor_share_grid": grid["fresh_processes"]
        * floor["wall_s"]
        / grid["all_trials_wall_s"],
        "import_floor_share_search": search["fresh_processes"]
        * floor["wall_s"]
        / search["all_trials_wall_s"],
        # where the overhead sits (see the module doc)
        "warm_overhead_s_per_trial_grid": grid["warm_overhead_s_per_trial"],
        "warm_overhead_s_per_trial_search": search["warm_overhead_s_per_trial"],
        "warm_overhead_share_search": search["warm_overhead_share"],
        "fresh_overhead_s_per_process_grid": grid["fresh_overhead_s_per_process"],
        "fresh_overhead_s_per_process_search": search["fresh_overhead_s_per_process"],
        "work_s_per_trial_search": search["work_s_per_trial"],
        "work_s_per_trial_for_target_search": search["work_s_per_trial_for_target"],
        "work_s_per_trial_grid": grid["work_s_per_trial"],
        "work_s_per_trial_for_target_grid": grid["work_s_per_trial_for_target"],
        "ray_actor_floor_s": actor["wall_s"],
        "ray_actor_floor_share_search": search["fresh_processes"]
        * actor["wall_s"]
        / search["all_trials_wall_s"],
        "ray_actor_floor_share_grid": grid["fresh_processes"]
        * actor["wall_s"]
        / grid["all_trials_wall_s"],
        "non_training_share_grid": grid["non_training_share"],
        "slot_use_grid": grid["slot_use"],
        "targets": {
            "gap_max": "1 point (0.01 of a score)",
            "token_ratio_max": 0.4,
            "ray_overhead_share_max": 0.1,
        },
    }
    if "grid_worker_group" in figures:
        wg = figures["grid_worker_group"]
        out["worker_group_grid"] = {
            "ray_overhead_share": wg["ray_overhead_share"],
            "non_training_share": wg["non_training_share"],
            "trial_wall_s": wg["trial_wall_s"],
            "best": wg["best"],
        }
        # the same grid, same machine, this run: wall time with worker groups / in process
        out["grid_wall_worker_group_over_in_process"] = wg["wall_s"] / max(grid["wall_s"], 1e-9)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
