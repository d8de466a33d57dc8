"""Where the decision report's runs train: warm in-process runner actors, or worker groups.

Each report run trains one arm (or one labelled subset) once and is evaluated in full; a run
interrupted with its report resumes by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybridft import atomic
from hybridft.errors import UserError
from hybridft.evaluate.run import EvalResult, TaskScore
from hybridft.registry.tracking import log_eval, log_train_run
from hybridft.specs import JobSpec
from hybridft.sweep.objectives import forget_eval, full_eval
from hybridft.sweep.report_plan import PlannedRun
from hybridft.train import InProcessRunner, runner_options, train_job

RUN_RESULT = "report_run.json"


def train_and_evaluate(job: JobSpec, run_name: str, runs_dir: str, in_process: bool) -> Any:
    """Train one report run (resuming an interrupted one) and evaluate it (writes eval.json)."""
    resume = (Path(runs_dir) / run_name / "run.json").is_file() or (
        Path(runs_dir) / "ray" / run_name
    ).is_dir()
    result = train_job(
        job, run_name=run_name, resume=resume, output_dir=runs_dir, in_process=in_process
    )
    full_eval(job, result)  # writes the run's eval.json
    forget_eval(result)
    return result


class ReportRunners:
    """Where report runs train: ``width`` warm in-process runner actors (as the space's trials
    run), else each run in a zero-CPU task whose Ray Train worker group holds the CPUs.
    ``close()`` frees the actors' CPUs (a failed report must not keep them)."""

    def __init__(self, job: JobSpec, width: int, in_process: bool) -> None:
        import ray

        self.idle: list[Any] = []
        self.busy: dict[Any, Any] = {}
        self.task = None
        if in_process:
            scaling = job.scaling
            options = runner_options(
                scaling.resources_per_worker, scaling.use_gpu, scaling.max_failures
            )
            actor = ray.remote(**options)
            self.idle = [actor(InProcessRunner).remote() for _ in range(width)]
        else:
            self.task = ray.remote(num_cpus=0, max_retries=0)(train_and_evaluate)

    def launch(self, job: JobSpec, name: str, runs_dir: str) -> Any:
        if self.task is not None:
            return self.task.remote(job, name, runs_dir, False)
        runner = self.idle.pop()
        ref = runner.call.remote(train_and_evaluate, job, name, runs_dir, True)
        self.busy[ref] = runner
        return ref

    def release(self, ref: Any) -> None:
        if ref in self.busy:
            self.idle.append(self.busy.pop(ref))

    def close(self) -> None:
        import ray

        for runner in [*self.idle, *self.busy.values()]:
            ray.kill(runner)
        self.idle, self.busy = [], {}


def _finished(path: Path, on_event: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A finished run's recorded row and its eval.json; ``None`` when the run must be done
    (again): never recorded, or its files unreadable (a run killed mid-write by an older
    version, a disk that filled up). Its training resumes from its own checkpoints."""
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
        return row, json.loads((Path(row["run_dir"]) / "eval.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        on_event(f"  {path.parent.name}: its result is unreadable ({type(exc).__name__}): redone")
        return None


def train_runs(
    plan: Sequence[PlannedRun],
    runners: ReportRunners,
    runs_dir: Path,
    width: int,
    context: dict[str, Any],
    on_event: Any,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every planned run (finished ones are reused), ``width`` at a time;
    each logged to MLflow with its arm, seed and label count. Rows by run name.

    ``context``: registry, sweep info, target task and score."""
    import ray

    target, score = context["target"], context["score"]
    done: dict[str, dict[str, Any]] = {}
    pending = []
    for planned in plan:
        cached = _finished(runs_dir / planned.name / RUN_RESULT, on_event)
        if cached is not None:
            row, doc = cached
            done[planned.name] = {**row, **summarise_run(doc, target, score)}
        else:
            pending.append(planned)
    on_event(f"report: {len(plan)} runs ({len(done)} reused), {width} at a time")
    inflight: dict[Any, tuple[PlannedRun, float]] = {}
    while pending or inflight:
        while pending and len(inflight) < width:
            planned = pending.pop(0)
            ref = runners.launch(planned.job, planned.name, str(runs_dir))
            inflight[ref] = (planned, time.time())
        ready, _ = ray.wait(list(inflight), num_returns=1)
        planned, started = inflight.pop(ready[0])
        runners.release(ready[0])
        result = ray.get(ready[0])
        labels = "all" if planned.labels is None else str(planned.labels)
        tags = {"hybridft.kind": "report-run", "hybridft.sweep": context["info"]["name"],
                "hybridft.arm": planned.group, "hybridft.seed": str(planned.seed),
                "hybridft.labels": labels, "hybridft.variant": planned.variant}  # fmt: skip
        run_id = _log(context["registry"], planned.job, result, tags)
        doc = json.loads((Path(result.run_dir) / "eval.json").read_text())
        row = {
            "arm": planned.group, "seed": planned.seed, "labels": planned.labels,
            "tokens": planned.tokens, "variant": planned.variant, "run_name": planned.name,
            "run_dir": str(result.run_dir), "model_dir": str(result.model_dir),
            "base_dir": str(result.base_dir), "mlflow_run_id": run_id,
            "trained_tokens": int(result.final_metrics.get("trained_tokens", 0)),
            "wall_s": float(result.wall_s),
            "val_curve": [(h["trained_tokens"], h["val_loss"], h.get("stage")) for h in
                          result.history if "val_loss" in h and "trained_tokens" in h],
        }  # fmt: skip
        write_atomic(runs_dir / planned.name / RUN_RESULT, json.dumps(row, indent=2))
        done[planned.name] = {**row, **summarise_run(doc, target, score)}
        on_event(
            f"  {planned.name}: target {done[planned.name]['target_score']:.3f} "
            f"({time.time() - started:.0f}s)"
        )
    return done


def write_atomic(path: Path, text: str) -> None:
    """A file the report resumes from: whole or absent, never half-written."""
    atomic.write_text(path, text)


def _log(registry: Any, job: JobSpec, result: Any, tags: dict[str, str]) -> str:
    """Log a finished report run (training + eval) to MLflow, tagged with its arm."""
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
    graph = doc.get("graph") or {}
    return {
        "per_example": per,
        "target_score": sum(per) / len(per) if per else 0.0,
        "heldout_score": graph.get("heldout_score"),
        "heldout_tasks": graph.get("heldout_tasks") or [],
        "heldout_rows": graph.get("heldout_rows") or [],
        "forgetting": graph.get("forgetting"),
        "forgetting_rows": graph.get("forgetting_rows") or [],
        "ece": flat.get("eval/ece"),
    }
