"""The worker loop: one loop for every stage, method (LoRA / full) and strategy (DDP / ZeRO).

Runs inside Ray Train workers (``TorchTrainer``) from a ``WorkerPlan``. It knows nothing of Tune or
MLflow: it trains the planned rows stage by stage, reports metrics (with ``data.validation``, a
validation loss too) through ``ray.train.report`` and attaches a checkpoint every N steps and at
every stage end (``checkpoint.py``). A restarted worker group resumes at the exact row of the
mixture. Its phases, in order: ``start`` (fresh or resumed), ``run_stage`` for each stage left,
``train_step`` for each step, ``log_step`` and ``write_checkpoint`` when due.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridft.quiet import quiet_library_chatter
from hybridft.train.adapters import apply_policy, frozen_stays_base, rebuild, recipe_of
from hybridft.train.batches import Window, micro_batches, step_rows
from hybridft.train.checkpoint import read_checkpoint, write_checkpoint
from hybridft.train.devices import all_reduce_sum, allow_tf32_on_cuda
from hybridft.train.loss import micro_batch_loss
from hybridft.train.node_base import local_base_dir
from hybridft.train.packing import PackedRows, shift_loss_mask
from hybridft.train.plan import Fault, WorkerPlan
from hybridft.train.strategy import Engine, construction_config, make_engine
from hybridft.train.throughput import MatmulPeak, measure_matmul_peak, train_flops_per_token
from hybridft.train.weights import load_from_rank0, partitioned_construction

# Seconds of our own work inside trainer.fit(), in every record (cumulative): model set-up (load,
# adapters, the MFU peak), validation, checkpoint writes. Training steps are each record's
# window_s. What fit() takes beyond these is Ray's (train.run.run_timings).
PHASES = ("time/setup_s", "time/validation_s", "time/checkpoint_s")


@dataclass
class Worker:
    """One worker's fixed facts for the whole run."""

    plan: WorkerPlan
    rank: int
    world: int
    device: torch.device
    peak: MatmulPeak
    validation: PackedRows | None = None


@dataclass
class Progress:
    """What moves as the run trains: the loop state a checkpoint saves (``state``: stage, step,
    tokens, RNG, ...), the history of records and our phases' running seconds."""

    state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys((*PHASES, "time/steps_s"), 0.0)
    )
    ckpt_dir: Path | None = None  # the checkpoint this attempt resumed from


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def maybe_inject_fault(fault: Fault | None, rank: int, stage: int, step: int) -> None:
    """Fault drills (``HYBRIDFT_FAULT=rank:stage:step:marker``): SIGKILL this worker once.

    A real process death, not a simulated exception: Ray Train must notice the dead worker,
    restart the group and resume from the last checkpoint. The marker file makes it fire once.
    """
    if fault is None or (fault.rank, fault.stage, fault.step) != (rank, stage, step):
        return
    marker = Path(fault.marker)
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at stage {stage} step {step}\n")
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@functools.lru_cache(maxsize=8)
def matmul_peak(dtype: torch.dtype, threads: int, device: torch.device) -> float:
    """The MFU denominator, measured once per process, dtype, thread count and device (0.3 s
    each: a process that trains run after run, in process, measures it once), with ``threads``:
    the count the training step runs with."""
    return measure_matmul_peak(dtype, device=device, threads=threads)


def say(line: str) -> None:
    """One progress line to the worker's real stdout (Ray forwards it to the driver once).

    Ray Train patches ``print`` on workers into its logger, which echoed every line twice."""
    out = sys.__stdout__ or sys.stdout  # None only in a process started without one
    out.write(line + "\n")
    out.flush()


