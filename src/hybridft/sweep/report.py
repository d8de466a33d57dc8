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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hybridft.data.reader import read_examples
from hybridft.data.sources import load_eval_sets, read_source
from hybridft.errors import UserError
from hybridft.evaluate.job import evaluate_on_job_hardware
from hybridft.registry.client import Registry
from hybridft.registry.gates import evaluate_gate, promote
from hybridft.registry.policy import load_policy
from hybridft.registry.registration import evaluate_run, register_version
from hybridft.runtime import ensure_ray
from hybridft.specs import JobSpec
from hybridft.sweep.guard import guard
from hybridft.sweep.params import DUPLICATE_OF
from hybridft.sweep.record import SWEEP_FILE, read_trials
from hybridft.sweep.report_evidence import majority_baseline, measure_evidence, val_curves
from hybridft.sweep.report_html import ReportData, render
from hybridft.sweep.report_plan import (
    ARMS,
    DEMO_DIRECTIONS,
    LABEL_SIZES,
    SHARE,
    PlanInputs,
    plan_runs,
    started_from,
)
from hybridft.sweep.report_runs import SCORES, ReportRunners, train_runs, write_atomic
from hybridft.sweep.space import SearchSpace, load_space
from hybridft.sweep.stats import decide, pareto_front
from hybridft.sweep.tune import max_concurrent_trials
from hybridft.train import schedulable_capacity

REPORT_DIR = "report"
MARGIN = 0.03  # the smallest target-score difference worth acting on (accuracy points)


