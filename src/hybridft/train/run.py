"""``train.run(spec) -> TrainResult``: a job spec trained on Ray Train, with no Tune in sight.

Order matters: everything that can fail cheaply (spec, data, resources) fails before a worker starts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridft.errors import RunFailed, UserError
from hybridft.model import base_of, is_random_init, load_tokenizer
from hybridft.runtime import ensure_ray, ray_log_level
from hybridft.specfile import line_of
from hybridft.specs import JobSpec, ScalingSpec, TrainingSpec
from hybridft.train.checkpoint import HISTORY_FILE, KEEP_SCORE
from hybridft.train.devices import process_group_backend
from hybridft.train.in_process import fit_in_process, is_in_process_run, is_worker_group_run
from hybridft.train.loop import train_loop
from hybridft.train.plan import Fault, WorkerPlan, stage_plans
from hybridft.train.prepare import prepare, validation_rows, write_mixture_report
from hybridft.train.resources import schedulable_capacity, worker_group_refusal, worker_resources


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path
    model_dir: Path
    base_dir: Path
    stage_dirs: dict[str, Path]
    history: list[dict[str, Any]]
    fingerprints: dict[str, str]
    mixture: dict[str, Any]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def check_resources(scaling: ScalingSpec, spec_file: str) -> None:
    """Fail before fit() when the worker group can never be scheduled (Ray would retry forever):
    not on the live nodes, nor on the nodes the cluster's autoscaler can launch."""

    refusal = worker_group_refusal(
        schedulable_capacity(), worker_resources(scaling), scaling.num_workers
    )
    if refusal is None:
        return
    key, problem = refusal
    line = line_of(spec_file, tuple(key.split("."))) if spec_file else None
    if spec_file and line is None:  # resources_per_worker left to its default
        line = line_of(spec_file, ("scaling", "num_workers"))
    where = f"{spec_file}:{line}: " if spec_file else ""
    raise UserError(f"{where}{key}: {problem}")


def checkpoint_config(training: TrainingSpec, n_stages: int) -> Any:
    """Ray Train's retention: ``training.keep_checkpoints`` latest, besides every stage's end.

    The loop scores each checkpoint (``checkpoint.keep_score``) so that stage ends outrank every other
    checkpoint, then by step: keeping the top ``keep + n_stages`` keeps every stage model the run
    returns (``_finish`` copies them at the end) and at least the ``keep`` latest; Ray never
    deletes the latest, which a resume starts from. None: every checkpoint is kept.
    """
    from ray.train import CheckpointConfig

    keep = checkpoints_to_keep(training, n_stages)
    if keep is None:
        return CheckpointConfig(num_to_keep=None)
    return CheckpointConfig(
        num_to_keep=keep, checkpoint_score_attribute=KEEP_SCORE, checkpoint_score_order="max"
    )


def checkpoints_to_keep(training: TrainingSpec, n_stages: int) -> int | None:
    """How many checkpoints a run keeps at most (see ``checkpoint_config``); None: all."""
    keep = training.keep_checkpoints
    return None if keep is None else keep + n_stages


