"""``hybridft report SWEEP``: instruction only vs SFT only vs the best hybrid, with numbers.

From a finished sweep the report takes the best hybrid configuration (0 < instruction share < 1)
and derives the two pure arms from it (share 0: SFT only; share 1: instruction only; everything
else equal), so the three arms differ in the schedule alone and train the same token budget
(matched compute). Each arm is trained with every report seed and fully evaluated (target score
per test row, held-out clusters, forgetting, calibration); SFT only and the best hybrid are also
trained on 50 / 200 / 1000 / all labelled target examples for the labelled-data efficiency curve.

Runs go through ``train.run`` (Ray Train), two at a time on a 2-CPU machine (as many as the
cluster holds), each logged as an MLflow run tagged with its arm, seed and label count; a run
already finished in the report directory is reused, so an interrupted report resumes. The verdict
(``sweep.stats.decide``) bootstraps seeds and paired test rows. The recommended arm's seed-0 run
is registered and, when the gate passes, proposed as ``@candidate``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hybridft.errors import UserError
from hybridft.specs import JobSpec
from hybridft.sweep.params import DUPLICATE_OF
from hybridft.sweep.report_html import ReportData, render
from hybridft.sweep.report_runs import ReportRunners

ARMS = ("sft_only", "instruction_only", "best_hybrid")
SHARE = "instruction_share"
LABEL_SIZES = (50, 200, 1000)
REPORT_DIR = "report"
RUN_RESULT = "report_run.json"


def best_hybrid(trials: list[dict[str, Any]], objective: str, direction: str) -> dict[str, Any]:
    """The completed trial with the best ``objective`` among true hybrids (0 < share < 1)."""
    done = [t for t in trials if t.get("status") == "completed" and objective in t["objectives"]]
    hybrids = [t for t in done if 0.0 < float(t["params"].get(SHARE, 0.5)) < 1.0]
    pool = hybrids or done
    if not pool:
        raise UserError("report: the sweep has no completed trial to take a configuration from")
    sign = -1.0 if direction == "minimize" else 1.0
    return max(pool, key=lambda t: sign * float(t["objectives"][objective]))


def arm_params(best: dict[str, Any], arm: str) -> dict[str, Any]:
    params = dict(best)
    if arm == "sft_only":
        params[SHARE] = 0.0
    elif arm == "instruction_only":
        params[SHARE] = 1.0
    return params


def target_source(job: JobSpec) -> str:
    targets = [n for n in job.data.eval if job.data.sources[n].kind == "task"]
    if not targets:
        raise UserError(f"{job.source_file}: data.eval names no target task (a kind: task source)")
    return targets[0]


def subset_file(job: JobSpec, source: str, n: int, out_dir: Path) -> Path:
    """The first ``n`` rows of the target source's files (in file order), as one JSONL file.

    The rows are validated as the source's format first (a bad row is an error here, as in
    training); the demo generator writes rows in random order, so a prefix is a random sample.
    """
    out = out_dir / f"{source}-{n}.jsonl"
    if out.is_file():
        return out
    rows = list(_target_rows(job, source))
    if len(rows) < n:
        raise UserError(f"report: source {source} has {len(rows)} rows, fewer than {n}")
    keep: dict[str, set[int]] = {}
    for example in rows[:n]:
        keep.setdefault(example.file, set()).add(example.line)
    lines = []
    for file, numbers in keep.items():
        with open(file, encoding="utf-8") as fh:
            lines += [ln.rstrip("\n") for i, ln in enumerate(fh, start=1) if i in numbers]
    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _job(space: Any, params: dict[str, Any], seed: int, name: str, eval_examples: int) -> JobSpec:
    from hybridft.sweep.params import apply_params

    job = apply_params(space.base_job, params, total_tokens=space.budget.tokens)
    ev = job.eval.model_copy(update={"max_examples": eval_examples})
    return job.model_copy(update={"seed": seed, "name": name, "eval": ev})


def _train_runs(
    plan: list[tuple[str, int, int | None, JobSpec]],
    runners: ReportRunners,
    runs_dir: Path,
    width: int,
    registry: Any,
    info: dict[str, Any],
    target: str,
    score: str,
    on_event: Any,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every planned run (finished ones are reused), ``width`` at a time;
    each logged to MLflow with its arm, seed and label count. Rows by run name."""
    import ray

    done: dict[str, dict[str, Any]] = {}
    pending = []
    for arm, seed, labels, job in plan:
        cached = runs_dir / job.name / RUN_RESULT
        if cached.is_file():
            row = json.loads(cached.read_text())
            doc = json.loads((Path(row["run_dir"]) / "eval.json").read_text())
            done[job.name] = {**row, **summarise_run(doc, target, score)}
        else:
            pending.append((arm, seed, labels, job))
    on_event(f"report: {len(plan)} runs ({len(done)} reused), {width} at a time")
    inflight: dict[Any, tuple[str, int, int | None, JobSpec, float]] = {}
    while pending or inflight:
        while pending and len(inflight) < width:
            arm, seed, labels, job = pending.pop(0)
            ref = runners.launch(job, job.name, str(runs_dir))
            inflight[ref] = (arm, seed, labels, job, time.time())
        ready, _ = ray.wait(list(inflight), num_returns=1)
        arm, seed, labels, job, started = inflight.pop(ready[0])
        runners.release(ready[0])
        result = ray.get(ready[0])
        tags = {"hybridft.kind": "report-run", "hybridft.sweep": info["name"],
                "hybridft.arm": arm, "hybridft.seed": str(seed),
                "hybridft.labels": "all" if labels is None else str(labels)}  # fmt: skip
        run_id = _log(registry, job, result, tags)
        doc = json.loads((Path(result.run_dir) / "eval.json").read_text())
        row = {
            "arm": arm, "seed": seed, "labels": labels, "run_name": job.name,
            "run_dir": str(result.run_dir), "mlflow_run_id": run_id,
            "trained_tokens": int(result.final_metrics.get("trained_tokens", 0)),
            "wall_s": float(result.wall_s), **summarise_run(doc, target, score),
        }  # fmt: skip
        (runs_dir / job.name / RUN_RESULT).write_text(json.dumps(row, indent=2))
        done[job.name] = row
        on_event(f"  {job.name}: target {row['target_score']:.3f} ({time.time() - started:.0f}s)")
    return done


