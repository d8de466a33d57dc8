"""Token logprobs in OpenAI's two shapes: chat (``choices[i].logprobs.content``: one object per
token with its top alternatives) and the legacy completions shape (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``), from the engine's ids and floats
(``serve.logprobs``).

A token's text is the tokenizer's decoding of that one token (special tokens spelled out), and
``bytes`` its UTF-8 encoding, as vLLM does: a token holding part of a multi-byte character
decodes to U+FFFD, so its bytes are not the raw bytes. ``text_offset`` adds up those token
texts' lengths from the start of the returned text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from pydantic import BaseModel

from hybridft.serve.logprobs import TokenLogprob

TokenText = Callable[[int], str]  # token id -> its text


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the prompt's first token (echo)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    def __add__(self, other: CompletionLogprobs) -> CompletionLogprobs:
        return CompletionLogprobs(
            tokens=self.tokens + other.tokens,
            token_logprobs=self.token_logprobs + other.token_logprobs,
            top_logprobs=self.top_logprobs + other.top_logprobs,
            text_offset=self.text_offset + other.text_offset,
        )


def chat_logprobs(entries: Sequence[TokenLogprob], token_text: TokenText) -> ChatLogprobs:
    """``{"content": [...]}``: each token with exactly its requested top alternatives."""
    text = functools.cache(token_text)

    def top(token_id: int, logprob: float) -> TopLogprob:
        token = text(token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

    content = [
        ChatTokenLogprob(
            **top(e.token_id, e.logprob).model_dump(),
            top_logprobs=[top(i, lp) for i, lp in e.top],
        )
        for e in entries
    ]
    return ChatLogprobs(content=content)


def completion_logprobs(
    token_ids: Sequence[int],
    entries: Sequence[TokenLogprob | None],
    token_text: TokenText,
    offset: int = 0,
) -> CompletionLogprobs:
    """The legacy shape for ``token_ids`` (``entries``: theirs, None where a token has none).

    ``top_logprobs[j]`` maps token text to logprob for the top alternatives plus the token
    itself (so up to k + 1 entries, as OpenAI and vLLM answer); ``offset`` is the first
    token's ``text_offset``.
    """
    text = functools.cache(token_text)
    tokens = [text(i) for i in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    tops: list[dict[str, float] | None] = []
    for token_id, entry in zip(token_ids, entries, strict=True):
        if entry is None:
            tops.append(None)
            continue
        alternatives: dict[str, float] = {}
        for i, logprob in entry.top:
            alternatives.setdefault(text(i), logprob)  # two ids may share a text: keep the top
        alternatives.setdefault(text(token_id), entry.logprob)
        tops.append(alternatives)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[None if e is None else e.logprob for e in entries],
        top_logprobs=tops,
        text_offset=offsets,
    )
