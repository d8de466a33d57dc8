"""One-worker runs inside the calling process: Ray Train's local mode, with checkpoints kept.

Why: a worker group costs each run two fresh processes (the Train controller and the worker),
and each imports Ray Train, torch and transformers again: measured here, ~12 s of a 25 s demo
run on 2 cores, every run. A process that trains run after run (a reused Tune trial actor, a
report's runner actor) pays the imports once and then starts a run in well under a second.

``TorchTrainer`` with ``ScalingConfig(num_workers=0)`` is Ray Train's local mode: the training
function runs in this process with ``ray.train.report`` / ``get_checkpoint`` / ``get_context``
working as on a worker, which is all our loop uses. Local mode alone keeps only the last
checkpoint in memory and calls no callbacks; ``InProcessSession`` adds what ``train.run`` needs:

* every reported checkpoint copied under the run's storage folder (``checkpoint_000001``, ...)
  and listed in ``checkpoints.json`` with its metrics (written after the copy, atomically), so a
  run killed with its process resumes from its last complete checkpoint, by run name, like a
  worker-group run;
* old checkpoints deleted as Ray Train's checkpoint manager deletes them with ``num_to_keep``
  and the loop's ``keep_score`` (``checkpoints_to_drop``): listed out of the index first, deleted
  after, and never the last one, which a resume starts from;
* ``get_checkpoint()`` returns the latest persisted checkpoint (also after a metrics-only report);
* the run's ``UserCallback``s are called after each report (a sweep relays records to Tune).

What it gives up: a worker group restarts failed workers itself (``scaling.max_failures``);
here a failure ends the run, and whoever called it starts it again to resume it by name: a
sweep's Tune restarts the trial (``FailureConfig``), a report's runner actor is restarted by Ray
and its call retried (``runner_options``); otherwise ``run(..., resume=True)`` by name. It
needs ``scaling.num_workers: 1``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.train.v2._internal.execution.train_fn_utils import (
    LocalTrainFnUtils,
    set_train_fn_utils,
)

from hybridft import atomic
from hybridft.train.checkpoint import KEEP_SCORE

INDEX_FILE = "checkpoints.json"  # the in-process run's checkpoints, in report order
WORKER_GROUP_MARK = "checkpoint_manager_snapshot.json"  # written by a worker-group run


def is_in_process_run(storage: Path) -> bool:
    return (storage / INDEX_FILE).is_file()


def is_worker_group_run(storage: Path) -> bool:
    return (storage / WORKER_GROUP_MARK).is_file()


class InProcessSession(LocalTrainFnUtils):
    """Local mode's session, with persisted checkpoints and callbacks (see the module doc)."""

    def __init__(
        self, storage: Path, run_name: str, callbacks: list[Any], num_to_keep: int | None = None
    ) -> None:
        super().__init__(experiment_name=run_name)
        self.storage = storage
        self.callbacks = callbacks
        self.num_to_keep = num_to_keep  # None: every checkpoint
        self.reported: list[tuple[Any, dict[str, Any]]] = []  # (checkpoint, metrics)
        index = storage / INDEX_FILE
        if index.is_file():  # resuming: the checkpoints a killed run left complete
            from ray.train import Checkpoint

            for entry in json.loads(index.read_text()):
                ckpt = Checkpoint.from_directory(str(storage / entry["dir"]))
                self.reported.append((ckpt, entry["metrics"]))

    # the loop passes metrics and a checkpoint only (Ray's other report options are unused)
    def report(self, metrics: dict[str, Any], checkpoint: Any = None, **_: Any) -> None:
        from ray.train import Checkpoint

        persisted = None
        if checkpoint is not None:
            name = f"checkpoint_{self._next_number():06d}"
            partial = self.storage / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(checkpoint.path, partial)
            shutil.rmtree(self.storage / name, ignore_errors=True)  # a copy the index never got
            os.replace(partial, self.storage / name)
            persisted = Checkpoint.from_directory(str(self.storage / name))
            self.reported.append((persisted, dict(metrics)))
            self._drop_old()
        super().report(metrics, persisted)
        for callback in self.callbacks:
            callback.after_report(run_context=None, metrics=[metrics], checkpoint=persisted)

    def get_checkpoint(self) -> Any:
        return self.reported[-1][0] if self.reported else None

    def _next_number(self) -> int:
        """After the last checkpoint's number (kept always): numbers are never reused."""
        if not self.reported:
            return 1
        return int(Path(self.reported[-1][0].path).name.rsplit("_", 1)[1]) + 1

    def _drop_old(self) -> None:
        """Index the checkpoints kept, then delete the others (a kill in between leaves only
        unlisted folders: a resume reads the index)."""
        scores = [metrics.get(KEEP_SCORE) for _, metrics in self.reported]
        drop = checkpoints_to_drop(scores, self.num_to_keep)
        dropped = [self.reported[i][0] for i in sorted(drop)]
        self.reported = [entry for i, entry in enumerate(self.reported) if i not in drop]
        self._write_index()
        for ckpt in dropped:
            shutil.rmtree(ckpt.path, ignore_errors=True)

    def _write_index(self) -> None:
        entries = [
            {"dir": Path(ckpt.path).name, "metrics": _jsonable(metrics)}
            for ckpt, metrics in self.reported
        ]
        atomic.write_json(self.storage / INDEX_FILE, entries, indent=1)


