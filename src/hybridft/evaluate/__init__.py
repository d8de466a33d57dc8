"""Evaluation: generation-based scores per task on held-out splits, calibration, the leakage
shield, the task graph; ``job`` scores a job's run on its spec's splits (``eval.json``)."""

from hybridft.faces import lazy_face

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

__getattr__ = lazy_face(__name__, _EXPORTS)
