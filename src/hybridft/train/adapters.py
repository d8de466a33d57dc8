"""LoRA (peft) and full fine-tuning, and what happens to an adapter between stages.

A stage's ``adapter`` policy says what the stage trains:
  * ``full``: every weight (a previous stage's adapter is merged in first);
  * ``continue``: the same LoRA adapter keeps training (a new one if none exists yet);
  * ``merge_and_new``: the previous adapter is merged into the weights, a fresh one starts.

The training model is always described by a *recipe* (``peft`` config or None) plus a state dict,
so stage transitions and resumes rebuild it the same way on every worker and every strategy.
"""

from __future__ import annotations

from typing import Any

import torch

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


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with any adapter folded into its weights."""
    return model.merge_and_unload() if is_peft(model) else model


def apply_policy(model: torch.nn.Module, policy: str, lora: dict[str, Any]) -> torch.nn.Module:
    """The model a stage trains, given the previous stage's model and the stage's policy."""
    if policy == "full":
        # merge_and_unload leaves every base weight frozen, as LoRA had it: a full stage after a
        # LoRA stage must train them again
        return merged(model).requires_grad_(True)
    if policy == "continue":
        return model if is_peft(model) else add_adapter(model, lora)
    if policy == "merge_and_new":
        return add_adapter(merged(model), lora)
    raise ValueError(f"unknown adapter policy {policy!r}; expected one of {POLICIES}")


def rebuild(base_dir: str, recipe: dict[str, Any] | None, state: dict[str, Any] | None) -> Any:
    """A training model from the base architecture, an optional adapter recipe and a state dict."""
    from hybridft.model.hf import load_model

    model = load_model(base_dir)
    if recipe is not None:
        model = add_adapter(model, recipe)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def recipe_of(model: torch.nn.Module, lora: dict[str, Any]) -> dict[str, Any] | None:
    return dict(lora) if is_peft(model) else None


def trainable_summary(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
