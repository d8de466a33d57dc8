"""LoRA (peft) and full fine-tuning, and what happens to an adapter between stages.

A stage's ``adapter`` policy says what the stage trains:
  * ``full``: every weight (a previous stage's adapter is merged in first);
  * ``continue``: the same LoRA adapter keeps training (a new one if none exists yet);
  * ``merge_and_new``: the previous adapter is merged into the weights, a fresh one starts.

The training model is always described by a *recipe* (``peft`` config or None) plus a state dict,
so stage transitions and resumes rebuild it the same way on every worker and every strategy.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from hybridft.model.hf import load_model
from hybridft.train.weights import tied_names

POLICIES = ("full", "continue", "merge_and_new")


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def lora_config(lora: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )


def add_adapter(model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))


def merged(model: Any) -> Any:
    """The plain model with any adapter folded into its weights.

    Under ZeRO-3 (partitioned parameters) each adapted layer is gathered for its merge alone,
    merged on every rank alike and partitioned again; then the adapter modules are dropped."""
    if not is_peft(model):
        return model
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        return model.merge_and_unload()
    import deepspeed
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):  # an nn.Module too (peft's LoRA layers are)
            params = list(cast(torch.nn.Module, module).parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                module.merge()
    return model.unload()


def apply_policy(model: Any, policy: str, lora: dict[str, Any]) -> Any:
    """The model a stage trains, given the previous stage's model and the stage's policy."""
    if policy == "full":
        # merge_and_unload leaves every base weight frozen, as LoRA had it: a full stage after a
        # LoRA stage must train them again
        model = merged(model)
        if any(p.dtype != torch.float32 for p in model.parameters()):
            model = model.to(torch.float32)  # a bf16 frozen base (lora.frozen_dtype) trains fp32
        return model.requires_grad_(True)
    if policy == "continue":
        return model if is_peft(model) else add_adapter(model, lora)
    if policy == "merge_and_new":
        return add_adapter(merged(model), lora)
    raise ValueError(f"unknown adapter policy {policy!r}; expected one of {POLICIES}")


def rebuild(
    base_dir: str,
    recipe: dict[str, Any] | None,
    state: dict[str, Any] | None,
    adapter_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Any:
    """A training model from the base architecture, an optional adapter recipe and a state dict.

    ``adapter_only``: ``state`` holds the adapter's weights alone and the frozen weights are the
    base's own (a LoRA checkpoint written without them); any other key missing is an error.
    ``dtype``: the base's (a bf16 frozen base for LoRA); peft keeps the adapter in fp32.
    """

    model = load_model(base_dir, dtype=dtype)
    if recipe is not None:
        model = add_adapter(model, recipe)
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = set(result.missing_keys), sorted(result.unexpected_keys)
        if adapter_only:
            adapter = set(adapter_names(model))
            wrong = sorted(missing & adapter) + sorted(set(state) - adapter)
        else:  # a tied head is saved once, as the embedding it shares
            wrong = sorted(missing - tied_names(model))
        if wrong or unexpected:
            kind = "an adapter-only" if adapter_only else "a"
            raise ValueError(
                f"{kind} checkpoint does not match the model: missing or misplaced "
                f"{wrong[:3]}, unexpected {unexpected[:3]}"
            )
    return model


def adapter_names(model: torch.nn.Module) -> list[str]:
    """The names of the weights a LoRA model trains (what an adapter-only checkpoint holds)."""
    return [n for n, p in model.named_parameters() if p.requires_grad] if is_peft(model) else []


def frozen_stays_base(frozen_is_base: bool, policy: str, model: torch.nn.Module) -> bool:
    """Whether a stage's frozen weights are still the base's own after ``policy`` is applied to
    ``model``: only adapters have trained so far and none was merged (``continue``, or a
    ``merge_and_new`` with no adapter to merge)."""
    return frozen_is_base and (
        policy == "continue" or (policy == "merge_and_new" and not is_peft(model))
    )


def recipe_of(model: torch.nn.Module, lora: dict[str, Any]) -> dict[str, Any] | None:
    return dict(lora) if is_peft(model) else None


def trainable_summary(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