def quiet_train_logs() -> None:
    """Ray Train's per-report INFO line ("Reporting training result N: ...") is debug noise."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    quiet_library_chatter()


def _fetch(rows: Any) -> Any:
    """Rows by value (in process) or by Ray object ref."""
    import ray

    return rows if isinstance(rows, PackedRows) else ray.get(rows)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker): ``config["plan"]`` is the ``WorkerPlan``."""
    import ray.train
    import ray.train.torch

    quiet_train_logs()
    plan: WorkerPlan = config["plan"]
    torch.set_num_threads(plan.training.threads_per_worker)
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    allow_tf32_on_cuda(device)  # before the MFU peak is measured: it measures the same matmuls
    plan = plan.with_base_dir(local_base_dir(plan.base_dir, plan.base_files))
    dtype = torch.bfloat16 if plan.training.precision == "bf16" else torch.float32
    entered = time.perf_counter()
    worker = Worker(
        plan=plan,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=device,
        # the threads set above, kept for every step; raised per run if a window beats it
        peak=MatmulPeak(matmul_peak(dtype, torch.get_num_threads(), device)),
        validation=_fetch(plan.validation.rows) if plan.validation else None,
    )
    lm, progress = start(worker, ray.train.get_checkpoint())
    progress.timings["time/setup_s"] += time.perf_counter() - entered
    for s_idx in range(progress.state["stage"], len(plan.stages)):
        lm = run_stage(worker, progress, lm, s_idx)


def start(worker: Worker, checkpoint: Any) -> tuple[torch.nn.Module, Progress]:
    """Where this attempt starts: a fresh run, or this run's last checkpoint (its model on every
    rank, its history and its phases' running seconds)."""
    plan = worker.plan
    state: dict[str, Any] = {"stage": 0, "step": 0, "tokens": 0, "frozen_is_base": True}
    history: list[dict[str, Any]] = []
    blob: dict[str, Any] = {"recipe": None, "state": None, "adapter_only": False}
    ckpt_dir = None
    if checkpoint is not None:
        ckpt_dir = Path(checkpoint.to_directory())
        state, blob, history = read_checkpoint(ckpt_dir)
        if worker.rank == 0:
            say(f"resuming at stage {state['stage']} step {state['step']}")
    _seed_all(plan.seed)
    policy = plan.stages[min(state["stage"], len(plan.stages) - 1)].adapter
    if plan.strategy == "ddp":
        lm = rebuild(
            plan.base_dir,
            blob["recipe"],
            blob["state"],
            blob["adapter_only"],
            frozen_dtype(plan, policy),
        )
    else:  # rank 0's weights into every rank's (ZeRO-3: partitioned) model
        weights = blob["state"] if worker.rank == 0 else None
        lm = build_from_rank0(plan, blob["recipe"], weights, policy)
    # our phases' seconds, summed over attempts (a resumed run continues its checkpoint's sums)
    last = history[-1] if history else {}
    timings = {k: float(last.get(k, 0.0)) for k in PHASES}
    # the driver's data preparation for this attempt (a record of it, not a phase of fit())
    timings["time/prepare_s"] = plan.prepare_s
    # training steps so far (every record's window_s, summed): reports that skip records (a
    # sweep relays only validated ones) still carry all of it
    timings["time/steps_s"] = float(last.get("time/steps_s", 0.0))
    return lm, Progress(state=state, history=history, timings=timings, ckpt_dir=ckpt_dir)


def run_stage(
    worker: Worker, progress: Progress, lm: torch.nn.Module, s_idx: int
) -> torch.nn.Module:
    """Train stage ``s_idx`` from its start or the resumed step; returns the next stage's model."""
    plan, state, timings = worker.plan, progress.state, progress.timings
    stage_setup = time.perf_counter()
    stage = plan.stages[s_idx]
    rows: PackedRows = _fetch(stage.rows)
    mid_stage = progress.ckpt_dir is not None and state["stage"] == s_idx and state["step"] > 0
    if not mid_stage:
        torch.manual_seed(plan.seed * 1009 + s_idx)  # a new adapter's init, per stage
        state["frozen_is_base"] = frozen_stays_base(
            state.get("frozen_is_base", False), stage.adapter, lm
        )
        lm = apply_policy(lm, stage.adapter, plan.recipe)
    engine = make_engine(plan.strategy, lm, stage, plan.training, worker.world)
    # per stage: what is trained (LoRA or full, a new adapter) decides the FLOPs per token
    token_flops = train_flops_per_token(engine.lm)
    start_step = 0
    if mid_stage and progress.ckpt_dir is not None:
        engine.load(progress.ckpt_dir, state)
        torch.set_rng_state(state["rng_torch"])
        start_step = state["step"]
    timings["time/setup_s"] += time.perf_counter() - stage_setup
    window = Window(len(stage.sources), worker.device)
    for step in range(start_step, stage.steps):
        train_step(worker, engine, rows, step, window)
        state["tokens"] += _step_tokens(worker, rows, step)
        done = step + 1
        maybe_inject_fault(plan.fault, worker.rank, s_idx, done)
        logged = log_step(worker, progress, engine, (s_idx, done), (window, token_flops))
        last = done == stage.steps
        if last or done % plan.training.checkpoint_every == 0:
            write_checkpoint(plan, engine, progress, (s_idx, done), worker.rank)
        elif logged:
            import ray.train

            ray.train.report(dict(progress.history[-1]))
        if logged:  # after the checkpoint: the next window's timing excludes it
            window = Window(len(stage.sources), worker.device)
    return next_stage_model(worker, engine, s_idx, timings)