class InProcessRunner:
    """Body of a Ray actor that runs function after function in its own, warm process: the first
    call pays the imports (Ray Train, torch, transformers), later ones start at once. Create it
    with the worker's resources (``ray.remote(**options)(InProcessRunner)``); the functions call
    ``train.run(in_process=True)``."""

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def runner_options(
    resources_per_worker: dict[str, float], use_gpu: bool, max_failures: int = 0
) -> dict[str, Any]:
    """``ray.remote`` options holding one worker's resources. With ``max_failures``, Ray starts
    a runner whose process died again and retries the call it was running, up to that many
    times: a call that trains resumes its run by name from the last checkpoint."""
    extra = {k: v for k, v in resources_per_worker.items() if k not in ("CPU", "GPU")}
    return {
        "num_cpus": resources_per_worker.get("CPU", 1.0),
        "num_gpus": resources_per_worker.get("GPU", 1.0 if use_gpu else 0.0),
        "resources": extra,
        "max_restarts": max_failures,
        "max_task_retries": max_failures,
    }


def checkpoints_to_drop(scores: list[float | None], num_to_keep: int | None) -> set[int]:
    """Which checkpoints (by report order) to delete, as Ray Train's checkpoint manager does with
    ``num_to_keep`` and a score to maximise: all but the ``num_to_keep`` highest (ties: the later
    ranks higher), never the latest. A checkpoint without a score (an index written before
    scores existed) is never deleted."""
    if num_to_keep is None:
        return set()
    ranked = sorted((score, i) for i, score in enumerate(scores) if score is not None)
    return {i for _, i in ranked[: max(0, len(ranked) - num_to_keep)]} - {len(scores) - 1}


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, bool | int | float | str)}


def fit_in_process(
    train_fn: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    storage: Path,
    run_name: str,
    callbacks: list[Any],
    num_to_keep: int | None = None,
) -> InProcessSession:
    """Run ``train_fn(config)`` here through Ray Train's local mode; returns the session, whose
    ``reported`` lists every persisted checkpoint still kept (``num_to_keep``, as Ray Train's
    ``CheckpointConfig``; None: all) with its metrics."""
    import torch
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    session = InProcessSession(storage, run_name, callbacks, num_to_keep)

    def train_with_session(cfg: dict[str, Any]) -> None:
        set_train_fn_utils(session)  # in place of local mode's in-memory session
        train_fn(cfg)

    threads = torch.get_num_threads()  # the loop sets the job's; the process gets its own back
    try:
        TorchTrainer(
            train_with_session,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=0),
        ).fit()
    finally:
        set_train_fn_utils(None)
        torch.set_num_threads(threads)
    return session
