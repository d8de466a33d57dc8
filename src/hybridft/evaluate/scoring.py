"""Label log-probabilities: how likely the model finds each candidate label as its answer.

For an example and a candidate label ``c`` the continuation scored is the label as the answer's
first line (the demo tasks' convention) followed by what ends it in the gold completion's shape:
a newline when the gold completion goes on after the label, the chat template's end of turn when
the label is the whole answer. The text is rendered and tokenised as one string, exactly like a
training row, and the continuation's tokens are those past the generation prompt's last character.
The sum of their log-probabilities is the label's score; ``calibration.label_probabilities``
turns a row of scores into probabilities over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from hybridft.data.records import Example, Message
from hybridft.evaluate.generate import chat_prompt
from hybridft.model.device import model_device


def rephrase(example: Example, template: str) -> Example:
    """The example with its last user message rewritten by ``template`` ({prompt} = original)."""
    if template == "{prompt}":
        return example
    messages = list(example.messages)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        return example
    text = template.replace("{prompt}", messages[last_user].content)
    messages[last_user] = Message(role="user", content=text)
    return replace(example, messages=tuple(messages))


def _continuation_text(tokenizer: Any, example: Example, prompt: str, label: str) -> str:
    if "\n" in example.completion.strip():
        return prompt + label + "\n"
    messages = [{"role": m.role, "content": m.content} for m in example.prompt_messages]
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": label}], tokenize=False
    )
    return full if full.startswith(prompt) else prompt + label


def _encode(tokenizer: Any, text: str, boundary: int) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the first token ending past ``boundary``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    first = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
    return ids, max(first, 1)


@torch.inference_mode()
def label_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    candidates: Sequence[str],
) -> np.ndarray:
    """Summed continuation log-probabilities, ``(len(examples), len(candidates))``.

    The prompt runs once per example; its KV cache is repeated over the candidates, whose
    continuations (a few tokens each, right-padded) run as one batch on top of it. A candidate
    whose tokenisation changes the prompt's last tokens (a merge across the boundary) is scored
    with a full forward pass of its own.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer (with the chat template the model was trained with).
        examples: the prompts (their gold completion only decides the continuation's shape).
        candidates: the label set, in column order.
    """
    out = np.full((len(examples), len(candidates)), -np.inf)
    device = model_device(model)  # every input tensor is made there
    for i, example in enumerate(examples):
        prompt = chat_prompt(tokenizer, example)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for j, label in enumerate(candidates):
            ids, first = _encode(
                tokenizer, _continuation_text(tokenizer, example, prompt, label), len(prompt)
            )
            groups.setdefault(tuple(ids[:first]), []).append((j, ids[first:]))
        for prefix, conts in groups.items():
            for j, value in _score_group(model, list(prefix), conts, device):
                out[i, j] = value
    return out


def _score_group(
    model: Any, prefix: list[int], conts: list[tuple[int, list[int]]], device: Any
) -> list[tuple[int, float]]:
    """Log-prob sums of continuations sharing one prompt prefix (prefix run once, cache reused)."""
    with torch.autocast(device.type, dtype=torch.bfloat16):
        head = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
        width = max(len(c) for _, c in conts)
        scores = [float(first[c[0]]) if c else 0.0 for _, c in conts]
        if width > 1:
            cache = head.past_key_values
            cache.batch_repeat_interleave(len(conts))
            ids = torch.zeros((len(conts), width), dtype=torch.long, device=device)
            for r, (_, c) in enumerate(conts):
                ids[r, : len(c)] = torch.tensor(c, device=device)
            logits = model(input_ids=ids, cache=cache, use_cache=True).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            for r, (_, c) in enumerate(conts):
                if len(c) > 1:
                    rest = logp[r, : len(c) - 1].gather(1, ids[r, 1 : len(c), None])
                    scores[r] += float(rest.sum())
    return [(j, score) for (j, _), score in zip(conts, scores, strict=True)]
