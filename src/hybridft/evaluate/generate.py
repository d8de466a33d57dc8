"""Batched greedy generation with the KV cache (HF ``generate``), left-padded prompts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hybridft.data.records import Example
from hybridft.model.device import model_device


def chat_prompt(tokenizer: Any, example: Example) -> str:
    messages = [{"role": m.role, "content": m.content} for m in example.prompt_messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 24,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` (already chat-formatted), stopping at EOS.

    Inputs go to the model's device; bf16 autocast runs on that device's type.
    """
    tokenizer.padding_side = "left"
    device = model_device(model)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        answers.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        if on_batch:
            on_batch(len(chunk))
    return answers
