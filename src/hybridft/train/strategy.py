"""Distributed strategies behind one small interface, chosen by a factory (no class tree).

``ddp``: torch DistributedDataParallel through Ray Train's ``prepare_model`` (gloo on CPU, NCCL on
GPU). ``zero2`` / ``zero3``: DeepSpeed ZeRO, initialised inside the Ray Train worker on the process
group Ray set up. Parameters stay fp32 in every strategy; bf16 is autocast around the forward, so
the master weights, the gathered state and the checkpoints are exact. DDP gets its autocast from
the loop (``Engine.autocast``); DeepSpeed applies its own inside ``engine.forward`` (its
``torch_autocast`` config): on CUDA it switches an outer autocast off, so the loop adds none.

Loss scaling: the loop hands every strategy a micro-batch loss already normalised over the whole
optimizer step (see ``loss.py``). DeepSpeed divides by its accumulation steps in ``backward``, so
its engine multiplies that factor back.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybridft.specs import TrainingSpec
from hybridft.train.adapters import is_peft
from hybridft.train.loss import LossModel
from hybridft.train.plan import WorkerStage
from hybridft.train.schedule import lr_lambda
from hybridft.train.weights import gather_to_rank0

DS_TAG = "ds"


@dataclass
class Engine:
    """What the loop needs from a strategy; every field is a plain function."""

    module: torch.nn.Module  # forward(input_ids, position_ids, target_mask) -> token losses
    lm: torch.nn.Module  # the (possibly peft) causal LM being trained
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]  # around every module forward
    backward: Callable[[torch.Tensor, bool], None]  # (micro-batch loss, last micro-batch?)
    step: Callable[[], None]  # clip, optimizer + scheduler step, zero grads
    lr: Callable[[], float]
    # collective: every rank calls it; rank 0 gets the state dict on its CPU, the others {}
    full_state: Callable[[], dict[str, torch.Tensor]]
    save: Callable[[Path, int], dict[str, Any]]  # collective; returns loop-state entries
    load: Callable[[Path, dict[str, Any]], None]
    close: Callable[[], None] = lambda: None  # frees what the engine holds (idempotent)


def _optimizer(
    params: list[torch.nn.Parameter], stage: WorkerStage, training: TrainingSpec
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=stage.lr, weight_decay=training.weight_decay, betas=(0.9, 0.95)
    )


def _schedule(optimizer: Any, stage: WorkerStage) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_lambda(stage.schedule, stage.warmup_steps, stage.steps, stage.min_lr_ratio),
    )


def compile_layers(lm: Any) -> None:
    """Compile every decoder layer in place (the loss head and embeddings stay eager)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    for layer in decoder.layers:
        layer.compile(dynamic=False)


def loss_model(lm: Any, training: TrainingSpec) -> LossModel:
    """The loss module of a job's training options (gradient checkpointing, chunked loss)."""
    if training.gradient_checkpointing:
        # non-reentrant: frozen inputs (LoRA) need no enable_input_require_grads
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LossModel(lm, loss_chunk=training.loss_chunk_tokens)