def _log(registry: Any, job: JobSpec, result: Any, tags: dict[str, str]) -> str:
    """Log a finished report run (training + eval) to MLflow, tagged with its arm."""
    from hybridft.registry.tracking import log_eval, log_train_run

    record = log_train_run(registry, job, result)
    eval_path = Path(result.run_dir) / "eval.json"

    class _Scored:  # log_eval reads flat_metrics() from the saved eval
        def __init__(self, doc: dict[str, Any]) -> None:
            self.doc = doc

        def flat_metrics(self) -> dict[str, float]:
            return _flat_from_json(self.doc)

    log_eval(registry, record, _Scored(json.loads(eval_path.read_text())), eval_path)
    registry.set_tags(record.mlflow_run_id, tags)
    return record.mlflow_run_id


def _flat_from_json(doc: dict[str, Any]) -> dict[str, float]:
    """The flat eval metrics of a saved eval.json (same keys as EvalResult.flat_metrics)."""
    from hybridft.evaluate.run import EvalResult, TaskScore

    tasks = {name: TaskScore(**t) for name, t in doc["tasks"].items()}
    result = EvalResult(
        doc["model_dir"], tasks, doc["examples_per_s"], leakage=doc.get("leakage"),
        graph=doc.get("graph"),
    )  # fmt: skip
    return result.flat_metrics()


SCORES = {
    "accuracy": "label accuracy (exact match where the task has no labels)",
    "prob": "calibrated probability of the gold label",
}


def summarise_run(doc: dict[str, Any], target: str, score: str = "accuracy") -> dict[str, Any]:
    """The report's numbers for one run, from its eval.json (``score``: a key of SCORES)."""
    flat = _flat_from_json(doc)
    task = doc["tasks"][target]
    if score == "prob":
        if not task.get("per_example_prob"):
            raise UserError(f"report --score prob: task {target} has no label probabilities")
        per = list(task["per_example_prob"])
    else:
        per = list(task["per_example"])
    return {
        "per_example": per,
        "target_score": sum(per) / len(per) if per else 0.0,
        "heldout_score": (doc.get("graph") or {}).get("heldout_score"),
        "forgetting": (doc.get("graph") or {}).get("forgetting"),
        "ece": flat.get("eval/ece"),
    }


