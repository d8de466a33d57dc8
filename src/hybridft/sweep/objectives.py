"""What a trial produces: the objective names a search space may ask for, and how each is measured.

``OBJECTIVES`` is the one table: a search space naming anything else fails validation before any
trial. The evaluator side adds its measures here (``heldout_score`` and ``forgetting`` of the
evaluation issue join when the evaluator produces them per run); a function gets the trial's job
spec and its ``TrainResult`` and returns one number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from hybridft.data.sources import load_eval_sets
from hybridft.specs import JobSpec

# Reported by the training loop while a run trains: what early stopping (ASHA) may compare.
INTERMEDIATE_METRICS = frozenset({"val_loss", "loss"})
# Measures that need ``data.validation`` in the trial's job.
NEEDS_VALIDATION = frozenset({"val_loss"})
# Measures that need a target task (a ``kind: task`` source) under ``data.eval``.
NEEDS_TARGET_EVAL = frozenset({"target_score", "ece"})
# Measures that need ``eval.task_graph`` (and instruction tasks under ``data.eval``).
NEEDS_TASK_GRAPH = frozenset({"heldout_score", "forgetting"})


def _val_loss(spec: JobSpec, result: Any) -> float:
    """The validation loss at the run's last step (the loop validates at every stage end)."""
    values = [h["val_loss"] for h in result.history if "val_loss" in h]
    if not values:
        raise RuntimeError("the run reported no val_loss (data.validation is empty)")
    return float(values[-1])


def _trained_tokens(spec: JobSpec, result: Any) -> float:
    return float(result.final_metrics.get("trained_tokens", 0))


def _wall_time_s(spec: JobSpec, result: Any) -> float:
    """Wall time of the training run (data preparation, workers, checkpoints), not evaluation."""
    return float(result.wall_s)


def target_eval_sets(spec: JobSpec) -> dict[str, list[Any]]:
    """The held-out split of every target task (``kind: task`` sources under ``data.eval``)."""
    targets = {n: p for n, p in spec.data.eval.items() if spec.data.sources[n].kind == "task"}
    return load_eval_sets(spec.data.model_copy(update={"eval": targets}))


_EVALS: dict[str, Any] = {}  # run dir -> its full evaluation (one per run, shared by measures)
EVAL_SECONDS: dict[str, float] = {}  # run dir -> seconds its evaluation took


def full_eval(spec: JobSpec, result: Any) -> Any:
    """The run's full evaluation (``evaluate.job.evaluate_spec``: leakage, scores, calibration,
    task graph), written to the run directory's eval.json; computed once per run."""
    # heavy: torch + the scorer, loaded only where a run is evaluated (trial processes), not by
    # the sweep driver that validates spaces against OBJECTIVES
    from hybridft.evaluate.job import evaluate_spec

    key = str(result.run_dir)
    if key not in _EVALS:
        t0 = time.perf_counter()
        _EVALS[key] = evaluate_spec(
            spec,
            result.run_dir,
            result.model_dir,
            {k: str(v) for k, v in result.stage_dirs.items()},
            result.fingerprints,
            progress=False,
        )
        EVAL_SECONDS[key] = time.perf_counter() - t0
    return _EVALS[key]


def forget_eval(result: Any) -> float:
    """Drop a run's cached evaluation; the seconds it took (0 when it was never evaluated)."""
    _EVALS.pop(str(result.run_dir), None)
    return EVAL_SECONDS.pop(str(result.run_dir), 0.0)


def _target_score(spec: JobSpec, result: Any) -> float:
    """Mean score (label accuracy, else exact match) of the final model on the target tasks."""
    scored = full_eval(spec, result)
    targets = [n for n in spec.data.eval if spec.data.sources[n].kind == "task"]
    values = [scored.tasks[n].score for n in targets if n in scored.tasks]
    return float(statistics.fmean(values))


def _graph_value(key: str, why: str) -> Callable[[JobSpec, Any], float]:
    def value(spec: JobSpec, result: Any) -> float:
        graph = full_eval(spec, result).graph or {}
        if graph.get(key) is None:
            raise RuntimeError(f"{key} was not measured: {why}")
        return float(graph[key])

    return value


def _ece(spec: JobSpec, result: Any) -> float:
    flat = full_eval(spec, result).flat_metrics()
    if "eval/ece" not in flat:
        raise RuntimeError("ece was not measured: no classification task among the targets")
    return float(flat["eval/ece"])


OBJECTIVES: dict[str, Callable[[JobSpec, Any], float]] = {
    "target_score": _target_score,
    "heldout_score": _graph_value(
        "heldout_score", "every scored task's cluster was trained on (FLAN's held-out protocol)"
    ),
    "forgetting": _graph_value(
        "forgetting", "it needs two stages and instruction tasks under data.eval"
    ),
    "ece": _ece,
    "val_loss": _val_loss,
    "trained_tokens": _trained_tokens,
    "wall_time_s": _wall_time_s,
}
PRODUCED_OBJECTIVES = frozenset(OBJECTIVES)


def measure(spec: JobSpec, result: Any, names: list[str]) -> dict[str, float]:
    """The named measures of one finished run (``names`` were validated against ``OBJECTIVES``)."""
    return {name: OBJECTIVES[name](spec, result) for name in names}