def new_run_name(job: str) -> str:
    """Unique per start: a new run never resumes an old one by accident."""
    return f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run(
    spec: JobSpec,
    run_name: str | None = None,
    *,
    resume: bool = False,
    controller_failure_limit: int = -1,
    output_dir: str | None = None,
    callbacks: list[Any] | None = None,
    data_gate: Callable[[dict[str, str]], None] | None = None,
    in_process: bool = False,
) -> TrainResult:
    """Train ``spec`` on Ray Train.

    Args:
        spec: the loaded job spec.
        run_name: the name to use; with ``resume`` it names the run to continue.
        resume: continue ``run_name`` from its last checkpoint (a stage done is not redone).
        controller_failure_limit: Ray Train controller failures tolerated (-1: Ray's default).
        output_dir: overrides ``spec.output_dir`` (e.g. a shared mount on a cluster).
        callbacks: Ray Train callbacks for the run (e.g. a caller relaying reported metrics).
        data_gate: Called with ``{source: fingerprint}`` of exactly the rows about to be trained
            on, before any worker starts; it raises to refuse them (e.g. unapproved data).
        in_process: run the one worker in this process (Ray Train's local mode, checkpoints
            persisted: see ``train.in_process``) instead of a worker group: no controller or
            worker process to start. For processes that train run after run (sweep trials).
    """
    import ray
    from ray.train.torch import TorchConfig

    # Train V2's configs (what ray.train names when V2 is on, as it is here)
    from ray.train.v2.api.config import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    t0 = time.perf_counter()
    out_root = Path(output_dir or spec.output_dir).resolve()
    if resume and not run_name:
        raise UserError("--resume needs the run name to continue (see `hybridft runs`)")
    run_name = run_name or new_run_name(spec.name)
    run_dir = out_root / run_name
    storage = out_root / "ray" / run_name
    if resume and not storage.exists():
        raise UserError(f"--resume {run_name}: no such run under {out_root}")
    if not resume and storage.exists():
        raise UserError(f"run {run_name!r} already exists under {out_root}; pass --resume")

    if in_process:
        _check_in_process(spec, storage, resume)
    elif resume and is_in_process_run(storage):
        raise UserError(f"--resume {run_name}: it was started in process; resume it the same way")
    run_dir.mkdir(parents=True, exist_ok=True)

    base_dir = base_of(spec.model, spec.seed, on_event=print)  # built once, then cached
    if spec.method.type == "lora" and is_random_init(spec.model):
        print(
            f"warning: {spec.source_file or spec.name}: method.type lora on model.base tiny "
            "(random weights): an adapter on a random base trains almost nothing; use "
            "model.base: pretrained (or a real model)"
        )
    tokenizer = load_tokenizer(base_dir)
    prepared = prepare(
        spec.data, spec.stages, spec.training, tokenizer, spec.scaling.num_workers, spec.seed
    )
    if data_gate is not None:
        data_gate({n: s.fingerprint for n, s in prepared.sources.items()})
    ensure_ray()
    check_resources(spec.scaling, spec.source_file)
    mixture_path = write_mixture_report(prepared, spec.stages, run_dir / "mixture.json")
    validation = validation_rows(spec, tokenizer)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))

    plan = WorkerPlan(
        stages=stage_plans(
            spec, prepared.stages, put=lambda rows: rows if in_process else ray.put(rows)
        ),
        training=spec.training,
        lora=spec.method.lora,
        strategy=spec.scaling.strategy,
        seed=spec.seed,
        base_dir=str(base_dir),
        base_files=None if in_process else _base_files(Path(base_dir)),
        validation=validation,
        fault=Fault.parse(os.environ.get("HYBRIDFT_FAULT", "")),
        prepare_s=time.perf_counter() - t0,
    )
    config = {"plan": plan}
    started = _Started(spec, run_name, run_dir, Path(base_dir), prepared, mixture_path, t0)
    if in_process:
        keep = checkpoints_to_keep(spec.training, len(spec.stages))
        session = fit_in_process(train_loop, config, storage, run_name, callbacks or [], keep)
        return _finish(started, session.reported, session.get_checkpoint())
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend=process_group_backend(spec.scaling.use_gpu)),
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=spec.scaling.resources_per_worker,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(out_root / "ray"),
            failure_config=FailureConfig(
                max_failures=spec.scaling.max_failures,
                controller_failure_limit=controller_failure_limit,
            ),
            checkpoint_config=checkpoint_config(spec.training, len(spec.stages)),
            worker_runtime_env={"env_vars": _worker_env(spec.scaling)},
            callbacks=callbacks,
            # its INFO lines (resources requested, worker group started, each checkpoint's
            # path) are debugging detail: users see our progress lines and its warnings
            logging_config=LoggingConfig(log_level=ray_log_level()),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _run_failed(run_name, exc) from exc
    if result.error is not None:
        raise _run_failed(run_name, result.error) from result.error
    return _finish(started, result.best_checkpoints or [], result.checkpoint)


@dataclass(frozen=True)
class _Started:
    """A run as it stood when ``fit`` started: what ``_finish`` reports it with."""

    spec: JobSpec
    run_name: str
    run_dir: Path
    base_dir: Path
    prepared: Any
    mixture_path: Path
    t0: float
    prepared_at: float = field(default_factory=time.perf_counter)