def _step_indices(worker: Worker, step: int) -> np.ndarray:
    per_worker = worker.plan.training.batch_size * worker.plan.training.grad_accum
    return step * per_worker * worker.world + np.arange(per_worker * worker.world)


def _step_tokens(worker: Worker, rows: PackedRows, step: int) -> int:
    """Real (non-padding) tokens of the step's rows on every worker."""
    return int((rows.source_ids[_step_indices(worker, step)] >= 0).sum())


def train_step(worker: Worker, engine: Engine, rows: PackedRows, step: int, window: Window) -> None:
    """One optimizer step: every micro-batch forward and backward, then the update."""
    training = worker.plan.training
    # the loss normaliser counts every worker's rows: no all_reduce needed
    all_idx = _step_indices(worker, step)
    global_loss_tokens = int(
        shift_loss_mask(rows.loss_mask[all_idx], rows.position_ids[all_idx]).sum()
    )
    per_worker = training.batch_size * training.grad_accum
    idx = step_rows(step, worker.rank, worker.world, per_worker)
    micro = micro_batches(rows, idx, training.batch_size, worker.device)
    for m_idx, mb in enumerate(micro):
        with engine.autocast():
            token_losses = engine.module(**mb["inputs"])
        loss = micro_batch_loss(token_losses, global_loss_tokens, worker.world)
        engine.backward(loss, m_idx == len(micro) - 1)
        window.add(token_losses, mb)
    engine.step()


def log_step(
    worker: Worker,
    progress: Progress,
    engine: Engine,
    at: tuple[int, int],
    measured: tuple[Window, float],
) -> bool:
    """At a log step (``log_every``, validation, a stage's end): a record (summed over workers,
    with the validation loss when due) appended to the history. Returns whether one was."""
    plan = worker.plan
    s_idx, done = at
    stage = plan.stages[s_idx]
    last = done == stage.steps
    every = plan.validation.every if plan.validation else 0
    validate = plan.validation is not None and (done % every == 0 or last)
    if not (done % plan.training.log_every == 0 or last or validate):
        return False
    window, token_flops = measured
    record = _record(worker, engine, progress, at, window)
    record["mfu"] = worker.peak.mfu(record["tokens_per_s_worker"], token_flops)
    record["peak_flops_worker"] = worker.peak.flops  # after mfu(): the peak MFU is against
    progress.timings["time/steps_s"] += record["window_s"]
    if validate:
        t_val = time.perf_counter()
        record.update(validation_loss(worker, engine))
        progress.timings["time/validation_s"] += time.perf_counter() - t_val
    record.update(progress.timings)
    progress.history.append(record)
    if worker.rank == 0:
        say(
            f"[{stage.name}] step {done}/{stage.steps} loss {record['loss']:.4f} "
            f"lr {record['lr']:.2e} tok/s {record['tokens_per_s']:.0f} MFU {record['mfu']:.1%}",
        )
    return True


