"""Sampling: a request's parameters, its own seeded RNG on the engine's device, and the choice of
each next token (greedy, or temperature + nucleus), plus stop-string search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class StructuredOutput:
    """A ``response_format`` the answer must follow (an engine with structured outputs only):
    any JSON object, or ``json_schema``: OpenAI's ``json_schema`` object (``name``, ``schema``,
    ``strict``) as JSON text, so the parameters stay hashable."""

    type: Literal["json_object", "json_schema"]
    json_schema: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy; otherwise seeded nucleus sampling.

    ``logprobs``: report each generated token's logprob with this many top alternatives (0: the
    token's own only; None: no logprobs). ``prompt_logprobs``: the same for the prompt's tokens
    (the first has none). vLLM's ``SamplingParams`` names them the same way.
    """

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured: StructuredOutput | None = None


def request_generator(params: SamplingParams, device: Any) -> Any:
    """The request's own sampling RNG on ``device`` (None when greedy), seeded when the request
    has a seed. ``torch.multinomial`` needs it on the device of the probabilities it samples."""
    import torch

    if not params.temperature > 0:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def pick_tokens(logits: Any, rows: Sequence[Any]) -> list[int]:
    """The next token of every row (``row.params``, ``row.generator``): greedy rows in one call."""
    greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
    return [
        token if row.generator is None else pick_token(logits[i], row.params, row.generator)
        for i, (row, token) in enumerate(zip(rows, greedy, strict=True))
    ]


def pick_token(logits: Any, params: SamplingParams, generator: Any) -> int:
    import torch

    logits = logits.float()
    if params.temperature == 0 or generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the smallest set of tokens whose mass reaches top_p (at least one).
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
