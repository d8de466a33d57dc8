"""The generation engine: one HF causal LM + tokenizer, a KV-cached decode loop, stop handling.

A hand-written loop rather than ``model.generate``: it gives a per-request seeded
``torch.Generator`` (``generate`` samples from the global RNG), exact stop-string truncation and
token-by-token streaming without a helper thread. It is checked against a full forward pass in
the tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hybridft.errors import UserError

FinishReason = Literal["stop", "length"]
_PARTIAL_CHAR = "\ufffd"  # what a byte-level decode shows for an unfinished UTF-8 sequence


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy; otherwise seeded nucleus sampling."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class StreamStep:
    """A piece of new text; the last step of a stream carries the finish reason and counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class GenerationEngine:
    """Generate text from a loaded model and tokenizer (fp32, ``torch.inference_mode``).

    Thread-safe for concurrent requests: each call owns its cache and generator, the model is
    only read.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_position = _max_position(model)
        # transformers 5.x is renaming the forward kwarg `past_key_values` to `cache`.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> GenerationEngine:
        """Load a local HF causal-LM directory (safetensors only).

        Args:
            model_dir: Directory with config.json, *.safetensors and the tokenizer files.

        Returns:
            The engine, ready to generate.
        """
        from hybridft.model.hf import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"{model_dir}: tokenizer has no chat_template; cannot serve chat")
        return cls(load_model(model_dir), tokenizer)

    def chat_prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the tokenizer's chat template, ready to answer."""
        encoded = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [int(i) for i in encoded["input_ids"]]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (the tokenizer's own special tokens included)."""
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Generate one whole completion for ``prompt_ids``."""
        pieces: list[str] = []
        for step in self.stream(prompt_ids, params):
            pieces.append(step.text)
            if step.finish_reason is not None:
                return Completion(
                    "".join(pieces), step.finish_reason, step.prompt_tokens, step.completion_tokens
                )
        raise AssertionError("stream ended without a finish step")  # stream always finishes

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[StreamStep]:
        """Yield new text as it becomes final; the last step has the finish reason.

        Text that could still become the start of a stop sequence, or an unfinished UTF-8
        character, is held back until it is decided, so concatenating the steps always equals
        the non-streamed answer.

        Args:
            prompt_ids: The prompt tokens; must be non-empty and shorter than ``max_position``.
            params: Sampling parameters.

        Yields:
            StreamStep pieces; exactly one (the last) has ``finish_reason`` set.
        """
        import torch

        prompt_len = len(prompt_ids)
        if prompt_len == 0:
            raise UserError("prompt is empty after tokenization")
        budget = params.max_tokens
        if self.max_position is not None:
            if prompt_len >= self.max_position:
                raise UserError(
                    f"prompt has {prompt_len} tokens; the model's context is {self.max_position}"
                )
            budget = min(budget, self.max_position - prompt_len)
        holdback = max((len(s) for s in params.stop), default=1) - 1
        generator = None
        if params.temperature > 0:
            generator = torch.Generator()
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed)

        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        new_ids: list[int] = []
        text, emitted = "", 0
        finish: FinishReason = "length"
        inputs = torch.tensor([list(prompt_ids)], dtype=torch.long)
        with torch.inference_mode():
            for _ in range(budget):
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache_kwarg: cache})
                token = _pick_token(out.logits[0, -1], params, generator)
                new_ids.append(token)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
                cut = _first_stop(text, params.stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                ready = min(len(text) - holdback, len(text.rstrip(_PARTIAL_CHAR)))
                if ready > emitted:
                    yield StreamStep(text[emitted:ready])
                    emitted = ready
                inputs = torch.tensor([[token]], dtype=torch.long)
        yield StreamStep(text[emitted:], finish, prompt_len, len(new_ids))


def _pick_token(logits: Any, params: SamplingParams, generator: Any) -> int:
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


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if not ids:
        raise UserError("model has no eos token (tokenizer.eos_token / generation_config)")
    return frozenset(ids)


def _max_position(model: Any) -> int | None:
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if value else None