def build_report(
    sweep_dir: str | Path,
    seeds: int = 3,
    label_sizes: tuple[int, ...] = LABEL_SIZES,
    eval_examples: int = 200,
    register_as: str | None = None,
    policy_path: str | Path | None = None,
    tracking_uri: str | None = None,
    on_event: Any = print,
    score: str = "accuracy",
) -> Path:
    """Train and evaluate the arms, decide, write ``report/report.html`` and ``report.json``."""
    import ray

    from hybridft.registry.client import Registry
    from hybridft.sweep.record import read_trials
    from hybridft.sweep.space import load_space
    from hybridft.sweep.stats import decide, pareto_front
    from hybridft.sweep.tune import SWEEP_FILE, max_concurrent_trials
    from hybridft.train.run import ensure_ray

    if score not in SCORES:
        raise UserError(f"report --score {score!r}: expected one of {', '.join(SCORES)}")
    sweep_dir = Path(sweep_dir).resolve()
    info_path = sweep_dir / SWEEP_FILE
    if not info_path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no {SWEEP_FILE})")
    info = json.loads(info_path.read_text())
    space = load_space(info["space_file"])
    if SHARE not in space.parameters:
        raise UserError(
            f"{info['space_file']}: parameters: the report compares schedules and needs "
            f"{SHARE} (0 = SFT only, 1 = instruction only) in the space"
        )
    objective, direction = space.objective_names[0], space.directions[0]
    trials = read_trials(sweep_dir)
    best = best_hybrid(trials, objective, direction)
    out_dir = sweep_dir / REPORT_DIR
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(tracking_uri or info.get("tracking_uri"))
    target = target_source(space.base_job)
    n_target = sum(1 for _ in _target_rows(space.base_job, target))
    sizes = [n for n in label_sizes if n < n_target]

    plan: list[tuple[str, int, int | None, JobSpec]] = []
    for arm in ARMS:
        for seed in range(seeds):
            name = f"{info['name']}-{arm}-s{seed}"
            plan.append(
                (
                    arm,
                    seed,
                    None,
                    _job(space, arm_params(best["params"], arm), seed, name, eval_examples),
                )
            )
    for arm in ("sft_only", "best_hybrid"):
        for n in sizes:
            job = _job(
                space,
                arm_params(best["params"], arm),
                0,
                f"{info['name']}-{arm}-n{n}",
                eval_examples,
            )
            sub = subset_file(job, target, n, out_dir / "data")
            src = job.data.sources[target].model_copy(update={"paths": [str(sub)]})
            data = job.data.model_copy(update={"sources": {**job.data.sources, target: src}})
            plan.append((arm, 0, n, job.model_copy(update={"data": data})))

    ensure_ray()
    width = max(
        1,
        max_concurrent_trials(space.base_job.scaling, ray.cluster_resources(), None, True)
        if space.in_process
        else max_concurrent_trials(space.base_job.scaling, ray.cluster_resources()),
    )
    runners = ReportRunners(space.base_job, width, space.in_process)
    try:
        done = _train_runs(plan, runners, runs_dir, width, registry, info, target, score,
                           on_event)  # fmt: skip
    finally:
        runners.close()

    rows = [done[job.name] for *_, job in plan]
    arms = [r for r in rows if r["labels"] is None]
    efficiency = [r for r in rows if r["labels"] is not None] + [
        {**r, "labels": None}
        for r in arms
        if r["arm"] in ("sft_only", "best_hybrid") and r["seed"] == 0
    ]
    scores = {arm: [r["per_example"] for r in arms if r["arm"] == arm] for arm in ARMS}
    cost = {
        arm: sum(r["trained_tokens"] for r in arms if r["arm"] == arm) / max(1, seeds)
        for arm in ARMS
    }
    verdict = decide(scores, cost, seed=space.seed)
    points = [t for t in trials if t.get("status") == "completed"]
    pareto = []
    if len(space.objectives) >= 2:
        names = space.objective_names
        front = pareto_front(
            [[t["objectives"][n] for n in names] for t in points], space.directions
        )
        pareto = [trials.index(points[i]) for i in front]
    importances, notes = _importances(info), [f"Target score: {SCORES[score]} on {target}."]
    if not importances:
        notes.append("Parameter importances need at least two completed trials with varied values.")
    data = ReportData(
        sweep=info["name"], space_file=info["space_file"], objective=objective, arms=arms,
        efficiency=[{**r, "labels": r["labels"] if r["labels"] is not None else n_target} for r in efficiency],
        verdict=verdict.to_json(), trials=trials, pareto=pareto, importances=importances,
        directions=space.directions, objectives=space.objective_names, best_params=best["params"],
        notes=notes,
    )  # fmt: skip
    if register_as:
        data.registration = _register(
            registry, rows, verdict.recommended, register_as, policy_path, on_event
        )
    page = render(data, out_dir / "report.html")
    doc = {
        "sweep": info["name"], "objective": objective, "best_trial": best["trial_id"],
        "score": score, "target": target,
        "best_params": best["params"], "verdict": verdict.to_json(),
        "arms": [{k: v for k, v in r.items() if k != "per_example"} for r in arms],
        "efficiency": [{k: v for k, v in r.items() if k != "per_example"} for r in data.efficiency],
        "pareto": pareto, "importances": importances, "registration": data.registration,
        "report": str(page),
    }  # fmt: skip
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2, default=str))
    if info.get("mlflow_run_id"):
        registry.client.log_artifact(info["mlflow_run_id"], str(page))
        registry.client.log_artifact(info["mlflow_run_id"], str(out_dir / "report.json"))
    return page