def _finish(
    started: _Started, reported: list[tuple[Any, dict[str, Any]]], last: Any
) -> TrainResult:
    """Copy the stage models and the final model out of the run's checkpoints; the result."""

    run_name, run_dir = started.run_name, started.run_dir
    prepared, t0, prepared_at = started.prepared, started.t0, started.prepared_at

    fitted_at = time.perf_counter()
    stage_dirs: dict[str, Path] = {}
    for checkpoint, metrics in reported:  # the checkpoint reported at each stage's end
        if metrics.get("stage_end"):
            dest = run_dir / "stages" / metrics["stage_end"]
            _copy_model(checkpoint, dest)
            stage_dirs[metrics["stage_end"]] = dest / "model"
    final = run_dir / "final"
    _copy_model(last, final)
    history = [json.loads(x) for x in (final / HISTORY_FILE).read_text().splitlines() if x.strip()]
    done = time.perf_counter()
    return TrainResult(
        run_name=run_name,
        run_dir=run_dir,
        model_dir=final / "model",
        base_dir=started.base_dir,
        stage_dirs=stage_dirs,
        history=history,
        fingerprints={n: s.fingerprint for n, s in prepared.sources.items()},
        mixture=json.loads(started.mixture_path.read_text()),
        wall_s=done - t0,
        extra={
            "read_reports": prepared.read_reports,
            "timings": run_timings(
                history, prepared_at - t0, fitted_at - prepared_at, done - fitted_at
            ),
        },
    )


def run_timings(
    history: list[dict[str, Any]], prepare_s: float, fit_s: float, collect_s: float
) -> dict[str, float]:
    """Where a run's wall time went. ``fit_s`` is ``trainer.fit()``; inside it the loop times
    its own work (``loop.PHASES``: model set-up, training steps, validation, checkpoint writes);
    what is left of ``fit_s`` is Ray's (``ray_s``: controller and worker start-up, reporting,
    persisting checkpoints, shutdown). Our phases are summed over the loop's attempts (a
    restarted worker group times its new attempt from its checkpoint's figures)."""
    last = history[-1] if history else {}
    ours = {
        "setup_s": float(last.get("time/setup_s", 0.0)),
        "steps_s": sum(float(h.get("window_s", 0.0)) for h in history),
        "validation_s": float(last.get("time/validation_s", 0.0)),
        "checkpoint_s": float(last.get("time/checkpoint_s", 0.0)),
    }
    return {
        "prepare_s": prepare_s,  # data read, rendered, mixed, packed (driver side)
        **ours,
        "collect_s": collect_s,  # stage and final models copied out of the checkpoints
        "fit_s": fit_s,
        "ray_s": max(0.0, fit_s - sum(ours.values())),
    }


def _check_in_process(spec: JobSpec, storage: Path, resume: bool) -> None:

    if spec.scaling.num_workers != 1:
        line = line_of(spec.source_file, ("scaling", "num_workers")) if spec.source_file else None
        where = f"{spec.source_file}:{line}: " if spec.source_file else ""
        raise UserError(
            f"{where}scaling.num_workers: expected 1 for a run in process (a worker group "
            f"trains more than one worker), got {spec.scaling.num_workers}"
        )
    if resume and is_worker_group_run(storage):
        raise UserError(
            f"--resume {storage.name}: it was started with a worker group; resume it the same way"
        )


BASE_SHIP_LIMIT = 512 * 1024 * 1024  # bases under this travel to nodes through the object store


def _run_failed(run_name: str, exc: BaseException) -> RunFailed:
    """The worker's own error (the last line of its traceback), and how to resume."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = next(
        (ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)),
        lines[-1] if lines else type(exc).__name__,
    )
    return RunFailed(
        f"training run {run_name} failed: {cause[:300]} "
        f"(resume from its last checkpoint: --run-name {run_name} --resume; --debug for the trace)"
    )


def _base_files(base_dir: Path) -> Any:
    """The base model's files in the object store, for nodes that cannot see ``base_dir``."""
    import ray

    files = [p for p in base_dir.rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) > BASE_SHIP_LIMIT:
        return None  # large bases: put model.base on shared storage (cluster/README.md)
    return ray.put({str(p.relative_to(base_dir)): p.read_bytes() for p in files})


def _worker_env(scaling: ScalingSpec) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if scaling.strategy != "ddp" and not scaling.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator (gloo process group)
    return env


def _copy_model(checkpoint: Any, dest: Path) -> None:
    """The exported model of a stage-end checkpoint (``model/``, ``adapter/``, the history) to
    ``dest``: copied beside it, then renamed into place, so ``dest`` is never half-written and
    the previous copy stays until the new one is whole. The optimizer and training state stay
    in the checkpoint."""

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with checkpoint.as_directory() as src:
            for name in ("model", "adapter"):
                if (Path(src) / name).is_dir():
                    shutil.copytree(Path(src) / name, tmp / name)
            shutil.copy2(Path(src) / HISTORY_FILE, tmp / HISTORY_FILE)
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
