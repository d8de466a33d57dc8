"""One OpenAI request as engine rows, and the engine's answers as the OpenAI body.

A request's choices are its prompts (one for chat; a completion's prompt may be a list) times
``n``, prompt-major, as OpenAI orders ``choices[i].index``. Choice ``j`` of a prompt samples with
``seed + j`` when the request has a seed (a list of prompts answers each as it would alone),
and with its own fresh RNG otherwise. Engine-neutral: a row is ``(prompt ids, SamplingParams)``
and an answer a ``Completion``, whichever engine decodes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hybridft.serve.decoding import Completion
from hybridft.serve.openai_api import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    CompletionChoice,
    CompletionRequest,
    TextCompletion,
    Usage,
)
from hybridft.serve.openai_logprobs import TokenText, chat_logprobs, completion_logprobs
from hybridft.serve.sampling import SamplingParams

Row = tuple[list[int], SamplingParams]


def token_text_of(tokenizer: Any) -> TokenText:
    """A token's text: the tokenizer's decoding of that one token, special tokens spelled out."""
    return lambda token_id: tokenizer.decode([token_id])


def choice_rows(prompts: Sequence[list[int]], n: int, params: SamplingParams) -> list[Row]:
    """The engine rows of ``n`` choices per prompt (prompt-major), each with its own seed."""
    return [
        (prompt, replace(params, seed=None if params.seed is None else params.seed + j))
        for prompt in prompts
        for j in range(n)
    ]


def answer_body(
    kind: str,
    request: Any,
    prompts: Sequence[list[int]],
    answers: Sequence[Completion],
    ids: dict[str, str],
    tokenizer: Any,
) -> dict[str, Any]:
    """The ``chat.completion`` / ``text_completion`` body of ``answers`` (one per choice).

    Usage counts each prompt once, however many choices it has (as OpenAI does), and every
    choice's generated tokens.
    """
    usage = Usage.of(sum(len(p) for p in prompts), sum(a.completion_tokens for a in answers))
    token_text = token_text_of(tokenizer)
    if kind == "chat":
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=a.text),
                finish_reason=a.finish_reason,
                logprobs=None if a.logprobs is None else chat_logprobs(a.logprobs, token_text),
            )
            for i, a in enumerate(answers)
        ]
        return ChatCompletion(
            model=ids["model"],
            system_fingerprint=ids["system_fingerprint"],
            choices=choices,
            usage=usage,
        ).model_dump()
    texts = _prompt_texts(request, prompts, tokenizer)
    completions = [
        _completion_choice(
            i, request, prompts[i // request.n], texts[i // request.n], a, token_text
        )
        for i, a in enumerate(answers)
    ]
    return TextCompletion(
        model=ids["model"],
        system_fingerprint=ids["system_fingerprint"],
        choices=completions,
        usage=usage,
    ).model_dump()


def _completion_choice(
    index: int,
    request: CompletionRequest,
    prompt: list[int],
    prompt_text: str,
    answer: Completion,
    token_text: TokenText,
) -> CompletionChoice:
    """One completion choice: with ``echo`` the prompt's text (and its tokens' logprobs, the
    first token's null) comes first; ``text_offset`` indexes the choice's ``text``."""
    echo = bool(request.echo)
    logprobs = None
    if request.logprobs is not None:
        generated = answer.logprobs or ()
        logprobs = completion_logprobs(
            [e.token_id for e in generated],
            generated,
            token_text,
            offset=len(prompt_text) if echo else 0,
        )
        if echo:
            scored = answer.prompt_logprobs or (None,) * len(prompt)
            logprobs = completion_logprobs(prompt, scored, token_text) + logprobs
    text = prompt_text + answer.text if echo else answer.text
    return CompletionChoice(
        index=index, text=text, finish_reason=answer.finish_reason, logprobs=logprobs
    )


def _prompt_texts(request: Any, prompts: Sequence[list[int]], tokenizer: Any) -> list[str]:
    """Each prompt as text (for ``echo``): as sent, or its token ids decoded."""
    if not request.echo:
        return [""] * len(prompts)
    return [
        sent if isinstance(sent, str) else tokenizer.decode(ids)
        for sent, ids in zip(request.prompts(), prompts, strict=True)
    ]