def _target_rows(job: JobSpec, target: str) -> Any:
    from hybridft.data.reader import read_examples

    spec = job.data.sources[target]
    return read_examples(spec.paths, fmt=spec.format, source=target, labels=spec.labels)


def _importances(info: dict[str, Any]) -> dict[str, float]:
    """Optuna's fANOVA importances of the first objective over the study's completed trials."""
    import optuna

    try:
        study = optuna.load_study(
            study_name=info["study"]["name"], storage=info["study"]["storage"]
        )
        complete = [
            t
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and DUPLICATE_OF not in t.user_attrs
        ]  # a duplicate point was never trained: counted once, by its twin
        if len(complete) < 2:
            return {}
        from optuna.importance import FanovaImportanceEvaluator

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
        trained = optuna.create_study(directions=study.directions)
        trained.add_trials(complete)
        target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
        return {
            k: float(v)
            for k, v in optuna.importance.get_param_importances(
                trained, target=target, evaluator=FanovaImportanceEvaluator(seed=0)
            ).items()  # seeded: the same sweep always reads the same importances
        }
    except (RuntimeError, ValueError, KeyError, ZeroDivisionError):
        return {}


def _register(
    registry: Any,
    rows: list[dict[str, Any]],
    arm: str,
    name: str,
    policy_path: str | Path | None,
    on_event: Any,
) -> dict[str, Any]:
    """Register the recommended arm's seed-0 run; propose it as @candidate when the gate passes."""
    from hybridft.pipeline import register_version
    from hybridft.registry.gates import evaluate_gate, promote
    from hybridft.registry.policy import load_policy

    row = next(r for r in rows if r["arm"] == arm and r["seed"] == 0 and r["labels"] is None)
    version = register_version(row["run_dir"], name, policy_path, registry.tracking_uri)
    out: dict[str, Any] = {"version": f"{name}@{version.version}", "run": row["run_name"]}
    if policy_path is None:
        return {**out, "gate": "not run", "detail": "no policy given"}
    policy = load_policy(policy_path)
    verdict = evaluate_gate(registry, policy, name, version.version)
    failed = [f"{c.check}: {c.detail}" for c in verdict.checks if not c.passed]
    if failed:
        on_event(f"report: {name}@{version.version} registered; gate fails: {'; '.join(failed)}")
        return {**out, "gate": "fails", "detail": "; ".join(failed)}
    move = promote(registry, policy, name, version.version, "candidate", reason="sweep report")
    detail = "proposed as @candidate" if move.moved else f"promotion refused: {move.reason}"
    return {**out, "gate": "passes", "detail": detail}
