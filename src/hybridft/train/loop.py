"""The worker loop: one loop for every stage, method (LoRA / full) and strategy (DDP / ZeRO).

Runs inside Ray Train workers (``TorchTrainer``). It knows nothing of Tune or MLflow: it trains the
planned rows stage by stage, reports metrics (with ``data.validation``, a validation loss too)
through ``ray.train.report`` and attaches a checkpoint (HF weights, the exact training state,
optimizer, scheduler, RNG and the data position) every N steps and at every stage end. A restarted
worker group resumes at the exact row of the mixture.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridft.quiet import quiet_library_chatter
from hybridft.train.adapters import apply_policy, frozen_stays_base, rebuild, recipe_of
from hybridft.train.attention import segments_from_numpy
from hybridft.train.checkpoint import read_checkpoint, write_checkpoint
from hybridft.train.devices import all_reduce_sum, allow_tf32_on_cuda
from hybridft.train.loss import micro_batch_loss, per_source_sums
from hybridft.train.node_base import local_base_dir
from hybridft.train.packing import PackedRows, shift_loss_mask
from hybridft.train.strategy import Engine, construction_config, make_engine
from hybridft.train.throughput import MatmulPeak, measure_matmul_peak, train_flops_per_token
from hybridft.train.weights import load_from_rank0, partitioned_construction

# Seconds of our own work inside trainer.fit(), in every record (cumulative): model set-up (load,
# adapters, the MFU peak), validation, checkpoint writes. Training steps are each record's
# window_s. What fit() takes beyond these is Ray's (train.run.run_timings).
PHASES = ("time/setup_s", "time/validation_s", "time/checkpoint_s")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rows(step: int, rank: int, world: int, per_worker: int) -> np.ndarray:
    """Row indices this worker trains at ``step``: an interleaved share of the step's rows."""
    return step * per_worker * world + rank + world * np.arange(per_worker)


def maybe_inject_fault(fault: dict[str, Any] | None, rank: int, stage: int, step: int) -> None:
    """Fault drills (``HYBRIDFT_FAULT=rank:stage:step:marker``): SIGKILL this worker once.

    A real process death, not a simulated exception: Ray Train must notice the dead worker,
    restart the group and resume from the last checkpoint. The marker file makes it fire once.
    """
    if not fault or (fault["rank"], fault["stage"], fault["step"]) != (rank, stage, step):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at stage {stage} step {step}\n")
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU from pinned memory, without waiting for the copy."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def micro_batches(
    rows: PackedRows, idx: np.ndarray, batch: int, device: torch.device
) -> list[dict[str, Any]]:
    """The step's micro-batches on ``device``. Everything that decides a shape (segments, target
    positions, token counts) is computed here from the host rows: the step never waits on the
    device to learn one."""
    out = []
    for k in range(0, len(idx), batch):
        sel = idx[k : k + batch]
        pos = rows.position_ids[sel]
        target = shift_loss_mask(rows.loss_mask[sel], pos)
        out.append(
            {
                "inputs": {
                    "input_ids": _to_device(rows.input_ids[sel].astype(np.int64), device),
                    "position_ids": _to_device(pos.astype(np.int64), device),
                    "target_mask": _to_device(target, device),
                    "segments": segments_from_numpy(pos, device),
                    "target_index": _to_device(np.flatnonzero(target).astype(np.int64), device),
                },
                "target_sources": _to_device(rows.source_ids[sel][:, 1:][target], device),
                "real_tokens": int((rows.source_ids[sel] >= 0).sum()),
            }
        )
    return out


@functools.lru_cache(maxsize=8)
def matmul_peak(dtype: torch.dtype, threads: int, device: torch.device) -> float:
    """The MFU denominator, measured once per process, dtype, thread count and device (0.3 s
    each: a process that trains run after run, in process, measures it once), with ``threads``:
    the count the training step runs with."""
    return measure_matmul_peak(dtype, device=device, threads=threads)


class Window:
    """Sums over the steps since the last log line. The loss sums stay on the device until the
    log line reads them (``totals``): no host sync per micro-batch."""

    def __init__(self, n_sources: int, device: torch.device | str = "cpu") -> None:
        self.loss_tokens = 0
        self.tokens = 0
        self.src = torch.zeros(2, n_sources, dtype=torch.float64, device=device)
        self.t0 = time.perf_counter()

    def add(self, token_losses: torch.Tensor, mb: dict[str, Any]) -> None:
        self.loss_tokens += token_losses.numel()  # a shape: known without a sync
        self.tokens += mb["real_tokens"]
        s, c = per_source_sums(token_losses, mb["target_sources"], self.src.shape[1])
        self.src[0] += s
        self.src[1] += c

    @property
    def loss(self) -> float:
        return float(self.src[0].sum())


