"""Training: a job spec trained on Ray Train (DDP or DeepSpeed ZeRO, LoRA or full), checkpointed
and resumable; in process for processes that train run after run (sweep trials, report arms).

The face of the package: code outside ``train/`` imports these names from ``hybridft.train``.
They load on first use (``faces.lazy_face``): importing the package costs nothing, and torch, Ray
and DeepSpeed load only when training does.
"""

from hybridft.faces import lazy_face

_EXPORTS = {
    "train_job": "run:run",  # spec -> TrainResult (the entry point)
    "TrainResult": "run",
    "new_run_name": "run",
    "check_resources": "run",
    "WorkerPlan": "plan",
    "Capacity": "resources",
    "as_count": "resources",
    "describe": "resources",
    "schedulable_capacity": "resources",
    "trials_that_fit": "resources",
    "worker_group_refusal": "resources",
    "worker_resources": "resources",
    "InProcessRunner": "in_process",
    "runner_options": "in_process",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_face(__name__, _EXPORTS)
