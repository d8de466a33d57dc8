"""What a model server checks in a request before it runs the model: the model id (an adapter or
the base), the label set to score an answer over, the prompt's size, the fields the serving
engine cannot honour, the sampling parameters. Each raises the OpenAI-shaped error the client
sees (400 / 404, with the parameter named)."""

import json
from typing import Any

from hybridft.serve.generation import SamplingParams
from hybridft.serve.openai_api import (
    MAX_CHOICES,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
)
from hybridft.serve.sampling import StructuredOutput

STRUCTURED_FORMATS = ("json_object", "json_schema")


def served_adapter(requested: str, model_name: str, adapters: Any) -> str | None:
    """The adapter a model id names (None: the base model); 404 for anything else."""
    if requested == model_name:
        return None
    base, _, adapter = requested.partition(":")
    if base == model_name and adapters is not None and adapter in adapters.paths:
        return adapter
    served = [model_name] + [f"{model_name}:{a}" for a in (adapters.names() if adapters else [])]
    raise OpenAIError(
        404,
        f"model {requested!r} does not exist here; this server serves {', '.join(served)}",
        param="model",
        code="model_not_found",
    )


def label_set(
    request: Any, tasks: dict[str, Any]
) -> tuple[list[str], float, str, str | None] | None:
    """``(labels, temperature, label_end, task)`` to score the answer over, or None."""
    if request.task is not None:
        if request.task not in tasks:
            known = ", ".join(sorted(tasks)) or "none"
            raise OpenAIError(
                400,
                f"task: {request.task!r} is not a classification task of this model "
                f"(known: {known})",
                param="task",
            )
        entry = tasks[request.task]
        labels = list(request.labels or entry["labels"])
        temperature = float(entry.get("temperature") or 1.0)
        # How the task's answers end their label (``evaluate.scoring.LabelEnd``).
        label_end = entry.get("label_end") or "end_of_turn"
        return labels, temperature, label_end, request.task
    if request.labels:
        if len(set(request.labels)) != len(request.labels):
            raise OpenAIError(400, "labels: expected distinct labels", param="labels")
        return list(request.labels), 1.0, "end_of_turn", None
    return None


def checked_prompt(
    ids: list[int], param: str, max_position: int | None, vocab_size: int | None = None
) -> list[int]:
    """The encoded prompt, refused when empty, outside the vocabulary (a prompt sent as token
    ids) or leaving no room for an answer."""
    if not ids:
        raise OpenAIError(400, f"{param}: encodes to no tokens", param=param)
    if vocab_size is not None and not 0 <= max(ids) < vocab_size:
        raise OpenAIError(
            400,
            f"{param}: token ids must be in [0, {vocab_size}) for this model, got {max(ids)}",
            param=param,
        )
    if max_position is not None and len(ids) >= max_position:
        raise OpenAIError(
            400,
            f"{param}: the prompt has {len(ids)} tokens; this model's context is {max_position} "
            "tokens, leaving no room for an answer",
            param=param,
            code="context_length_exceeded",
        )
    return ids


def sampling_params(
    request: ChatCompletionRequest | CompletionRequest, max_tokens_limit: int
) -> SamplingParams:
    """The request's sampling, its ``max_tokens`` checked against the server's cap."""
    requested = request.requested_max_tokens()
    if requested is not None and requested > max_tokens_limit:
        param = (
            "max_completion_tokens"
            if getattr(request, "max_completion_tokens", None)
            else "max_tokens"
        )
        raise OpenAIError(
            400,
            f"{param}: expected at most {max_tokens_limit}, got {requested}",
            param=param,
            code="invalid_value",
        )
    if isinstance(request, ChatCompletionRequest):
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        prompt_logprobs = None
    else:  # echo with logprobs: the prompt's tokens too (``max_tokens: 0`` scores only them)
        logprobs = request.logprobs
        prompt_logprobs = request.logprobs if request.echo else None
    return SamplingParams(
        # Without a limit, answer up to the server's cap; the engine clips to the context.
        max_tokens=max_tokens_limit if requested is None else requested,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop_sequences(),
        seed=request.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        structured=_structured(request),
    )


def _structured(request: ChatCompletionRequest | CompletionRequest) -> StructuredOutput | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "json_object":
        return None if fmt is None else StructuredOutput("json_object")
    if fmt.type == "json_schema":
        return StructuredOutput("json_schema", json.dumps(fmt.json_schema, sort_keys=True))
    return None


def check_fields(request: ChatCompletionRequest | CompletionRequest, engine: Any) -> None:
    """Refuse what the request combines wrongly, and what ``engine`` (its ``name``,
    ``structured_outputs``) cannot do, with a 400 naming the field."""

    def refuse(param: str, message: str, code: str = "invalid_value") -> None:
        raise OpenAIError(400, f"{param}: {message}", param=param, code=code)

    fmt = request.response_format.type if request.response_format else "text"
    if fmt in STRUCTURED_FORMATS and not getattr(engine, "structured_outputs", False):
        refuse(
            "response_format",
            f"type {fmt!r} (structured output) is not supported by the "
            f"{getattr(engine, 'name', 'serving')} engine that serves this model; send "
            "type 'text' or leave response_format out",
            code="unsupported_value",
        )
    schema = request.response_format.json_schema if request.response_format else None
    if fmt == "json_schema" and not schema:
        refuse("response_format", "type 'json_schema' needs a json_schema object (its schema)")
    if isinstance(request, ChatCompletionRequest):
        if request.top_logprobs is not None and not request.logprobs:
            refuse("top_logprobs", "needs logprobs: true")
        prompts = 1
    else:
        prompts = len(request.prompts())
        if request.max_tokens == 0 and not request.echo:
            refuse("max_tokens", "expected >= 1 (0 only with echo: score the prompt), got 0")
        if request.echo and request.stream:
            refuse("echo", "not supported on streamed requests; send stream: false")
        if (request.labels or request.task) and not isinstance(request.prompt, str):
            refuse("prompt", "labels/task score one text prompt; send the prompt as a string")
    if prompts * request.n > MAX_CHOICES:
        refuse("n", f"{prompts} prompts x n={request.n} choices; at most {MAX_CHOICES} in all")
    if request.stream and prompts * request.n > 1:
        param = "n" if request.n > 1 else "prompt"
        refuse(param, "a streamed request answers one choice (n=1, one prompt)")
