"""Label log-probabilities: how likely the model finds each candidate label as its answer.

The one label scorer of the project. Evaluation (``label_logprobs``) fits the calibration
temperature on these scores, and the serving engine (``GenerationEngine.label_probs``) applies
that temperature to these same scores, so the served calibrated confidence is the evaluated one.

For a chat prompt and a candidate ``c`` the continuation scored is the label as the answer's
first line followed by what ends it (``LabelEnd``): ``"end_of_turn"``, the chat template's end of
turn (the label is the whole answer), or ``"newline"`` (the answer goes on after the label).
Evaluation takes it from each row's gold completion (``label_end_of``); serving from the task.
The text is rendered and tokenised as one string, exactly like a training row, and the
continuation's tokens are those past the generation prompt's last character. The sum of their
log-probabilities is the label's score; ``calibration.label_probabilities`` (or
``calibration.apply_temperature``) turns a row of scores into probabilities over the candidates.

Numeric mode: the model runs in its own dtype, without autocast. That dtype is chosen once, for
evaluation and serving alike, by ``model.device.model_dtype`` (bfloat16 on CUDA, float32 on CPU),
and the serving engine generates in it; an autocast here would make scoring a mode of its own.
On CPU float32 is also the precise and the faster choice: the bf16 autocast used before moved
the tiny test model's label scores by up to 0.25 nats and took ~1.5x as long there. Same device
and dtype, same scores, offline and served.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from hybridft.data.records import Example, Message
from hybridft.model.device import model_device

LabelEnd = Literal["end_of_turn", "newline"]
LABEL_ENDS: tuple[LabelEnd, ...] = ("end_of_turn", "newline")
# One continuation, tokenised: the whole text's ids and the index of its first scored token.
Encoded = tuple[list[int], int]


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


def label_end_of(example: Example) -> LabelEnd:
    """How the gold completion ends its label: ``newline`` when a reply follows it."""
    return "newline" if "\n" in example.completion.strip() else "end_of_turn"


def chat_label_texts(
    tokenizer: Any, messages: Sequence[dict[str, str]], labels: Sequence[str], label_end: LabelEnd
) -> tuple[str, list[str]]:
    """The generation prompt of ``messages`` and, per label, the whole text to tokenise.

    Args:
        tokenizer: has the chat template the model was trained with.
        messages: ``{"role", "content"}`` turns before the answer.
        labels: the candidates.
        label_end: what ends the label (see the module docstring).

    Returns:
        ``(prompt, texts)``: each text starts with ``prompt``; its part past it is scored.
    """
    if label_end not in LABEL_ENDS:
        raise ValueError(f"label_end: expected one of {LABEL_ENDS}, got {label_end!r}")
    turns = list(messages)
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    texts = []
    for label in labels:
        if label_end == "newline":
            texts.append(prompt + label + "\n")
            continue
        full = tokenizer.apply_chat_template(
            [*turns, {"role": "assistant", "content": label}], tokenize=False
        )
        texts.append(full if full.startswith(prompt) else prompt + label)
    return prompt, texts


def text_label_texts(
    prompt: str, labels: Sequence[str], label_end: LabelEnd
) -> tuple[str, list[str]]:
    """``chat_label_texts`` for a raw completion prompt: no template, so no end of turn; the
    label alone follows the prompt (a newline after it for ``"newline"``)."""
    if label_end not in LABEL_ENDS:
        raise ValueError(f"label_end: expected one of {LABEL_ENDS}, got {label_end!r}")
    tail = "\n" if label_end == "newline" else ""
    return prompt, [prompt + label + tail for label in labels]


def encode_continuations(
    tokenizer: Any, prompt: str, texts: Sequence[str], add_special_tokens: bool = False
) -> list[Encoded]:
    """Each text's token ids and the index of its first token ending past ``prompt``.

    ``add_special_tokens``: False for chat-template text (the template writes its own), True
    for a raw completion prompt (as ``GenerationEngine.text_prompt_ids`` encodes it).
    """
    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        first = next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), len(ids))
        out.append(([int(i) for i in ids], max(first, 1)))
    return out


@torch.inference_mode()
def score_continuations(model: Any, encoded: Sequence[Encoded]) -> list[float]:
    """Summed log-probabilities of each continuation's scored tokens (``encode_continuations``).

    The prompt runs once; its KV cache is repeated over the continuations, which run as one
    right-padded batch on top of it. A continuation whose tokenisation changes the prompt's last
    tokens (a merge across the boundary) gets its own prefix, run once for it.
    """
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for j, (ids, first) in enumerate(encoded):
        groups.setdefault(tuple(ids[:first]), []).append((j, ids[first:]))
    out = [0.0] * len(encoded)
    for prefix, conts in groups.items():
        for (j, _), value in zip(conts, _score_group(model, list(prefix), conts), strict=True):
            out[j] = value
    return out


def label_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    candidates: Sequence[str],
) -> np.ndarray:
    """Summed continuation log-probabilities, ``(len(examples), len(candidates))``.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer (with the chat template the model was trained with).
        examples: the prompts (their gold completion only decides the continuation's end).
        candidates: the label set, in column order.
    """
    out = np.full((len(examples), len(candidates)), -np.inf)
    for i, example in enumerate(examples):
        messages = [{"role": m.role, "content": m.content} for m in example.prompt_messages]
        prompt, texts = chat_label_texts(tokenizer, messages, candidates, label_end_of(example))
        out[i] = score_continuations(model, encode_continuations(tokenizer, prompt, texts))
    return out


def _score_group(model: Any, prefix: list[int], conts: list[tuple[int, list[int]]]) -> list[float]:
    """Log-prob sums of continuations sharing one prompt prefix (prefix run once, cache reused)."""
    from transformers import DynamicCache

    device = model_device(model)  # every input tensor is made there
    params = inspect.signature(model.forward).parameters
    # transformers 5.x renames the forward kwarg `past_key_values` to `cache`.
    cache = DynamicCache(config=model.config)
    kwargs = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    # The prompt's forward only needs its last position's logits.
    last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    head = model(input_ids=torch.tensor([prefix], device=device), **kwargs, **last)
    first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
    scores = [float(first[c[0]]) if c else 0.0 for _, c in conts]
    width = max(len(c) for _, c in conts) - 1
    if width <= 0:
        return scores
    # Every continuation but its last token, right-padded (causal attention keeps the padding
    # after a row's tokens from reaching them), on the prompt's repeated cache.
    cache.batch_repeat_interleave(len(conts))
    ids = torch.zeros((len(conts), width), dtype=torch.long, device=device)
    for r, (_, c) in enumerate(conts):
        if len(c) > 1:
            ids[r, : len(c) - 1] = torch.tensor(c[:-1], device=device)
    logp = torch.log_softmax(model(input_ids=ids, **kwargs).logits.float(), dim=-1)
    for r, (_, c) in enumerate(conts):
        if len(c) > 1:
            target = torch.tensor(c[1:], device=device)[:, None]
            scores[r] += float(logp[r, : len(c) - 1].gather(1, target).sum())
    return scores
