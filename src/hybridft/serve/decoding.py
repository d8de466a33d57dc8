"""What a decode produces, and one request's state inside a batched decode.

``Completion`` is a whole answer, ``StreamStep`` a streamed piece of one; ``BatchRow`` applies the
engine's stop rules to one row of ``GenerationEngine.generate_batch`` (the rules of ``stream``,
in its order) and keeps its logprobs (``serve.logprobs``) when the request asks for them: one
entry per generated token, as many as ``completion_tokens`` (an end-of-sequence token and the
tokens of a stop string included, as vLLM reports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hybridft.errors import UserError
from hybridft.model.hf import load_tokenizer
from hybridft.serve.logprobs import TokenLogprob, prompt_logprobs
from hybridft.serve.sampling import SamplingParams, first_stop

FinishReason = Literal["stop", "length"]


def load_chat_tokenizer(model_dir: Any) -> Any:
    """The tokenizer a model directory is served with; one without a chat template is refused."""
    tokenizer = load_tokenizer(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{model_dir}: tokenizer has no chat_template; cannot serve chat")
    return tokenizer


class PromptIds:
    """Both engines' prompt encoding, with their ``tokenizer``: the same ids on either."""

    tokenizer: Any

    def chat_prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the tokenizer's chat template, ready to answer."""
        encoded = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [int(i) for i in encoded["input_ids"]]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (the tokenizer's own special tokens included)."""
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]


_PARTIAL_CHAR = "\ufffd"  # what a byte-level decode shows for an unfinished UTF-8 sequence


def token_budget(
    prompt_ids: Sequence[int], max_tokens: int, vocab_size: int, max_position: int | None
) -> int:
    """Tokens the prompt leaves room for, at most ``max_tokens``; a bad prompt raises."""
    prompt_len = len(prompt_ids)
    if prompt_len == 0:
        raise UserError("prompt is empty after tokenization")
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
        raise UserError(f"prompt has token ids outside the vocabulary [0, {vocab_size})")
    if max_position is None:
        return max_tokens
    if prompt_len >= max_position:
        raise UserError(f"prompt has {prompt_len} tokens; the model's context is {max_position}")
    return min(max_tokens, max_position - prompt_len)


def stop_holdback(stops: Sequence[str]) -> int:
    """Characters a stream holds back: a partial match of the longest stop string."""
    return max((len(s) for s in stops), default=1) - 1


def ready_length(text: str, holdback: int) -> int:
    """How much of a stream's decoded ``text`` is final: not a possible start of a stop string
    (``holdback`` characters) nor an unfinished UTF-8 character."""
    return min(len(text) - holdback, len(text.rstrip(_PARTIAL_CHAR)))


@dataclass(frozen=True)
class StreamStep:
    """A piece of new text; the last step of a stream carries the finish reason and counts.

    ``logprobs``: entries of the tokens decoded since the previous step (requested logprobs);
    ``prompt_logprobs``: on the last step, the prompt's (requested prompt logprobs).
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """A whole answer; ``logprobs`` / ``prompt_logprobs`` only when the request asked."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass
class BatchRow:
    """One request's state inside ``generate_batch``."""

    slot: int
    prompt: list[int]
    params: SamplingParams
    budget: int
    generator: Any
    new_ids: list[int] = field(default_factory=list)
    text: str | None = None  # kept per step only for rows with stop strings
    finish: FinishReason = "length"
    logprobs: list[TokenLogprob] = field(default_factory=list)
    scored: tuple[TokenLogprob | None, ...] | None = None  # the prompt's logprobs

    def score_prompt(self, logits: Any) -> None:
        """Keep the prompt's logprobs from the prefill's logits over it, when asked for."""
        if self.params.prompt_logprobs is not None:
            self.scored = prompt_logprobs(logits, self.prompt, self.params.prompt_logprobs)

    def push(
        self, token: int, entry: TokenLogprob | None, tokenizer: Any, eos_ids: frozenset[int]
    ) -> bool:
        """Add a token (and its logprob entry); True once the row is finished."""
        self.new_ids.append(token)
        if entry is not None:
            self.logprobs.append(entry)
        if token in eos_ids:
            self.finish = "stop"
            self.text = tokenizer.decode(self.new_ids[:-1], skip_special_tokens=True)
            return True
        if self.params.stop:  # decode every step only where a stop string is looked for
            self.text = tokenizer.decode(self.new_ids, skip_special_tokens=True)
            cut = first_stop(self.text, self.params.stop)
            if cut is not None:
                self.text, self.finish = self.text[:cut], "stop"
                return True
        return len(self.new_ids) >= self.budget

    def completion(self, tokenizer: Any) -> Completion:
        text = self.text
        if text is None:
            text = tokenizer.decode(self.new_ids, skip_special_tokens=True)
        logprobs = None if self.params.logprobs is None else tuple(self.logprobs)
        return Completion(
            text, self.finish, len(self.prompt), len(self.new_ids), logprobs, self.scored
        )
