"""Training: a job spec trained on Ray Train (DDP or DeepSpeed ZeRO, LoRA or full), checkpointed
and resumable; in process for processes that train run after run (sweep trials, report arms).

The face of the package: code outside ``train/`` imports these names from ``hybridft.train``.
They load on first use (PEP 562): importing the package costs nothing, and torch, Ray and
DeepSpeed load only when training does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_job": ("hybridft.train.run", "run"),  # spec -> TrainResult (the entry point)
    "TrainResult": ("hybridft.train.run", "TrainResult"),
    "new_run_name": ("hybridft.train.run", "new_run_name"),
    "check_resources": ("hybridft.train.run", "check_resources"),
    "WorkerPlan": ("hybridft.train.plan", "WorkerPlan"),
    "schedulable_capacity": ("hybridft.train.resources", "schedulable_capacity"),
    "worker_resources": ("hybridft.train.resources", "worker_resources"),
    "worker_group_refusal": ("hybridft.train.resources", "worker_group_refusal"),
    "describe": ("hybridft.train.resources", "describe"),
    "as_count": ("hybridft.train.resources", "as_count"),
    "Capacity": ("hybridft.train.resources", "Capacity"),
    "trials_that_fit": ("hybridft.train.resources", "trials_that_fit"),
    "InProcessRunner": ("hybridft.train.in_process", "InProcessRunner"),
    "runner_options": ("hybridft.train.in_process", "runner_options"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hybridft.train' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
