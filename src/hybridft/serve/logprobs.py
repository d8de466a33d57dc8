"""Token logprobs from the forward passes that generate: each generated token's log-probability
with its top alternatives, and (for ``echo``) each prompt token's, as token ids and floats.

What is reported: ``log_softmax`` of the model's raw logits at that position, at temperature 1
and before ``top_p``: the model's own distribution, whatever temperature sampled the token (what
OpenAI reports, and vLLM's default ``raw_logprobs``). The logits are the ones that picked the
token, as the model computed them in its own dtype (bf16 on CUDA, float32 on CPU); the
``log_softmax`` runs on them upcast to float32. A prompt's logprobs come from the prefill that
starts the generation (all positions' logits, not only the last). Values are floored at
``LOGPROB_FLOOR`` (JSON has no -inf; vLLM floors the same way).

Engine-neutral on purpose: the OpenAI shapes (``openai_logprobs``) take these ids and floats,
whichever engine produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True)
class TokenLogprob:
    """One token's logprob and the ``top`` most likely tokens at its position, most likely first
    (``(token_id, logprob)`` pairs; as many as asked for, the token itself or not)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def step_logprobs(
    logits: Any, tokens: Sequence[int], top_k: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """The entry of each row's picked token (None where the row's ``top_k`` is None).

    Args:
        logits: ``[rows, vocab]``, the logits the tokens were picked from.
        tokens: The token picked in each row.
        top_k: Alternatives wanted per row (0: the token's own logprob only).
    """
    wanted = [i for i, k in enumerate(top_k) if k is not None]
    out: list[TokenLogprob | None] = [None] * len(tokens)
    if wanted:
        rows = logits if len(wanted) == len(tokens) else logits[wanted]
        picked = [tokens[i] for i in wanted]
        ks = [int(top_k[i] or 0) for i in wanted]
        for i, entry in zip(wanted, _entries(rows, picked, ks), strict=True):
            out[i] = entry
    return out


def prompt_logprobs(
    logits: Any, prompt: Sequence[int], top_k: int
) -> tuple[TokenLogprob | None, ...]:
    """Entries for every prompt token from the prefill's logits over the prompt (``[len, vocab]``):
    position ``t`` predicts token ``t + 1``; the first token has no entry (None)."""
    entries = _entries(logits[:-1], list(prompt[1:]), [top_k] * (len(prompt) - 1))
    return (None, *entries)


def _entries(logits: Any, tokens: list[int], ks: list[int]) -> list[TokenLogprob]:
    # heavy: torch (the router imports the serving modules and never runs a model)
    import torch

    if not tokens:
        return []
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = torch.tensor(tokens, device=logp.device)[:, None]
    own = logp.gather(1, picked)[:, 0].clamp(min=LOGPROB_FLOOR).tolist()
    k = max(ks)
    top_ids: list[list[int]] = [[] for _ in tokens]
    top_values: list[list[float]] = [[] for _ in tokens]
    if k > 0:
        values, ids = logp.topk(k, dim=-1)  # one device sync for every row
        top_ids, top_values = ids.tolist(), values.clamp(min=LOGPROB_FLOOR).tolist()
    return [
        TokenLogprob(token, value, tuple(zip(top_ids[i][:n], top_values[i][:n], strict=True)))
        for i, (token, value, n) in enumerate(zip(tokens, own, ks, strict=True))
    ]