def ddp_engine(
    lm: torch.nn.Module, stage: WorkerStage, training: TrainingSpec, world: int
) -> Engine:
    import ray.train.torch

    device = ray.train.torch.get_device()
    wrapped = (
        ray.train.torch.prepare_model(loss_model(lm, training), parallel_strategy="ddp")
        if world > 1
        else loss_model(lm, training).to(device)
    )
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = _optimizer(params, stage, training)
    scheduler = _schedule(optimizer, stage)

    def backward(loss: torch.Tensor, last: bool) -> None:
        # gradients are all-reduced once per optimizer step, on its last micro-batch
        no_sync = getattr(wrapped, "no_sync", None)  # DDP's (a one-worker module has none)
        ctx = no_sync() if (not last and no_sync is not None) else contextlib.nullcontext()
        with ctx:
            loss.backward()

    def step() -> None:
        if training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def save(_: Path, __: int) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    def load(_: Path, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    return Engine(
        module=wrapped,
        lm=lm,
        autocast=functools.partial(
            torch.autocast,
            device.type,
            dtype=torch.bfloat16,
            enabled=training.precision == "bf16",
        ),
        backward=backward,
        step=step,
        lr=lambda: scheduler.get_last_lr()[0],
        full_state=lambda: gather_to_rank0(lm),
        save=save,
        load=load,
    )


def deepspeed_config(training: TrainingSpec, zero: int) -> dict[str, Any]:
    """The DeepSpeed config of a ZeRO stage. No ``bf16`` section: that would keep bf16 weights
    with fp32 masters; the parameters stay fp32 and bf16 is DeepSpeed's autocast of the forward."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.grad_accum,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": {"stage": zero},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if training.precision == "bf16":
        config["torch_autocast"] = {
            "enabled": True,
            "dtype": "bfloat16",
            # no module's gradients are reduced in bf16 (DeepSpeed's default for nn.Linear):
            # fp32 gradient reduction, as under DDP
            "lower_precision_safe_modules": [],
        }
    return config


def _deepspeed_checkpoint_types() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """The only non-tensor classes in the ZeRO-2/3 checkpoints this loop writes (DeepSpeed
    0.19): the loss scaler, the ZeRO stage enum and a fragment address (plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def weights_only_loads(checkpoint_engine: Any) -> None:
    """DeepSpeed's checkpoint engine loads with ``weights_only=False``: whoever can write the
    shared checkpoint storage would run code on every worker at resume. Its ``load`` (the path of
    the model and ZeRO optimizer states this loop resumes from) is replaced by a ``weights_only``
    load that admits the checkpoint's three DeepSpeed classes and nothing else. Not covered:
    DeepSpeed's universal-checkpoint and MoE-expert loaders, which this loop never calls."""
    allowed = _deepspeed_checkpoint_types()

    def load(path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load


def deepspeed_engine(
    lm: torch.nn.Module, stage: WorkerStage, training: TrainingSpec, zero: int
) -> Engine:
    import deepspeed

    accum = training.grad_accum
    params = [p for p in lm.parameters() if p.requires_grad]
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=loss_model(lm, training),
        optimizer=_optimizer(params, stage, training),
        lr_scheduler=lambda opt: _schedule(opt, stage),
        config=deepspeed_config(training, zero),
        dist_init_required=False,
    )

    weights_only_loads(engine.checkpoint_engine)

    def backward(loss: torch.Tensor, last: bool) -> None:
        engine.backward(loss * accum)  # DeepSpeed divides by accumulation steps itself
        engine.step()  # steps the optimizer only at the accumulation boundary

    closed: list[bool] = []

    def close() -> None:
        if not closed:  # the optimizer state and ZeRO's buffers and hooks go now, not at exit
            closed.append(True)
            engine.destroy()

    def save(path: Path, _: int) -> dict[str, Any]:
        # LoRA: DeepSpeed's module file would hold the frozen base again (the loop writes the
        # adapter); the optimizer shards cover the trained weights only
        engine.save_checkpoint(str(path), tag=DS_TAG, exclude_frozen_parameters=is_peft(lm))
        return {}

    def load(path: Path, _: dict[str, Any]) -> None:
        engine.load_checkpoint(str(path), tag=DS_TAG, load_module_strict=False)

    return Engine(
        module=engine,
        lm=lm,
        autocast=contextlib.nullcontext,  # engine.forward autocasts (deepspeed_config)
        backward=backward,
        step=lambda: None,  # engine.step() in backward handles the boundary
        lr=lambda: scheduler.get_last_lr()[0],
        full_state=lambda: gather_to_rank0(engine.module.lm),
        save=save,
        load=load,
        close=close,
    )


def construction_config(strategy: str, training: TrainingSpec) -> dict[str, Any] | None:
    """The DeepSpeed config models are built under (``weights.partitioned_construction``):
    ZeRO-3's, so its models are partitioned from the start; ``None`` for the others."""
    return deepspeed_config(training, 3) if strategy == "zero3" else None


def make_engine(
    strategy: str, lm: torch.nn.Module, stage: WorkerStage, training: TrainingSpec, world: int
) -> Engine:
    """The factory: ``ddp`` | ``zero2`` | ``zero3``."""
    if training.compile:
        compile_layers(lm)
    if strategy == "ddp":
        return ddp_engine(lm, stage, training, world)
    if strategy in ("zero2", "zero3"):
        return deepspeed_engine(lm, stage, training, int(strategy[-1]))
    raise ValueError(f"unknown strategy {strategy!r}")
