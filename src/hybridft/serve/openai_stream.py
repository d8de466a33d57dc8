"""Streamed answers in OpenAI's framing: ``chat.completion.chunk`` and streamed
``text_completion`` objects from the engine's stream steps, and the server-sent events that
carry them (ending with ``[DONE]``; a failure mid-stream becomes an in-band error event)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

from pydantic import BaseModel

from hybridft.serve.generation import FinishReason, StreamStep
from hybridft.serve.logprobs import TokenLogprob
from hybridft.serve.openai_api import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    OpenAIError,
    TextCompletion,
    Usage,
)
from hybridft.serve.openai_logprobs import TokenText, chat_logprobs, completion_logprobs

logger = logging.getLogger(__name__)


def chat_chunks(
    steps: Iterator[StreamStep],
    ids: dict[str, str],
    include_usage: bool,
    token_text: TokenText | None = None,
) -> Iterator[ChatCompletionChunk]:
    """``chat.completion.chunk`` objects for engine steps: role, content deltas, finish, usage.

    Args:
        steps: The engine's stream; the last step carries the finish reason and token counts.
        ids: ``model`` and ``system_fingerprint`` for every chunk.
        include_usage: Append OpenAI's final usage-only chunk (``stream_options``).
        token_text: A token's text, for the logprobs the steps carry (requested ``logprobs``).

    Yields:
        Chunks in the order the ``openai`` client expects.
    """
    head = ChatCompletionChunk(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=ids["model"],
        system_fingerprint=ids["system_fingerprint"],
        choices=[],
    )

    def chunk(
        delta: ChatDelta, finish: FinishReason | None = None, entries: tuple[TokenLogprob, ...] = ()
    ) -> ChatCompletionChunk:
        logprobs = chat_logprobs(entries, token_text) if entries and token_text else None
        choice = ChatChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)
        return head.model_copy(update={"choices": [choice]})

    yield chunk(ChatDelta(role="assistant", content=""))
    last = StreamStep("")
    for last in steps:
        if last.text or last.logprobs:
            yield chunk(ChatDelta(content=last.text), entries=last.logprobs)
    yield chunk(ChatDelta(), last.finish_reason)
    if include_usage:
        usage = Usage.of(last.prompt_tokens, last.completion_tokens)
        yield head.model_copy(update={"usage": usage})


def completion_chunks(
    steps: Iterator[StreamStep],
    ids: dict[str, str],
    include_usage: bool,
    token_text: TokenText | None = None,
) -> Iterator[TextCompletion]:
    """Streamed ``text_completion`` objects for engine steps (see :func:`chat_chunks`); the
    logprobs' ``text_offset`` counts from the start of the streamed text."""
    head = TextCompletion(
        model=ids["model"], system_fingerprint=ids["system_fingerprint"], choices=[]
    )
    offset = 0
    for step in steps:
        if step.text or step.finish_reason or step.logprobs:
            logprobs = None
            if step.logprobs and token_text:
                token_ids = [e.token_id for e in step.logprobs]
                logprobs = completion_logprobs(token_ids, step.logprobs, token_text, offset)
                offset += sum(len(t) for t in logprobs.tokens)
            choice = CompletionChoice(
                text=step.text, finish_reason=step.finish_reason, logprobs=logprobs
            )
            yield head.model_copy(update={"choices": [choice]})
        if step.finish_reason and include_usage:
            usage = Usage.of(step.prompt_tokens, step.completion_tokens)
            yield head.model_copy(update={"usage": usage})


def sse_events(chunks: Iterator[BaseModel]) -> Iterator[str]:
    """Server-sent events in OpenAI's framing, ending with ``[DONE]``.

    A failure mid-stream becomes an in-band error event: the 200 status is already sent.
    """
    try:
        for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
    except Exception as exc:  # keep the replica serving; the client sees the error event
        logger.exception("streamed generation failed")
        err = OpenAIError(500, f"generation failed: {exc}", type="server_error")
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"