def say(line: str) -> None:
    """One progress line to the worker's real stdout (Ray forwards it to the driver once).

    Ray Train patches ``print`` on workers into its logger, which echoed every line twice."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def quiet_train_logs() -> None:
    """Ray Train's per-report INFO line ("Reporting training result N: ...") is debug noise."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    quiet_library_chatter()


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    import ray.train
    import ray.train.torch

    quiet_train_logs()

    torch.set_num_threads(config["threads_per_worker"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    allow_tf32_on_cuda(device)  # before the MFU peak is measured: it measures the same matmuls
    training, lora, strategy = config["training"], config["lora"], config["strategy"]
    per_worker = training["batch_size"] * training["grad_accum"]
    use_bf16 = training["precision"] == "bf16"
    stages = config["stages"]
    config["base_dir"] = local_base_dir(config)
    validation = config.get("validation")
    if validation is not None:
        validation = {**validation, "rows": ray.get(validation["rows"])}

    entered = time.perf_counter()
    # 1) where to start: a fresh run, or this run's last checkpoint
    state: dict[str, Any] = {"stage": 0, "step": 0, "tokens": 0, "frozen_is_base": True}
    history: list[dict[str, Any]] = []
    blob: dict[str, Any] = {"recipe": None, "state": None, "adapter_only": False}
    ckpt_dir = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        ckpt_dir = Path(checkpoint.to_directory())
        state, blob, history = read_checkpoint(ckpt_dir)
        if rank == 0:
            say(f"resuming at stage {state['stage']} step {state['step']}")
    _seed_all(config["seed"])
    first_policy = stages[min(state["stage"], len(stages) - 1)]["adapter"]
    if strategy == "ddp":
        lm = rebuild(
            config["base_dir"],
            blob["recipe"],
            blob["state"],
            blob["adapter_only"],
            frozen_dtype(lora, first_policy),
        )
    else:  # rank 0's weights into every rank's (ZeRO-3: partitioned) model
        lm = build_from_rank0(
            config, blob["recipe"], blob["state"] if rank == 0 else None, first_policy
        )
    del blob
    # the threads set above, kept for every step; raised per run if a window beats it (<= 100%)
    peak = MatmulPeak(
        matmul_peak(torch.bfloat16 if use_bf16 else torch.float32, torch.get_num_threads(), device)
    )
    # our phases' seconds, summed over attempts (a resumed run continues its checkpoint's sums)
    timings = {k: float(history[-1].get(k, 0.0)) if history else 0.0 for k in PHASES}
    timings["time/setup_s"] += time.perf_counter() - entered
    # the driver's data preparation for this attempt (a record of it, not a phase of fit())
    timings["time/prepare_s"] = float(config.get("prepare_s", 0.0))
    # training steps so far (every record's window_s, summed): reports that skip records (a
    # sweep relays only validated ones) still carry all of it
    timings["time/steps_s"] = float(history[-1].get("time/steps_s", 0.0)) if history else 0.0

    for s_idx in range(state["stage"], len(stages)):
        stage_setup = time.perf_counter()
        stage = stages[s_idx]
        rows: PackedRows = (
            stage["rows"] if isinstance(stage["rows"], PackedRows) else ray.get(stage["rows"])
        )
        mid_stage = ckpt_dir is not None and state["stage"] == s_idx and state["step"] > 0
        if not mid_stage:
            torch.manual_seed(config["seed"] * 1009 + s_idx)  # a new adapter's init, per stage
            state["frozen_is_base"] = frozen_stays_base(
                state.get("frozen_is_base", False), stage["adapter"], lm
            )
            lm = apply_policy(lm, stage["adapter"], lora)
        engine = make_engine(strategy, lm, stage, training, world)
        # per stage: what is trained (LoRA or full, a new adapter) decides the FLOPs per token
        token_flops = train_flops_per_token(engine.lm)
        start = 0
        if mid_stage:
            engine.load(ckpt_dir, state)
            torch.set_rng_state(state["rng_torch"])
            start = state["step"]
        timings["time/setup_s"] += time.perf_counter() - stage_setup
        window = Window(len(stage["sources"]), device)
        for step in range(start, stage["steps"]):
            # 2) the step's rows: the loss normaliser counts every worker's rows, no all_reduce
            all_idx = step * per_worker * world + np.arange(per_worker * world)
            global_loss_tokens = int(
                shift_loss_mask(rows.loss_mask[all_idx], rows.position_ids[all_idx]).sum()
            )
            micro = micro_batches(
                rows, step_rows(step, rank, world, per_worker), training["batch_size"], device
            )
            for m_idx, mb in enumerate(micro):
                with engine.autocast():
                    token_losses = engine.module(**mb["inputs"])
                loss = micro_batch_loss(token_losses, global_loss_tokens, world)
                engine.backward(loss, m_idx == len(micro) - 1)
                window.add(token_losses, mb)
            engine.step()
            state["tokens"] += int((rows.source_ids[all_idx] >= 0).sum())
            done = step + 1
            maybe_inject_fault(config.get("fault"), rank, s_idx, done)
            last = done == stage["steps"]
            validate = validation is not None and (done % config["validate_every"] == 0 or last)
            logged = done % training["log_every"] == 0 or last or validate
            if logged:
                history.append(
                    _record(
                        window, stage, s_idx, stages, done, engine, state, world, token_flops, peak
                    )
                )
                timings["time/steps_s"] += history[-1]["window_s"]
                if validate:
                    t_val = time.perf_counter()
                    history[-1].update(
                        validation_loss(engine, validation, rank, world, training, device)
                    )
                    timings["time/validation_s"] += time.perf_counter() - t_val
                history[-1].update(timings)
                if rank == 0:
                    r = history[-1]
                    say(
                        f"[{stage['name']}] step {done}/{stage['steps']} loss {r['loss']:.4f} "
                        f"lr {r['lr']:.2e} tok/s {r['tokens_per_s']:.0f} MFU {r['mfu']:.1%}",
                    )
            if last or done % training["checkpoint_every"] == 0:
                write_checkpoint(config, engine, state, history, s_idx, done, last, rank, timings)
            elif logged:
                ray.train.report(dict(history[-1]))
            if logged:
                window = Window(
                    len(stage["sources"]), device
                )  # after the checkpoint: timing excludes it
        stage_end = time.perf_counter()
        if strategy == "ddp":
            lm = engine.lm
        elif s_idx + 1 < len(stages):  # gathered to rank 0, rebuilt on every rank
            weights, recipe = engine.full_state(), recipe_of(engine.lm, lora)
            engine.close()
            lm = build_from_rank0(config, recipe, weights, stages[s_idx + 1]["adapter"])
            del weights
        engine.close()
        timings["time/setup_s"] += time.perf_counter() - stage_end


def frozen_dtype(lora: dict[str, Any], policy: str) -> torch.dtype | None:
    """The dtype the base is loaded in: ``lora.frozen_dtype`` for a stage that trains an
    adapter (its frozen weights), fp32 otherwise (``None``: the loader's fp32)."""
    if policy != "full" and lora.get("frozen_dtype") == "bfloat16":
        return torch.bfloat16
    return None


def build_from_rank0(
    config: dict[str, Any],
    recipe: dict[str, Any] | None,
    weights: dict[str, torch.Tensor] | None,
    policy: str,
) -> torch.nn.Module:
    """The model every rank starts a stage from, with rank 0's ``weights`` (``None`` on the
    other ranks; an adapter-only state keeps the base's frozen weights). Under ZeRO-3 it is
    partitioned at construction: no rank ever holds all of it."""
    training = config["training"]
    with partitioned_construction(construction_config(config["strategy"], training)):
        lm = rebuild(config["base_dir"], recipe, None, dtype=frozen_dtype(config["lora"], policy))
    load_from_rank0(lm, weights)
    return lm


def validation_loss(
    engine: Engine,
    validation: dict[str, Any],
    rank: int,
    world: int,
    training: dict[str, Any],
    device: torch.device,
) -> dict[str, float]:
    """Mean target-token loss on the validation rows: ``val_loss`` and ``val_loss/<source>``.

    Each worker scores an interleaved share (the driver padded the rows to a multiple of the
    workers, so every rank runs the same forwards); sums are all-reduced. Runs in eval mode under
    ``no_grad`` and touches no optimizer, RNG or data-position state.
    """
    rows: PackedRows = validation["rows"]
    names: list[str] = validation["sources"]
    idx = np.arange(rank, len(rows), world)
    window = Window(len(names), device)
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        for mb in micro_batches(rows, idx, training["batch_size"], device):
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
    window: Window,
    stage: dict[str, Any],
    s_idx: int,
    stages: list[dict[str, Any]],
    done: int,
    engine: Engine,
    state: dict[str, Any],
    world: int,
    flops_per_token: float,
    peak: MatmulPeak,
) -> dict[str, Any]:
    """One log line's metrics, summed over workers: loss, per-source loss, tokens/s, MFU."""
    elapsed = time.perf_counter() - window.t0
    n = len(stage["sources"])
    totals = all_reduce_sum(
        [window.loss, window.loss_tokens, window.tokens, *window.src.flatten().tolist()]
    )
    loss, loss_tokens, tokens = totals[0], totals[1], totals[2]
    src = np.array(totals[3:]).reshape(2, n)
    per_worker_tps = tokens / world / max(elapsed, 1e-9)
    record = {
        "stage": stage["name"],
        "stage_index": s_idx,
        "step": done,
        "global_step": sum(x["steps"] for x in stages[:s_idx]) + done,
        "loss": loss / max(loss_tokens, 1),
        "lr": engine.lr(),
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "tokens_per_s_worker": per_worker_tps,
        "mfu": peak.mfu(per_worker_tps, flops_per_token),
        "peak_flops_worker": peak.flops,  # after mfu(): the peak that MFU is against
        "trained_tokens": state["tokens"],
        "window_s": elapsed,  # wall seconds of the steps this record covers
    }
    for i, name in enumerate(stage["sources"]):
        if src[1, i] > 0:
            record[f"loss/{name}"] = float(src[0, i] / src[1, i])
    return record
