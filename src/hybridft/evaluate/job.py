"""A job's evaluation: its model scored on its spec's eval splits, on its kind of device.

``evaluate_spec`` is what ``hybridft eval`` (through ``registry.registration.evaluate_run``),
the sweep's objectives and the report run: the leakage shield against the job's training rows,
scores, calibration, robustness, and with a task graph the held-out-cluster score and forgetting.
It writes ``eval.json`` + ``eval/`` in the run directory and knows nothing of MLflow.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.progress import Progress

from hybridft import runtime
from hybridft.data.records import Example
from hybridft.data.sources import load_eval_sets, read_source, training_examples
from hybridft.evaluate import run
from hybridft.evaluate.model_index import write_model_index
from hybridft.evaluate.run import EvalResult, task_groups, write_eval
from hybridft.evaluate.task_graph import forgetting, heldout_tasks, load_task_graph
from hybridft.specs import JobSpec, ScalingSpec


def evaluate_on_job_hardware(
    scaling: ScalingSpec, model_dir: str | Path, eval_sets: dict[str, list[Example]], **kwargs: Any
) -> EvalResult:
    """``evaluate_model(model_dir, eval_sets, **kwargs)`` on the kind of device the job trains on.

    A GPU job (``scaling.use_gpu``) is scored in a Ray task holding one GPU, on CUDA: on a
    cluster this process is the driver on the head pod, which has no GPU. A CPU job is scored
    here, in this process, as before. ``on_progress`` (a callback into this process) is not sent
    to the task.
    """
    # looked up on their modules when called, so a test can stand in for the scorer and for Ray
    if not scaling.use_gpu:
        return run.evaluate_model(model_dir, eval_sets, **kwargs)
    import ray  # heavy: Ray only for GPU jobs (a CPU job is scored in this process)

    runtime.ensure_ray()
    kwargs.pop("on_progress", None)
    task = ray.remote(num_gpus=1)(run.evaluate_model)
    return ray.get(task.remote(str(model_dir), eval_sets, device="cuda", **kwargs))


def evaluate_spec(
    spec: JobSpec,
    run_dir: str | Path,
    model_dir: str | Path,
    stage_dirs: dict[str, str],
    fingerprints: dict[str, str],
    progress: bool = True,
) -> EvalResult:
    """Score ``model_dir`` on the spec's eval splits; write ``run_dir``/eval.json + eval/.

    No MLflow here: ``registry.registration.evaluate_run`` logs the result to the run.
    """
    sets = load_eval_sets(spec.data)
    calibration = {n: read_source(spec.data, n, p) for n, p in spec.eval.calibration.items()}
    train = training_examples(spec) if spec.eval.leakage else None
    out_dir = Path(run_dir) / "eval"
    total = sum(len(rows) for _, rows in task_groups(sets, spec.eval.max_examples).values())
    # a GPU job is scored in a Ray task (evaluate_on_job_hardware): no bar to advance from here
    bar = Progress(transient=True) if progress and not spec.scaling.use_gpu else None
    with bar or nullcontext():
        task = bar.add_task("evaluating", total=total) if bar else None
        result = _evaluate(
            spec,
            model_dir,
            sets,
            on_progress=(lambda n: bar.advance(task, n)) if bar and task is not None else None,
            labels={n: s.labels for n, s in spec.data.sources.items() if s.labels},
            calibration_sets=calibration,
            phrasings=spec.eval.phrasings,
            train_examples=train,
            artifacts_dir=out_dir,
            n_bins=spec.eval.calibration_bins,
            target_sources={n for n in sets if spec.data.sources[n].kind == "task"} or None,
            label_probs=spec.eval.label_probs,
        )
    if spec.eval.task_graph:
        result.graph = graph_scores(spec, stage_dirs, result, train)
    metrics = result.flat_metrics()
    index = write_model_index(out_dir / "model-index.yaml", spec.name, metrics, fingerprints)
    result.artifacts["model_index"] = str(index)
    write_eval(result, Path(run_dir) / "eval.json")
    return result


def graph_scores(
    spec: JobSpec, stage_dirs: dict[str, str], result: EvalResult, train: list[Example] | None
) -> dict[str, Any]:
    """Held-out-cluster score (FLAN: no task of the cluster trained) and forgetting.

    Forgetting compares the instruction tasks' scores of the model before the last stage (the
    previous stage's model) with the final model's; it needs two or more stages.
    """
    graph = load_task_graph(spec.eval.task_graph or "")
    known = set(graph.tasks)
    rows = train if train is not None else training_examples(spec)
    trained = sorted({e.task or e.source for e in rows} & known)
    # a source holding one task is scored under the source's name: the graph knows the task's
    scores = {
        (t.task or name): t.score for name, t in result.tasks.items() if (t.task or name) in known
    }
    held = [t for t in heldout_tasks(graph, trained) if t in scores]
    out: dict[str, Any] = {
        "task_graph": spec.eval.task_graph,
        "trained_tasks": trained,
        "heldout_tasks": held,
        "heldout_score": sum(scores[t] for t in held) / len(held) if held else None,
        # per-row scores behind the figures (the report's intervals resample them)
        "heldout_rows": [x for t in held for x in _per_example(result, t)],
        "forgetting": None,
    }
    instruction = [t for t in scores if graph.attr(t, "kind") == "instruction"]
    if len(spec.stages) >= 2 and instruction:
        before_dir = stage_dirs.get(spec.stages[-2].name)
        if before_dir:
            sets = {
                t: [e for rows in load_eval_sets(spec.data).values() for e in rows if e.task == t]
                for t in instruction
            }
            before = _evaluate(spec, before_dir, sets)
            report = forgetting({t: s.score for t, s in before.tasks.items()}, scores, instruction)
            out["forgetting"] = report["mean_drop"]
            out["forgetting_per_task"] = report["per_task"]
            out["forgetting_before"] = spec.stages[-2].name
            out["forgetting_rows"] = [
                b - a
                for t in instruction
                for b, a in zip(before.tasks[t].per_example, _per_example(result, t), strict=True)
            ]
    return out


def _per_example(result: EvalResult, task: str) -> list[float]:
    """A task's per-row scores, whether it is scored under its own or its source's name."""
    for name, t in result.tasks.items():
        if (t.task or name) == task:
            return list(t.per_example)
    return []


def _evaluate(
    spec: JobSpec, model_dir: str | Path, sets: dict[str, list[Example]], **extra: Any
) -> EvalResult:
    """``evaluate_on_job_hardware`` with the job's evaluation budget."""
    return evaluate_on_job_hardware(
        spec.scaling,
        model_dir,
        sets,
        max_examples=spec.eval.max_examples,
        max_new_tokens=spec.eval.max_new_tokens,
        **extra,
    )