def best_hybrid(trials: list[dict[str, Any]], objective: str, direction: str) -> dict[str, Any]:
    """The completed trial with the best ``objective`` among true hybrids (0 < share < 1)."""
    done = [t for t in trials if t.get("status") == "completed" and objective in t["objectives"]]
    hybrids = [t for t in done if 0.0 < float(t["params"].get(SHARE, 0.5)) < 1.0]
    pool = hybrids or done
    if not pool:
        raise UserError("report: the sweep has no completed trial to take a configuration from")
    sign = -1.0 if direction == "minimize" else 1.0
    return max(pool, key=lambda t: sign * float(t["objectives"][objective]))


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
    directions: Sequence[str] = DEMO_DIRECTIONS,
    margin: float = MARGIN,
    evidence_seeds: int | None = None,
) -> Path:
    """Train and evaluate the arms and the evidence runs, decide (or say inconclusive), write
    ``report/report.html`` and ``report.json``."""

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
    train_rows = list(_target_rows(space.base_job, target))
    inputs = PlanInputs(
        base_job=space.base_job, best_params=best["params"], tokens=space.budget.tokens,
        sweep_name=info["name"], seeds=seeds, eval_examples=eval_examples, target=target,
        n_target=len(train_rows), label_sizes=label_sizes, directions=tuple(directions),
        evidence_seeds=evidence_seeds, label_probs=score == "prob",
    )  # fmt: skip
    plan = plan_runs(inputs, lambda job, n: subset_file(job, target, n, out_dir / "data"))

    ensure_ray()
    width = max(
        1,
        max_concurrent_trials(
            space.base_job.scaling, schedulable_capacity(), None, space.in_process
        ),  # fmt: skip
    )
    context = {"registry": registry, "info": info, "target": target, "score": score}
    runners = ReportRunners(space.base_job, width, space.in_process)
    try:  # 1) runs from the base, 2) runs from another run's model (the instruction-tuned start)
        done = train_runs([r for r in plan if not r.start_from], runners, runs_dir, width,
                           context, on_event)  # fmt: skip
        second = [
            replace(r, job=started_from(r, done[r.start_from]["model_dir"]))
            for r in plan
            if r.start_from
        ]
        done.update(train_runs(second, runners, runs_dir, width, context, on_event))
    finally:
        runners.close()

    rows = [done[r.name] for r in plan]
    arms = [r for r in rows if r["arm"] in ARMS]
    decision = decide_or_hold(arms, rows, train_rows, target, space, score, margin)
    evidence = measure_evidence(
        rows, directions, margin, space.budget.tokens,
        _base_heldout(space.base_job, arms, eval_examples)
        if "heldout_clusters" in directions
        else None,
        seed=space.seed,
    )  # fmt: skip
    # the label-efficiency curve: subsets from both starts, all labels at the arms' budget
    efficiency = [
        r
        for r in rows
        if r["arm"] in ("base_start", "it_start")
        and (r["labels"] is not None or r["tokens"] == space.budget.tokens)
    ] + [r for r in arms if r["arm"] == "sft_only"]
    importances, notes = _importances(info), [f"Target score: {SCORES[score]} on {target}."]
    if not importances:
        notes.append("Parameter importances need at least two completed trials with varied values.")
    data = ReportData(
        sweep=info["name"], space_file=info["space_file"], objective=objective, arms=arms,
        efficiency=[{**r, "arm": "base_start" if r["arm"] == "sft_only" else r["arm"],
                     "labels": r["labels"] or len(train_rows)} for r in efficiency],
        verdict=decision["verdict"], trials=trials, pareto=_pareto(space, trials),
        importances=importances, directions=space.directions, objectives=space.objective_names,
        best_params=best["params"], notes=notes, evidence=[e.to_json() for e in evidence],
        guard=decision["guard"],
    )  # fmt: skip
    if register_as and decision["guard"]["inconclusive"]:
        data.registration = {"version": None, "gate": "not run",
                             "detail": "inconclusive: nothing registered"}  # fmt: skip
        on_event("report: inconclusive, so nothing is registered")
    elif register_as:
        data.registration = _register(
            registry, rows, decision["verdict"]["recommended"], register_as, policy_path, on_event
        )
    page = render(data, out_dir / "report.html")
    doc = {
        "sweep": info["name"], "objective": objective, "best_trial": best["trial_id"],
        "score": score, "target": target, "margin": margin, "best_params": best["params"],
        "verdict": data.verdict, "guard": data.guard, "majority_baseline": decision["majority"],
        "arm_scores": decision["arm_scores"], "evidence": data.evidence,
        "arms": [_public(r) for r in arms], "efficiency": [_public(r) for r in data.efficiency],
        "runs": [_public(r) for r in rows], "pareto": data.pareto, "importances": importances,
        "registration": data.registration, "report": str(page),
    }  # fmt: skip
    write_atomic(out_dir / "report.json", json.dumps(doc, indent=2, default=str))
    if info.get("mlflow_run_id"):
        registry.client.log_artifact(info["mlflow_run_id"], str(page))
        registry.client.log_artifact(info["mlflow_run_id"], str(out_dir / "report.json"))
    return page


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A run's row for report.json: per-row score lists stay in each run's eval.json."""
    return {k: v for k, v in row.items() if not k.endswith(("per_example", "_rows"))}


def decide_or_hold(
    arms: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    train_rows: list[Any],
    target: str,
    space: SearchSpace,
    score: str,
    margin: float,
) -> dict[str, Any]:
    """The verdict over the arms, unless the undertrained guard holds it: then "inconclusive",
    the reasons, and the budget that would resolve it."""
    scores = {arm: [r["per_example"] for r in arms if r["arm"] == arm] for arm in ARMS}
    seeds = max(1, len(scores["sft_only"]))
    cost = {arm: sum(r["trained_tokens"] for r in arms if r["arm"] == arm) / seeds for arm in ARMS}
    verdict = decide(scores, cost, seed=space.seed)
    n_rows = len(scores["sft_only"][0])
    test = [e.label or e.completion for e in _eval_rows(space.base_job, target)[:n_rows]]
    majority = majority_baseline([e.label or e.completion for e in train_rows], test, score)
    held = guard(scores, majority, val_curves(rows, ARMS), space.budget.tokens, margin,
                 verdict.differences, seed=space.seed)  # fmt: skip
    out = verdict.to_json()
    out["inconclusive"] = held.inconclusive
    if held.inconclusive:  # each reason says what would resolve it (a budget, more seeds)
        out["text"] = "Inconclusive: " + " ".join(held.reasons) + " Nothing is recommended."
        out["recommended"] = None
    arm_scores = {
        arm: {"mean": iv.mean, "ci95": [iv.low, iv.high]} for arm, iv in verdict.intervals.items()
    }
    return {"verdict": out, "guard": held.to_json(), "majority": majority,
            "arm_scores": arm_scores}  # fmt: skip


def _base_heldout(job: JobSpec, arms: list[dict[str, Any]], rows: int) -> list[float] | None:
    """The base model's per-row scores on the held-out clusters' tasks the arms were scored on,
    the same ``rows`` per task (FLAN's comparison: the instruction-tuned model against the model
    it started from)."""
    it_rows = [r for r in arms if r["arm"] == "instruction_only" and r.get("heldout_tasks")]
    if not it_rows:
        return None
    tasks = it_rows[0]["heldout_tasks"]
    every = [e for rows in load_eval_sets(job.data).values() for e in rows]
    sets = {t: [e for e in every if e.task == t] for t in tasks}
    base = it_rows[0]["base_dir"]
    scored = evaluate_on_job_hardware(
        job.scaling, base, sets, max_examples=rows, max_new_tokens=job.eval.max_new_tokens
    )
    return [x for t in tasks for x in scored.tasks[t].per_example]


def _pareto(space: SearchSpace, trials: list[dict[str, Any]]) -> list[int]:
    if len(space.objectives) < 2:
        return []
    points = [t for t in trials if t.get("status") == "completed"]
    names = space.objective_names
    front = pareto_front([[t["objectives"][n] for n in names] for t in points], space.directions)
    return [trials.index(points[i]) for i in front]


def _eval_rows(job: JobSpec, target: str) -> list[Any]:
    return read_source(job.data, target, job.data.eval[target])


def _target_rows(job: JobSpec, target: str) -> Any:
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
    """Register the recommended arm's seed-0 run, evaluated in full first (label probabilities,
    calibration: what the gates read); propose it as @candidate when the gate passes."""
    row = next(r for r in rows if r["arm"] == arm and r["seed"] == 0 and r["labels"] is None)
    on_event(f"report: evaluating {row['run_name']} in full before registering it")
    evaluate_run(row["run_dir"], registry.tracking_uri, full=True)
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
