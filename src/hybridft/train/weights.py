"""Training weights as state dicts, for models too big to copy: merge an adapter, build a model
partitioned from the start, gather to rank 0 only, load from rank 0 only.

Why state dicts: under ZeRO-3 no rank holds a whole model, so what the loop does between stages
(merge an adapter, start a new one) and what a checkpoint writes (the HF export, the adapter) is
done on rank 0's gathered copy of the weights, one parameter at a time, never on a second model.

* ``merged_state_dict``: a LoRA state dict folded into plain weights (``W + B @ A * alpha / r``,
  peft's own merge), with the plain model's keys;
* ``partitioned_construction``: under ZeRO-3, models built inside are partitioned at construction
  (``deepspeed.zero.Init`` through transformers' ``HfDeepSpeedConfig``);
* ``gather_to_rank0``: one parameter gathered at a time, only rank 0 keeps a CPU copy;
* ``load_from_rank0``: rank 0's state into every rank's model (partitioned or replicated).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def merged_state_dict(
    state: dict[str, torch.Tensor],
    lora: dict[str, Any],
    base: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The plain model's state dict of a LoRA model's ``state`` (its ``peft`` keys): each adapted
    weight is ``base + (B @ A) * alpha / r`` in the base weight's dtype, as peft's merge computes
    it; every other weight is passed through (no copy). ``base``: the plain base weights, for an
    adapter-only ``state`` (what it does not hold)."""
    scaling = lora["alpha"] / lora["r"]
    out: dict[str, Any] = dict(base or {})
    adapted = []
    for key, value in state.items():
        if f".lora_A.{ADAPTER}." in key:
            adapted.append(key.removeprefix(PEFT_PREFIX).partition(f".lora_A.{ADAPTER}.")[0])
        if ".lora_" not in key:
            out[key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")] = value
    for module in adapted:
        a = state[f"{PEFT_PREFIX}{module}.lora_A.{ADAPTER}.weight"]
        b = state[f"{PEFT_PREFIX}{module}.lora_B.{ADAPTER}.weight"]
        weight = out[f"{module}.weight"]
        delta = (b.to(torch.float32) @ a.to(torch.float32)) * scaling
        out[f"{module}.weight"] = (weight.to(torch.float32) + delta).to(weight.dtype)
    return out


def is_lora_state(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_" in k for k in state)


@contextlib.contextmanager
def partitioned_construction(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """Inside, ``from_pretrained`` (and peft's new adapter layers) build ZeRO-3 partitioned
    parameters: each rank materialises its shard only. ``None``: plain construction."""
    if ds_config is None:
        yield
        return
    from transformers.integrations.deepspeed import (
        HfDeepSpeedConfig,
        unset_hf_deepspeed_config,
    )

    keep = HfDeepSpeedConfig(ds_config)  # transformers holds a weak reference only
    try:
        yield
    finally:
        del keep
        unset_hf_deepspeed_config()


def _partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_to_rank0(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` on rank 0's CPU, ``{}`` on the others (every rank must call it).

    A ZeRO-3 parameter is gathered alone (peak: one parameter beyond each rank's shard); tied
    weights are gathered once. Replicated parameters are read where they are."""
    rank0 = _rank() == 0
    out: dict[str, torch.Tensor] = {}
    copies: dict[int, torch.Tensor | None] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        if id(value) not in copies:
            if _partitioned(value):
                import deepspeed

                with deepspeed.zero.GatheredParameters([value], modifier_rank=None):
                    copy = value.detach().clone().cpu() if rank0 else None
            else:
                copy = value.detach().cpu() if rank0 else None
            copies[id(value)] = copy
        copy = copies[id(value)]
        if copy is not None:  # rank 0
            out[key] = copy
    return out


def load_from_rank0(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Every rank's ``model`` gets rank 0's ``state`` (the other ranks pass ``None``).

    A ZeRO-3 parameter is gathered, written on rank 0 and re-partitioned (DeepSpeed broadcasts
    the modifier rank's values); a replicated one is written on rank 0 and broadcast. A key of
    the model missing from rank 0's state keeps the model's value (an adapter-only state)."""
    rank0 = _rank() == 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        has = torch.tensor(int(state is not None and rank0 and name in state))
        if dist.is_initialized():
            dist.broadcast(has, src=0)
        if not int(has):
            continue
        if _partitioned(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
                if state is not None and rank0:
                    p.copy_(state[name])
        else:
            with torch.no_grad():
                if state is not None and rank0:
                    p.copy_(state[name])
                if dist.is_initialized():
                    dist.broadcast(p.data, src=0)


def tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict keys that name a tensor an earlier key names (a tied LM head): the export
    holds each tensor once, as ``save_pretrained`` of the model itself does."""
    seen: set[int] = set()
    tied = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            tied.add(key)
        seen.add(id(value))
    return tied