def next_stage_model(
    worker: Worker, engine: Engine, s_idx: int, timings: dict[str, float]
) -> torch.nn.Module:
    """The model the next stage starts from: DDP's own; under ZeRO, gathered to rank 0 and
    rebuilt on every rank (partitioned under ZeRO-3). The engine is closed."""
    plan = worker.plan
    stage_end = time.perf_counter()
    lm = engine.lm
    if plan.strategy != "ddp" and s_idx + 1 < len(plan.stages):
        weights, recipe = engine.full_state(), recipe_of(engine.lm, plan.recipe)
        engine.close()
        lm = build_from_rank0(plan, recipe, weights, plan.stages[s_idx + 1].adapter)
        del weights
    engine.close()
    timings["time/setup_s"] += time.perf_counter() - stage_end
    return lm


def frozen_dtype(plan: WorkerPlan, policy: str) -> torch.dtype | None:
    """The dtype the base is loaded in: ``lora.frozen_dtype`` for a stage that trains an
    adapter (its frozen weights), fp32 otherwise (``None``: the loader's fp32)."""
    if policy != "full" and plan.lora.frozen_dtype == "bfloat16":
        return torch.bfloat16
    return None


def build_from_rank0(
    plan: WorkerPlan,
    recipe: dict[str, Any] | None,
    weights: dict[str, torch.Tensor] | None,
    policy: str,
) -> torch.nn.Module:
    """The model every rank starts a stage from, with rank 0's ``weights`` (``None`` on the
    other ranks; an adapter-only state keeps the base's frozen weights). Under ZeRO-3 it is
    partitioned at construction: no rank ever holds all of it."""
    with partitioned_construction(construction_config(plan.strategy, plan.training)):
        lm = rebuild(plan.base_dir, recipe, None, dtype=frozen_dtype(plan, policy))
    load_from_rank0(lm, weights)
    return lm


def validation_loss(worker: Worker, engine: Engine) -> dict[str, float]:
    """Mean target-token loss on the validation rows: ``val_loss`` and ``val_loss/<source>``.

    Each worker scores an interleaved share (the driver padded the rows to a multiple of the
    workers, so every rank runs the same forwards); sums are all-reduced. Runs in eval mode under
    ``no_grad`` and touches no optimizer, RNG or data-position state.
    """
    assert worker.plan.validation is not None and worker.validation is not None
    rows, names = worker.validation, worker.plan.validation.sources
    idx = np.arange(worker.rank, len(rows), worker.world)
    window = Window(len(names), worker.device)
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        batch = worker.plan.training.batch_size
        for mb in micro_batches(rows, idx, batch, worker.device):
            with engine.autocast():
                window.add(engine.module(**mb["inputs"]), mb)
    engine.module.train(was_training)
    totals = all_reduce_sum([window.loss, window.loss_tokens, *window.src.flatten().tolist()])
    per_source = np.array(totals[2:]).reshape(2, len(names))
    out = {"val_loss": totals[0] / max(totals[1], 1)}
    for i, name in enumerate(names):
        if per_source[1, i] > 0:
            out[f"val_loss/{name}"] = float(per_source[0, i] / per_source[1, i])
    return out


def _record(
    worker: Worker, engine: Engine, progress: Progress, at: tuple[int, int], window: Window
) -> dict[str, Any]:
    """One log line's metrics, summed over workers: loss, per-source loss, tokens/s."""
    s_idx, done = at
    stages = worker.plan.stages
    stage = stages[s_idx]
    elapsed = time.perf_counter() - window.t0
    n = len(stage.sources)
    totals = all_reduce_sum(
        [window.loss, window.loss_tokens, window.tokens, *window.src.flatten().tolist()]
    )
    loss, loss_tokens, tokens = totals[0], totals[1], totals[2]
    src = np.array(totals[3:]).reshape(2, n)
    record = {
        "stage": stage.name,
        "stage_index": s_idx,
        "step": done,
        "global_step": sum(x.steps for x in stages[:s_idx]) + done,
        "loss": loss / max(loss_tokens, 1),
        "lr": engine.lr(),
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "tokens_per_s_worker": tokens / worker.world / max(elapsed, 1e-9),
        "trained_tokens": progress.state["tokens"],
        "window_s": elapsed,  # wall seconds of the steps this record covers
    }
    for i, name in enumerate(stage.sources):
        if src[1, i] > 0:
            record[f"loss/{name}"] = float(src[0, i] / src[1, i])
    return record
