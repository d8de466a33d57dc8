"""What a trial produces: the objective names a search space may ask for, and how each is measured.

``OBJECTIVES`` is the one table: a search space naming anything else fails validation before any
trial. The evaluator side adds its measures here (``heldout_score`` and ``forgetting`` of the
evaluation issue join when the evaluator produces them per run); a function gets the trial's job
spec and its ``TrainResult`` and returns one number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hybridft.specs import JobSpec

# Reported by the training loop while a run trains: what early stopping (ASHA) may compare.
INTERMEDIATE_METRICS = frozenset({"val_loss", "loss"})
# Measures that need ``data.validation`` in the trial's job.
NEEDS_VALIDATION = frozenset({"val_loss"})
# Measures that need a target task (a ``kind: task`` source) under ``data.eval``.
NEEDS_TARGET_EVAL = frozenset({"target_score"})


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
    from hybridft.pipeline import load_eval_sets

    targets = {n: p for n, p in spec.data.eval.items() if spec.data.sources[n].kind == "task"}
    return load_eval_sets(spec.data.model_copy(update={"eval": targets}))


def _target_score(spec: JobSpec, result: Any) -> float:
    """Headline score (label accuracy, else exact match) of the final model on the target tasks."""
    from hybridft.evaluate.run import evaluate_model

    scored = evaluate_model(
        result.model_dir,
        target_eval_sets(spec),
        max_examples=spec.eval.max_examples,
        max_new_tokens=spec.eval.max_new_tokens,
    )
    return float(scored.headline)


OBJECTIVES: dict[str, Callable[[JobSpec, Any], float]] = {
    "target_score": _target_score,
    "val_loss": _val_loss,
    "trained_tokens": _trained_tokens,
    "wall_time_s": _wall_time_s,
}
PRODUCED_OBJECTIVES = frozenset(OBJECTIVES)


def measure(spec: JobSpec, result: Any, names: list[str]) -> dict[str, float]:
    """The named measures of one finished run (``names`` were validated against ``OBJECTIVES``)."""
    return {name: OBJECTIVES[name](spec, result) for name in names}
