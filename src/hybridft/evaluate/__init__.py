"""Evaluation: generation-based scores per task on held-out splits, calibration, the leakage
shield, the task graph; ``job`` scores a job's run on its spec's splits (``eval.json``)."""

from importlib import import_module
from typing import Any

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours (run: torch)
_EXPORTS = {
    "evaluate_on_job_hardware": "job",
    "evaluate_spec": "job",
    "graph_scores": "job",
    "LeakageReport": "leakage",
    "check_example_leakage": "leakage",
    "check_leakage": "leakage",
    "EvalResult": "run",
    "TaskScore": "run",
    "evaluate_model": "run",
    "write_eval": "run",
    "eval_table": "table",
    "TaskGraph": "task_graph",
    "load_task_graph": "task_graph",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
